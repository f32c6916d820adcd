"""Where words start and end in an utterance, so that a copied slot value never cuts through one.

ASCII letters and digits run together into words; everything else (spaces, punctuation, other scripts) is a
boundary on its own, except between two Chinese characters, where jieba's dictionary decides. Its HMM guesses are
off: a name jieba does not know splits into single characters, which only adds boundaries, while a guessed word can
swallow the first character of a title ("看庆余年" would become 看庆/余年).
"""

from __future__ import annotations

import logging
from functools import cache, lru_cache

import jieba


def is_cjk(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff"


def is_ascii_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


@cache
def _segmenter() -> jieba.Tokenizer:
    jieba.setLogLevel(logging.WARNING)  # "Building prefix dict ..." on every first use
    return jieba.Tokenizer()


def _chinese_cuts(text: str) -> frozenset[int]:
    return frozenset(end for _, _, end in _segmenter().tokenize(text, HMM=False))


@lru_cache(maxsize=8192)
def word_boundaries(text: str) -> frozenset[int]:
    """The character offsets of `text` where a word starts or ends (0 and len(text) included)."""
    cuts = _chinese_cuts(text) if any(is_cjk(c) for c in text) else frozenset()
    inside = set()
    for i in range(1, len(text)):
        before, after = text[i - 1], text[i]
        if (is_ascii_word_char(before) and is_ascii_word_char(after)) or (is_cjk(before) and is_cjk(after) and i not in cuts):
            inside.add(i)
    return frozenset(range(len(text) + 1)) - inside
