"""Candidate retrieval over the registry: BM25 over words (English) and character uni/bi-grams (Chinese).

Documents are the registry's objects (`domain.object`: every function of a family, or of one-off functions
sharing an object), described by their names, zh/en descriptions, object and attribute phrases, enum
phrases and their own training templates. The prompt lists the top objects with a short label, and the
decoder's name stage is narrowed to their functions.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from rank_bm25 import BM25Okapi

from tvcall.functions.registry import PLACEHOLDER_RE, Registry
from tvcall.functions.spec import LANGS, FunctionSpec

_ASCII_WORD = re.compile(r"[a-z0-9]+")
_CJK = re.compile(r"[\u3400-\u9fff]+")
DEFAULT_TOP_OBJECTS = 4  # recall@4 objects on the synthetic test split ≈ 0.96


def tokens(text: str) -> list[str]:
    text = text.lower()
    out = _ASCII_WORD.findall(text)
    for run in _CJK.findall(text):
        out += list(run) + [run[i:i + 2] for i in range(len(run) - 1)]
    return out


def language(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def object_key(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _describe(spec: FunctionSpec) -> list[str]:
    parts = [spec.name.replace(".", " ").replace("_", " ")]
    for lang in LANGS:
        parts += spec.description.forms(lang)
        for phrases in (spec.object_phrases, spec.attribute_phrases):
            if phrases is not None:
                parts += phrases.forms(lang)
        parts += [PLACEHOLDER_RE.sub(" ", t) for t in spec.own_templates(lang, "train")]  # test phrasings stay unseen
        for schema in spec.properties.values():
            for surface in schema.get("x-surface", {}).values():
                parts += surface.get(lang, [])
    return parts


def _label(specs: list[FunctionSpec], lang: str) -> str:
    """A few words naming an object in `lang`: its phrase for a family, else its shortest description."""
    if specs[0].object_phrases is not None:
        return specs[0].object_phrases.forms(lang)[0]
    return min((s.description.forms(lang)[0] for s in specs), key=len)


@dataclass
class Retrieved:
    objects: list[str]
    scores: list[float]
    functions: list[str]
    options: list[str]  # "domain.object label" lines for the prompt


class Retriever:
    def __init__(self, registry: Registry) -> None:
        groups: dict[str, list[FunctionSpec]] = defaultdict(list)
        for spec in registry.functions.values():
            groups[object_key(spec.name)].append(spec)
        self.objects = list(groups)
        self.functions = {key: [s.name for s in specs] for key, specs in groups.items()}
        self.labels = {(key, lang): _label(specs, lang) for key, specs in groups.items() for lang in LANGS}
        self.index = BM25Okapi([tokens(" ".join(p for s in groups[key] for p in _describe(s))) for key in self.objects])

    def scores(self, text: str) -> np.ndarray:
        return self.index.get_scores(tokens(text))

    def retrieve(self, text: str, k: int = DEFAULT_TOP_OBJECTS, must_include: str | None = None) -> Retrieved:
        """Top-k objects; `must_include` (training: the gold function) replaces the last one when missed."""
        scores = self.scores(text)
        top = [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
        objects = [self.objects[i] for i in top]
        if must_include is not None and object_key(must_include) not in objects:
            objects[-1] = object_key(must_include)
        lang = language(text)
        return Retrieved(
            objects=objects, scores=[float(scores[i]) for i in top],
            functions=[name for key in objects for name in self.functions[key]],
            options=[f"{key} {self.labels[key, lang]}" for key in objects],
        )
