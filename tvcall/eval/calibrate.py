"""Calibration on the dev split: how much the name stage trusts the classifier's prior, and how much to favour
"no function" at the name's first token.

The decoder records, for every utterance, the logit of "no function" minus that of the best name at the first
name token (`null_margin`). With a bias b added to the "no function" logit, an utterance abstains exactly when
margin + b > 0, and otherwise decodes as it did unbiased; so one unbiased pass over dev scores every b. The prior
weight changes the decode itself: one pass per weight in `PRIOR_WEIGHTS`, of the names alone (a whole decode
chooses the same name; the arguments were most of the time).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tvcall.app.engine import TransformersEngine
from tvcall.data.record import Record, write_atomic
from tvcall.training.train import CALIBRATION_FILE


@dataclass
class Calibration:
    null_bias: float
    prior_weight: float
    dev_examples: int
    dev_function_accuracy_unbiased: float
    dev_function_accuracy: float
    dev_function_accuracy_by_weight: dict[str, float] = field(default_factory=dict)  # each weight with its own bias


def accuracy_at(bias: float, margins: list[float], names: list[str | None], golds: list[str | None]) -> float:
    hits = sum((None if m + bias > 0 else n) == g for m, n, g in zip(margins, names, golds, strict=True))
    return hits / max(1, len(golds))


MIN_GAIN = 2  # dev utterances a bias must win: a one-utterance gain on a small dev split is noise (it cost test)
PRIOR_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)  # tried in this order; a later one is taken only when it wins MIN_GAIN more


def choose_null_bias(margins: list[float], names: list[str | None], golds: list[str | None],
                     min_gain: int = MIN_GAIN) -> float:
    """The best bias ≥ 0 on dev, taken in the middle of its interval for some room on unseen data (ties: the
    smallest); no bias unless it wins at least `min_gain` more dev utterances than none."""
    cuts = sorted({-m for m in margins if not math.isnan(m) and m < 0})
    candidates = [0.0, *((a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)), *([cuts[-1] + 0.5] if cuts else [])]
    best = max(candidates, key=lambda bias: accuracy_at(bias, margins, names, golds))
    gain = (accuracy_at(best, margins, names, golds) - accuracy_at(0.0, margins, names, golds)) * len(golds)
    return best if gain >= min_gain - 1e-9 else 0.0


def calibrate(engine: TransformersEngine, records: list[Record], weights: tuple[float, ...] = PRIOR_WEIGHTS) -> Calibration:
    """The prior weight and null bias that route most dev utterances right; leaves them set on `engine`."""
    texts, golds = [r.text for r in records], [r.function for r in records]
    has_prior = engine.retriever is not None and engine.retriever.classifier is not None
    engine.decoder.null_bias = 0.0
    tried: list[tuple[float, float, float, float]] = []  # (weight, bias, accuracy, accuracy unbiased)
    for weight in weights if has_prior else (0.0,):
        engine.decoder.prior_weight = weight
        results = engine.route_batch(texts, name_only=True)  # only the names count here: batched, no arguments
        margins, names = [r.null_margin for r in results], [r.name for r in results]
        bias = choose_null_bias(margins, names, golds)
        tried.append((weight, bias, accuracy_at(bias, margins, names, golds), accuracy_at(0.0, margins, names, golds)))
    chosen = tried[0]
    for candidate in tried[1:]:
        if (candidate[2] - chosen[2]) * len(records) >= MIN_GAIN - 1e-9:
            chosen = candidate
    engine.decoder.prior_weight, engine.decoder.null_bias = chosen[0], chosen[1]
    return Calibration(null_bias=chosen[1], prior_weight=chosen[0], dev_examples=len(records),
                       dev_function_accuracy_unbiased=tried[0][3], dev_function_accuracy=chosen[2],
                       dev_function_accuracy_by_weight={str(weight): accuracy for weight, _, accuracy, _ in tried})


def save(calibration: Calibration, run_dir: Path) -> Path:
    path = Path(run_dir) / CALIBRATION_FILE
    write_atomic(path, json.dumps(asdict(calibration), indent=1) + "\n")
    return path
