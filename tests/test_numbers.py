import pytest

from tvcall.data.numbers import en_words, surface_forms, zh_numeral


@pytest.mark.parametrize(("n", "zh"), [(0, "零"), (7, "七"), (10, "十"), (15, "十五"), (20, "二十"), (35, "三十五"),
                                        (100, "一百"), (105, "一百零五"), (230, "二百三十"), (1001, "一千零一"), (-3, "负三")])
def test_zh_numeral_writes_chinese_numbers(n, zh):
    assert zh_numeral(n) == zh


def test_en_words_and_surface_forms_start_with_digits():
    assert en_words(42) == "forty two"
    assert en_words(-5) == "minus five"
    assert surface_forms(20, "zh")[:2] == ["20", "二十"]
    assert surface_forms(120, "en")[0] == "120"
