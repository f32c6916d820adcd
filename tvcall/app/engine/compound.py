"""Compound commands ("把音量调到20然后切到HDMI2", "pause and turn on subtitles"): the text split at its connectives,
each part routed as one command, constrained and validated as any call.

Every way to cut the text at up to two connectives is a candidate (`segmentations`); a candidate counts only when
each of its parts routes to a function, and the one with the most parts wins, then the most confident. A text with
no such candidate is one command: "search for Tom and Jerry" stays whole because "Jerry" alone asks for nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence
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


def choose_parts(options: Sequence[list[str]], routed: dict[str, RouteResult], alone: Collection[str] = ()) -> list[str] | None:
    """The candidate whose parts all route to a valid call (none of them one of the functions said only `alone`, such as
    "确定"): the most parts, then the highest summed log-confidence."""
    def score(parts: list[str]) -> tuple[int, float]:
        return len(parts), sum(math.log(max(routed[p].confidence, 1e-12)) for p in parts)

    def usable(result: RouteResult) -> bool:
        return result.name is not None and result.valid and result.name not in alone

    found = [parts for parts in options if all(usable(routed[p]) for p in parts)]
    return max(found, key=score) if found else None


def route_compound(route_many: Callable[[list[str]], list[RouteResult]], text: str,
                   alone: Collection[str] = ()) -> list[RouteResult]:
    """The calls `text` asks for, in order: one per part of its chosen segmentation, else the text as one command."""
    options = segmentations(text)
    if options:
        unique = list(dict.fromkeys(p for parts in options for p in parts))
        routed = dict(zip(unique, route_many(unique), strict=True))
        chosen = choose_parts(options, routed, alone)
        if chosen is not None:
            return [routed[p] for p in chosen]
    return route_many([text])


def route_many(engine: Engine) -> Callable[[list[str]], list[RouteResult]]:
    """The engine's batched routing where it has one, else its texts one at a time."""
    batched = getattr(engine, "route_batch", None)
    return batched if batched is not None else (lambda texts: [engine.route(t) for t in texts])


def route_calls(engine: Engine, text: str, previous: tuple[str, dict[str, Any]] | None = None,
                alone: Collection[str] = ()) -> list[RouteResult]:
    """`route_compound` through `engine`, each part after the conversation's `previous` call."""
    route = route_many(engine)
    return route_compound(lambda texts: route([engine.in_context(t, previous) for t in texts]), text, alone)
