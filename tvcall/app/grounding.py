"""Which values of a typed slot the utterance actually says: the grounding half of the copy constraint.

Every argument comes from the utterance: strings are copied spans (see `decoder.utterance_spans`), and
numbers, enum values and booleans must be said too, in one of their surface forms (digits, Chinese
numerals, English number words, the registry's enum phrases). Where several matches overlap, only the
longest counts ("二十" is 20, not 2 or 10).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from tvcall.data.numbers import surface_forms
from tvcall.functions.spec import LANGS

MAX_INTEGER_RANGE = 20000  # larger ranges are not enumerated; their values stay unconstrained


def _word_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


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


def groundable(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "integer":
        return schema["maximum"] - schema["minimum"] <= MAX_INTEGER_RANGE
    return "x-surface" in schema


def grounded_values(schema: dict[str, Any], text: str) -> list[Any]:
    """Values of `schema` said in `text`, from the longest non-overlapping-contained matches."""
    table, longest = _surfaces(json.dumps(schema, sort_keys=True))
    lowered = text.lower()
    matches: list[tuple[int, int, tuple[Any, ...]]] = []
    for start in range(len(lowered)):
        if start and _word_char(lowered[start - 1]) and _word_char(lowered[start]):
            continue
        for end in range(start + 1, min(len(lowered), start + longest) + 1):
            if end < len(lowered) and _word_char(lowered[end - 1]) and _word_char(lowered[end]):
                continue
            values = table.get(lowered[start:end])
            if values:
                matches.append((start, end, values))
    kept = [m for m in matches if not any(o[0] <= m[0] and m[1] <= o[1] and (o[1] - o[0]) > (m[1] - m[0]) for o in matches)]
    return list(dict.fromkeys(v for _, _, values in kept for v in values))
