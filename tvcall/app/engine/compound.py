"""Compound commands ("把音量调到20然后切到HDMI2", "pause and turn on subtitles"): the text split at its connectives,
each part routed as one command, constrained and validated as any call.

Every way to cut the text at up to two connectives is a candidate (`segmentations`); a candidate counts only when
each of its parts routes to a function, and the one with the most parts wins, then the most confident
(`compound_walk`). A text with no such candidate is one command: "search for Tom and Jerry" stays whole because
"Jerry" alone asks for nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Generator
from itertools import combinations
from typing import Any

from tvcall.app.engine.base import Engine, RouteResult

MAX_CALLS = 3
MAX_CUTS = 4  # connectives considered, the first ones: each part is routed, and 4 give at most 10 candidates
# Words that join commands, longest first where one contains another. Chinese "再" joins only after a comma or
# another connective: "再大一点" is one command.
CONNECTIVES = {
    "zh": ["然后再", "然后", "接着", "随后", "之后再", "之后", "以后再", "完了再", "并且", "同时", "顺便", "还有", "，再"],
    "en": ["and after that", "after that", "and afterwards", "afterwards", "and then", "then", "and also", "also", "and"],
}
_EDGES = " ,，、;；.。!！?？"
_ZH = re.compile("|".join(sorted(map(re.escape, CONNECTIVES["zh"]), key=len, reverse=True)))
_EN = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, CONNECTIVES["en"]), key=len, reverse=True)) + r")\b", re.IGNORECASE)


def split_points(text: str) -> list[tuple[int, int]]:
    """Where connectives are, as character ranges, without overlaps (the longest first)."""
    found = sorted([m.span() for pattern in (_ZH, _EN) for m in pattern.finditer(text)], key=lambda s: (s[0], -s[1]))
    points: list[tuple[int, int]] = []
    for start, end in found:
        if not points or start >= points[-1][1]:
            points.append((start, end))
    return points


def segmentations(text: str, max_calls: int = MAX_CALLS) -> list[list[str]]:
    """Every way to cut `text` into 2..`max_calls` non-empty parts at its connectives."""
    points = split_points(text)[:MAX_CUTS]
    options = []
    for cuts in range(1, max_calls):
        for chosen in combinations(points, cuts):
            bounds = [0, *[i for point in chosen for i in point], len(text)]
            parts = [text[bounds[i]:bounds[i + 1]].strip(_EDGES) for i in range(0, len(bounds), 2)]
            if all(parts):
                options.append(parts)
    return options


Previous = tuple[str, dict[str, Any]] | None  # a conversation's previous call: (name, arguments)
Walk = Generator[list[str], list[RouteResult], list[tuple[str, RouteResult]]]


def compound_walk(text: str, previous: Previous, in_context: Callable[[str, Previous], str],
                  alone: Collection[str] = ()) -> Walk:
    """Route `text` as a coroutine: yields batches of texts to route, receives their results, returns (text routed,
    result) for each call asked for, in order.

    Each part is routed after the call of the part before it (the first after `previous`), as a conversation would
    be, so "把音量调到20然后再大一点" turns the volume up from 20. A candidate counts only when every part routes to a
    valid call that is not one of the functions said only `alone` (such as "确定"); the most parts win, then the
    highest summed log-confidence. Without one, the text is one command."""
    def usable(result: RouteResult) -> bool:
        return result.name is not None and result.valid and result.name not in alone

    results: dict[str, RouteResult] = {}

    def chain(parts: list[str]) -> list[str] | None:
        """The texts routed for `parts`, each after the call before it; None once one of them is not usable."""
        texts, context = [], previous
        for part in parts:
            texts.append(in_context(part, context))
            result = results.get(texts[-1])
            if result is None:
                return texts
            if not usable(result):
                return None
            context = (result.name, result.arguments)  # usable: it names a function
        return texts

    options = segmentations(text)
    for level in range(MAX_CALLS):
        wanted = [texts[level] for parts in options if len(parts) > level and (texts := chain(parts[:level + 1]))]
        new = [t for t in dict.fromkeys(wanted) if t not in results]
        if new:
            results.update(zip(new, (yield new), strict=True))
    complete = [texts for parts in options if (texts := chain(parts)) is not None]
    if complete:
        best = max(complete, key=lambda texts: (len(texts), sum(math.log(max(results[t].confidence, 1e-12)) for t in texts)))
        return [(t, results[t]) for t in best]
    whole = in_context(text, previous)
    return [(whole, (yield [whole])[0])]


def route_compound(route_many: Callable[[list[str]], list[RouteResult]], text: str, previous: Previous = None,
                   in_context: Callable[[str, Previous], str] = lambda text, _: text,
                   alone: Collection[str] = ()) -> list[RouteResult]:
    """`compound_walk` with its batches routed by `route_many`: the calls `text` asks for, in order."""
    walk = compound_walk(text, previous, in_context, alone)
    try:
        batch = next(walk)
        while True:
            batch = walk.send(route_many(batch))
    except StopIteration as done:
        return [result for _, result in done.value]


def route_many(engine: Engine) -> Callable[[list[str]], list[RouteResult]]:
    """The engine's batched routing where it has one, else its texts one at a time."""
    batched = getattr(engine, "route_batch", None)
    return batched if batched is not None else (lambda texts: [engine.route(t) for t in texts])


def answer_of(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """A command's answer as one JSON object: its call, or `{"calls": [...]}` for a compound command's several."""
    return calls[0] if len(calls) == 1 else {"calls": calls}


def route_calls(engine: Engine, text: str, previous: Previous = None, alone: Collection[str] = ()) -> list[RouteResult]:
    """`route_compound` through `engine`, the first part after the conversation's `previous` call."""
    return route_compound(route_many(engine), text, previous, engine.in_context, alone)
