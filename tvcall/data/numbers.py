"""How people say integers: Chinese numerals and English words, so synthesis can normalise "二十" → 20."""

from __future__ import annotations

_ZH_DIGITS = "零一二三四五六七八九"
_EN_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
             "fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def zh_numeral(n: int) -> str:
    """0..99999 in Chinese numerals (二十, 一百零五, 负三)."""
    if n < 0:
        return "负" + zh_numeral(-n)
    if n < 10:
        return _ZH_DIGITS[n]
    if n < 20:
        return "十" + (_ZH_DIGITS[n - 10] if n > 10 else "")
    units = [(10000, "万"), (1000, "千"), (100, "百"), (10, "十")]
    out, zero_pending, started = "", False, False
    for size, name in units:
        digit, n = divmod(n, size)
        if digit:
            if zero_pending:
                out += "零"
            out += _ZH_DIGITS[digit] + name
            zero_pending, started = False, True
        elif started:
            zero_pending = True
    if n:
        out += ("零" if zero_pending else "") + _ZH_DIGITS[n]
    return out


def en_words(n: int) -> str:
    """-999..999 in English words (twenty five, minus three)."""
    if n < 0:
        return "minus " + en_words(-n)
    if n < 20:
        return _EN_SMALL[n]
    if n < 100:
        tens, unit = divmod(n, 10)
        return _EN_TENS[tens] + (f" {_EN_SMALL[unit]}" if unit else "")
    hundreds, rest = divmod(n, 100)
    return f"{_EN_SMALL[hundreds]} hundred" + (f" {en_words(rest)}" if rest else "")


def surface_forms(n: int, lang: str) -> list[str]:
    """Every way this project writes `n` in `lang`; the first is the digits."""
    forms = [str(n)]
    if lang == "zh" and abs(n) < 100000:
        forms.append(zh_numeral(n))
        if n < 0:
            forms.append(f"负{-n}")
    if lang == "en" and abs(n) < 1000:
        forms.append(en_words(n))
        if n < 0:
            forms.append(f"minus {-n}")
    return forms
