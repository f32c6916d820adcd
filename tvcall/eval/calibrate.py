"""Calibrated abstention: how much to favour "no function" at the name's first token, chosen on the dev split.

The decoder records, for every utterance, the logit of "no function" minus that of the best name at the first
name token (`null_margin`). With a bias b added to the "no function" logit, an utterance abstains exactly when
margin + b > 0, and otherwise decodes as it did unbiased; so one unbiased pass over dev scores every b.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from tvcall.app.engine import CALIBRATION_FILE, TransformersEngine
from tvcall.data.record import Record, write_atomic


@dataclass
class Calibration:
    null_bias: float
    dev_examples: int
    dev_function_accuracy_unbiased: float
    dev_function_accuracy: float


def accuracy_at(bias: float, margins: list[float], names: list[str | None], golds: list[str | None]) -> float:
    hits = sum((None if m + bias > 0 else n) == g for m, n, g in zip(margins, names, golds, strict=True))
    return hits / max(1, len(golds))


MIN_GAIN = 2  # dev utterances a bias must win: a one-utterance gain on a small dev split is noise (it cost test)


def choose_null_bias(margins: list[float], names: list[str | None], golds: list[str | None],
                     min_gain: int = MIN_GAIN) -> float:
    """The best bias ≥ 0 on dev, taken in the middle of its interval for some room on unseen data (ties: the
    smallest); no bias unless it wins at least `min_gain` more dev utterances than none."""
    cuts = sorted({-m for m in margins if not math.isnan(m) and m < 0})
    candidates = [0.0, *((a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)), *([cuts[-1] + 0.5] if cuts else [])]
    best = max(candidates, key=lambda bias: accuracy_at(bias, margins, names, golds))
    gain = (accuracy_at(best, margins, names, golds) - accuracy_at(0.0, margins, names, golds)) * len(golds)
    return best if gain >= min_gain - 1e-9 else 0.0


def calibrate(engine: TransformersEngine, records: list[Record]) -> Calibration:
    engine.decoder.null_bias = 0.0
    results = engine.route_batch([r.text for r in records])  # latency is not measured here: batch it
    margins = [r.null_margin for r in results]
    names = [r.name for r in results]
    golds = [r.function for r in records]
    bias = choose_null_bias(margins, names, golds)
    engine.decoder.null_bias = bias
    return Calibration(null_bias=bias, dev_examples=len(records),
                       dev_function_accuracy_unbiased=accuracy_at(0.0, margins, names, golds),
                       dev_function_accuracy=accuracy_at(bias, margins, names, golds))


def save(calibration: Calibration, run_dir: Path) -> Path:
    path = Path(run_dir) / CALIBRATION_FILE
    write_atomic(path, json.dumps(asdict(calibration), indent=1) + "\n")
    return path
