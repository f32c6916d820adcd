"""Entity linking against the registry's lexicons: which known values (the TV's content catalogue of movie, series,
documentary, anime, album and song titles; app and channel names …) an utterance mentions, and which registry
objects take each as a parameter. "霸王别姬的导演是谁" mentions a title only `media.movie` takes, which the title's
characters alone do not tell.

A mention is a lexicon value found in the utterance on word boundaries (`words.word_boundaries`), in any case, the
longest where several overlap. A mention is also one word to the copy constraint (`LexiconLinker.word_boundaries`):
a title the catalogue knows is copied whole or not at all, so 知否知否应是绿肥红瘦 is never cut after 知否知否应.
`catalogue="train"` knows only the values the training split may use, to measure what linking gives on titles the
catalogue lacks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from tvcall.data.lexicon import lexicon_values, load_lexicon
from tvcall.data.record import Record
from tvcall.data.words import word_boundaries
from tvcall.functions.registry import Registry
from tvcall.functions.spec import LANGS

MIN_CHARS = 2  # a one-character value ("V", "鹿") is mentioned by chance


def fold(text: str) -> str:
    """Lower case, character for character (offsets into the folded text are offsets into the text)."""
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    objects: frozenset[str]  # `domain.object` keys whose functions take the value


class LexiconLinker:
    def __init__(self, registry: Registry, catalogue: Literal["full", "train"] = "full") -> None:
        objects_of: dict[str, set[str]] = defaultdict(set)
        for spec in registry.functions.values():
            for schema in spec.parameters.get("properties", {}).values():
                if schema.get("x-lexicon"):
                    objects_of[schema["x-lexicon"]].add(spec.name.rsplit(".", 1)[0])
        linked: dict[str, set[str]] = defaultdict(set)
        for lexicon, objects in objects_of.items():
            for lang in LANGS:
                values = (load_lexicon(lexicon, registry.lexicon_dir)[lang] if catalogue == "full"
                          else lexicon_values(lexicon, lang, "train", registry.lexicon_dir))
                for value in values:
                    if len(value) >= MIN_CHARS:
                        linked[fold(value)] |= objects
        self.values = {value: frozenset(objects) for value, objects in linked.items()}
        # the router asks both for one utterance: the retriever its objects, the copy constraint its words
        self.mentions = lru_cache(maxsize=1024)(self._mentions)  # type: ignore[method-assign]

    def _mentions(self, text: str) -> list[Mention]:
        folded, bounds = fold(text), word_boundaries(text)
        found = []
        for value, objects in self.values.items():
            start = folded.find(value)
            while start >= 0:
                end = start + len(value)
                if start in bounds and end in bounds:
                    found.append(Mention(start, end, objects))
                start = folded.find(value, start + 1)
        found.sort(key=lambda m: (m.start - m.end, m.start))  # longest first
        kept: list[Mention] = []
        for mention in found:
            if all(mention.end <= k.start or k.end <= mention.start for k in kept):
                kept.append(mention)
        return sorted(kept, key=lambda m: m.start)

    def linked_objects(self, text: str) -> frozenset[str]:
        """The objects some mention in `text` links to."""
        return frozenset(key for mention in self.mentions(text) for key in mention.objects)

    def word_boundaries(self, text: str) -> frozenset[int]:
        """`words.word_boundaries` with each mention's inside closed: a known value is one word."""
        inside = {i for mention in self.mentions(text) for i in range(mention.start + 1, mention.end)}
        return word_boundaries(text) - inside


def catalogue_coverage(records: list[Record], registry: Registry, linker: LexiconLinker | None) -> float | None:
    """The share of the records' lexicon-typed values (a title, an app name …) the linker knows; None: no such value."""
    said = [value for r in records if r.function in registry for key, value in r.arguments.items()
            if isinstance(value, str) and registry[r.function].parameters.get("properties", {}).get(key, {}).get("x-lexicon")]
    if not said:
        return None
    return sum(linker is not None and fold(value) in linker.values for value in said) / len(said)
