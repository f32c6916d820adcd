"""Slot lexicons (titles, names, places …) and their deterministic train/test split of values."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from tvcall.errors import InputError
from tvcall.functions.registry import LEXICON_DIR
from tvcall.functions.spec import LANGS
from tvcall.yamlio import load_yaml

TEST_SHARE = 4  # one value in TEST_SHARE is held out for the test split


def stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha1("\x1f".join(parts).encode()).digest()[:8], "big")


def is_test_value(lexicon: str, value: str) -> bool:
    return stable_hash(lexicon, value) % TEST_SHARE == 0


@cache
def load_lexicon(name: str, lexicon_dir: Path = LEXICON_DIR) -> dict[str, tuple[str, ...]]:
    path = lexicon_dir / f"{name}.yaml"
    if not path.exists():
        raise InputError(path, None, "lexicon", f"no lexicon named {name!r}")
    doc = load_yaml(path)
    values: dict[str, tuple[str, ...]] = {}
    for lang in LANGS:
        items = doc.get(lang) if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise InputError(path, None, lang, "expected a non-empty list of values")
        for item in items:
            if not isinstance(item, str) or not item.strip() or any(c in item for c in '{}"\n'):
                raise InputError(path, None, lang, f"bad value {item!r}: non-empty text without {{}}\" or newlines")
        values[lang] = tuple(dict.fromkeys(items))
    return values


def lexicon_values(name: str, lang: str, split: str, lexicon_dir: Path = LEXICON_DIR) -> list[str]:
    """Values of a lexicon for one split: held-out values (dev, test) never occur in train."""
    values = load_lexicon(name, lexicon_dir)[lang]
    held_out = [v for v in values if is_test_value(name, v)]
    kept = [v for v in values if not is_test_value(name, v)]
    if not held_out or not kept:  # tiny lexicons: still keep both sides non-empty
        held_out, kept = list(values[-1:]), list(values[:-1])
    return kept if split == "train" else held_out
