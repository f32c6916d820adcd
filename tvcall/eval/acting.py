"""When the router may act: the confidence above which an executed call is right often enough, chosen on dev, and how
well the reported confidence matches how often calls are right (reliability).

A call "acts" when it names a function and its confidence is at least the threshold; the router executes only those
and answers the rest with `needs_clarification`. The threshold is the lowest confidence at which the calls that
would act on dev are exact at least `ACT_PRECISION` of the time: the confidence of the least sure dev call that acts,
nothing below what dev tested. A dev split that never gets there gives a threshold above 1 (nothing acts) rather
than a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tvcall.data.record import Record
from tvcall.eval.metrics import Prediction, exact

ACT_PRECISION = 0.99
NEVER = 1.01  # a threshold no confidence reaches
RELIABILITY_BINS = 10


@dataclass
class Acting:
    threshold: float
    precision: float | None  # exact share of the calls that act (None: none act)
    coverage: float | None  # share of the calls naming a function that act


def calls_and_hits(records: Sequence[Record], preds: Sequence[Prediction]) -> tuple[list[float], list[bool]]:
    """The confidences of the predictions that name a function, and whether each is exact."""
    named = [(p.confidence, exact(r, p)) for r, p in zip(records, preds, strict=True) if p.name is not None]
    return [c for c, _ in named], [h for _, h in named]


def acting_at(threshold: float, confidences: Sequence[float], hits: Sequence[bool]) -> Acting:
    """How the calls (each naming a function) fare at a threshold."""
    acted = [h for c, h in zip(confidences, hits, strict=True) if c >= threshold]
    return Acting(threshold, sum(acted) / len(acted) if acted else None,
                  len(acted) / len(confidences) if confidences else None)


def choose_act_threshold(confidences: Sequence[float], hits: Sequence[bool], precision: float = ACT_PRECISION) -> float:
    """The lowest confidence whose calls at or above it are exact at least `precision` of the time, over the calls
    that name a function (calls of one confidence act together). `NEVER` when none gets there."""
    ranked = sorted(zip(confidences, hits, strict=True), key=lambda pair: -pair[0])
    threshold, right = NEVER, 0
    for index, (confidence, hit) in enumerate(ranked):
        right += hit
        last_of_its_value = index + 1 == len(ranked) or ranked[index + 1][0] < confidence
        if last_of_its_value and right >= precision * (index + 1):
            threshold = confidence
    return threshold


@dataclass
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_confidence: float | None
    exact_rate: float | None


def reliability(confidences: Sequence[float], hits: Sequence[bool], bins: int = RELIABILITY_BINS) -> list[ReliabilityBin]:
    """Confidence against the observed exact rate, in equal-width bins over [0, 1]."""
    grouped: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for confidence, hit in zip(confidences, hits, strict=True):
        grouped[min(bins - 1, max(0, int(confidence * bins)))].append((confidence, hit))
    return [ReliabilityBin(i / bins, (i + 1) / bins, len(group),
                           sum(c for c, _ in group) / len(group) if group else None,
                           sum(h for _, h in group) / len(group) if group else None) for i, group in enumerate(grouped)]


def expected_calibration_error(table: list[ReliabilityBin]) -> float | None:
    total = sum(b.count for b in table)
    if not total:
        return None
    return sum(b.count * abs(b.mean_confidence - b.exact_rate) for b in table if b.count) / total


def acting_summary(records: Sequence[Record], preds: Sequence[Prediction], threshold: float) -> dict[str, Any]:
    """For an eval's metrics: how the calls fare at the run's act threshold, and how well calibrated they are."""
    confidences, hits = calls_and_hits(records, preds)
    acting, table = acting_at(threshold, confidences, hits), reliability(confidences, hits)
    return {"act_threshold": threshold, "acted_precision": acting.precision, "acted_coverage": acting.coverage,
            "confidence_ece": expected_calibration_error(table), "reliability": [asdict(b) for b in table]}
