"""Which values of a typed slot the utterance actually says: the grounding half of the copy constraint.

Every argument comes from the utterance: strings are copied spans (see `decoder.utterance_spans`), and
numbers, enum values and booleans must be said too, in one of their surface forms (digits, Chinese
numerals, English number words, the registry's enum phrases). Where several matches overlap, only the
longest counts ("二十" is 20, not 2 or 10).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from typing import Any

from tvcall.data.numbers import surface_forms
from tvcall.data.words import is_ascii_word_char
from tvcall.functions.spec import LANGS, FunctionSpec

MAX_INTEGER_RANGE = 20000  # larger ranges are not enumerated; their values stay unconstrained


@cache
def _surfaces(schema_json: str) -> tuple[dict[str, tuple[Any, ...]], int]:
    """surface (lower case) → values, and the longest surface."""
    schema = json.loads(schema_json)
    table: dict[str, set[Any]] = {}

    def add(surface: str, value: Any) -> None:
        table.setdefault(surface.lower(), set()).add(value)

    if schema.get("type") == "integer":
        for n in range(schema["minimum"], schema["maximum"] + 1):
            for lang in LANGS:
                for form in surface_forms(n, lang):
                    add(form, n)
    for key, forms in schema.get("x-surface", {}).items():
        value: Any = (key == "true") if schema.get("type") == "boolean" else key
        for lang in LANGS:
            for form in forms.get(lang, []):
                add(form, value)
        add(str(key), value)
    return {k: tuple(v) for k, v in table.items()}, max(map(len, table), default=0)


# "一" in these is "a bit", not the number one; 一点 stays a number before a time word or numeral (一点半, 一点十分)
_NOT_NUMBERS = re.compile(r"一下|一些|一点(?![零一二三四五六七八九十半整钟过0-9])")


def grounding_text(text: str, phrases: Iterable[str] = ()) -> str:
    """The utterance with what cannot be a slot value blanked out: the function's own object phrases (the 1 in
    "1 kHz band" names the band) and the Chinese "a bit" idioms."""
    for phrase in sorted(set(phrases), key=len, reverse=True):
        if phrase:
            text = re.sub(re.escape(phrase), lambda m: " " * len(m.group()), text, flags=re.IGNORECASE)
    return _NOT_NUMBERS.sub(lambda m: " " * len(m.group()), text)


def groundable(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "integer":
        return schema["maximum"] - schema["minimum"] <= MAX_INTEGER_RANGE
    return "x-surface" in schema


Match = tuple[int, int, tuple[Any, ...]]  # start, end, the values that surface stands for


def grounded_values(schema: dict[str, Any], text: str) -> list[Any]:
    """Values of `schema` said in `text`, from the longest non-overlapping-contained matches."""
    return values_of(grounded_matches(schema, text))


def values_of(matches: list[Match]) -> list[Any]:
    return list(dict.fromkeys(v for _, _, values in matches for v in values))


def grounded_matches(schema: dict[str, Any], text: str) -> list[Match]:
    """Where `text` says values of `schema`: a match contained in a longer one does not count."""
    table, longest = _surfaces(json.dumps(schema, sort_keys=True))
    lowered = text.lower()
    matches: list[Match] = []
    for start in range(len(lowered)):
        if start and is_ascii_word_char(lowered[start - 1]) and is_ascii_word_char(lowered[start]):
            continue
        for end in range(start + 1, min(len(lowered), start + longest) + 1):
            if end < len(lowered) and is_ascii_word_char(lowered[end - 1]) and is_ascii_word_char(lowered[end]):
                continue
            values = table.get(lowered[start:end])
            if values:
                matches.append((start, end, values))
    return [m for m in matches if not any(o[0] <= m[0] and m[1] <= o[1] and (o[1] - o[0]) > (m[1] - m[0]) for o in matches)]


def said_matches(spec: FunctionSpec, text: str, keys: Iterable[str] | None = None) -> dict[str, list[Match]]:
    """For each groundable parameter of `spec` (of `keys` only, when given), where `text` says its values (the
    function's own object phrases excluded)."""
    phrases = [f for lang in LANGS for f in spec.object_phrases.forms(lang)] if spec.object_phrases else []
    clean = grounding_text(text, phrases)
    wanted = spec.properties if keys is None else keys
    return {k: grounded_matches(spec.properties[k], clean) for k in wanted if groundable(spec.properties[k])}


def says_required(spec: FunctionSpec, text: str, carried: Iterable[str] = ()) -> bool:
    """Whether `text` says a value for every required typed parameter of `spec` (numbers, enums, booleans) that is
    not `carried` from the previous call: a call whose required value the user never said could only be completed
    with an invented one. Runs for every candidate of every request: only the required typed parameters are
    grounded, and none for most functions."""
    required = [k for k in spec.required if groundable(spec.properties[k]) and k not in set(carried)]
    return not required or all(said_matches(spec, text, required).values())


def said_keys(spec: FunctionSpec, said: dict[str, list[Match]]) -> frozenset[str]:
    """Keys whose value the utterance says unambiguously, and so must be filled: "降低四" is a step of 4, "in the
    kitchen" the room. Words that could say another parameter too (the 19 of "19点" is an hour or a minute) are
    left to the model, and so are booleans."""

    def claimed_elsewhere(key: str) -> bool:
        return any(a[0] < b[1] and b[0] < a[1] for a in said[key] for other, matches in said.items() if other != key for b in matches)

    return frozenset(k for k, matches in said.items()
                     if matches and spec.properties[k].get("type") != "boolean" and not claimed_elsewhere(k))


def value_surfaces(value: Any, schema: dict[str, Any], lang: str) -> list[str]:
    """How an utterance in `lang` may say `value` of `schema` (to locate it in the text): number forms, enum phrases."""
    if isinstance(value, bool):
        return list(schema.get("x-surface", {}).get(str(value).lower(), {}).get(lang, [])) + [str(value).lower()]
    if isinstance(value, int):
        return surface_forms(value, lang)
    surface = schema.get("x-surface", {}).get(value, {}).get(lang, [])
    return [*surface, str(value)]


def occurrences(text: str, value: str) -> list[int]:
    """Every place `value` starts in `text`, overlapping ones included."""
    starts, start = [], text.find(value)
    while start >= 0:
        starts.append(start)
        start = text.find(value, start + 1)
    return starts
