"""Two runs' predictions on one split side by side: the headline metrics, their deltas (B − A) and a paired bootstrap
over utterances for each delta's 95% interval and p-value (`tvcall eval compare RUN_A RUN_B`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities

from tvcall.data.grounding import value_surfaces
from tvcall.data.record import Record, Span, json_lines
from tvcall.data.split_names import split_file
from tvcall.data.splits import read_split
from tvcall.errors import InputError
from tvcall.eval.metrics import Prediction, bio_tags, exact
from tvcall.functions.registry import Registry, default_registry, registry_for_data
from tvcall.run import RunDir

SIGNIFICANCE = 0.05
CHUNK = 256  # bootstrap resamples drawn at a time: bounds the index matrix to CHUNK × n
CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass
class MetricDelta:
    name: str
    a: float
    b: float
    delta: float  # b - a
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE


@dataclass
class Comparison:
    run_a: str
    run_b: str
    split: str
    n: int
    samples: int
    gold_spans: str  # where the gold slot spans came from: a data folder, or located from the gold values
    metrics: list[MetricDelta] = field(default_factory=list)
    latency_ms_p50_a: float | None = None
    latency_ms_p50_b: float | None = None
    same_call: float = math.nan  # share of utterances both runs answered with the same call (name and arguments)


@dataclass
class Outcomes:
    """Per-utterance outcomes of one run: every metric is a sum over utterances, so a resample is an indexed sum."""

    function_correct: np.ndarray
    exact: np.ndarray
    slot_tp: np.ndarray
    slot_pred: np.ndarray
    slot_gold: np.ndarray
    latency_ms: list[float]


def is_eval_dir(path: Path) -> bool:
    """An eval folder (RUN/eval-…, holding predictions.jsonl) rather than a run folder."""
    return (Path(path) / "predictions.jsonl").exists()


def predictions_path(run: Path, split: str, data: Path | None = None) -> Path:
    """A run's predictions on `split` (of `data`), or an eval folder's own."""
    return Path(run) / "predictions.jsonl" if is_eval_dir(run) else RunDir(run).predictions_file(split, data)


def read_predictions(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise InputError(path, None, "predictions", "missing: run `tvcall eval` on this run and split first")
    rows: list[dict[str, Any]] = []
    for number, row in json_lines(path):
        for key in ("id", "text", "gold", "pred"):
            if key not in row:
                raise InputError(path, number, key, "missing")
        rows.append(row)
    return rows


def check_same_utterances(path_a: Path, rows_a: list[dict[str, Any]], path_b: Path, rows_b: list[dict[str, Any]]) -> None:
    ids_a, ids_b = [r["id"] for r in rows_a], [r["id"] for r in rows_b]
    if ids_a == ids_b:
        texts_b = {r["id"]: r["text"] for r in rows_b}
        for number, row in enumerate(rows_a, start=1):
            if texts_b[row["id"]] != row["text"]:
                raise InputError(path_b, number, "text", f"utterance {row['id']} differs from its text in {path_a}")
        return
    only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
    if not only_a and not only_b:
        raise InputError(path_b, None, "id", f"lists the utterances of {path_a} in another order or with repeats")
    raise InputError(path_b, None, "id", f"covers other utterances than {path_a}: {len(only_a)} only in {path_a.name} of A "
                     f"(e.g. {only_a[:3]}), {len(only_b)} only in {path_b.name} of B (e.g. {only_b[:3]})")


def run_data_dir(run: Path) -> Path | None:
    """The data folder the run was trained on, from its config.yaml (an eval folder's: its run's)."""
    return RunDir(Path(run).parent if is_eval_dir(run) else run).data_dir()


def _lang(text: str) -> str:
    return "zh" if CJK.search(text) else "en"


def _located_record(row: dict[str, Any], registry: Registry) -> Record:
    """A gold record from a prediction line, its spans located from the gold values as predicted values are."""
    name, arguments, text = row["gold"]["name"], row["gold"].get("arguments") or {}, row["text"]
    lang, lowered = _lang(text), text.lower()
    props = registry[name].properties if name in registry else {}
    spans: list[Span] = []
    for slot, value in arguments.items():
        for form in value_surfaces(value, props.get(slot, {}), lang):
            start = lowered.find(form.lower()) if form else -1
            if start >= 0 and not any(s.start < start + len(form) and start < s.end for s in spans):
                spans.append(Span(slot=slot, start=start, end=start + len(form)))
                break
    return Record(id=row["id"], text=text, lang=lang, function=name, arguments=arguments, spans=spans)


def gold_records(rows: list[dict[str, Any]], data_dir: Path | None, split: str, registry: Registry) -> tuple[list[Record], str]:
    """The split's records when `data_dir` holds them for these utterances (their annotated spans, as `tvcall eval`
    scored); else records rebuilt from the prediction lines."""
    if data_dir is not None and split_file(data_dir, split).exists():
        by_id = {r.id: r for r in read_split(data_dir, split)}
        found = [by_id.get(row["id"]) for row in rows]
        if all(r is not None and r.text == row["text"] and r.function == row["gold"]["name"] for r, row in zip(found, rows, strict=True)):
            return [r for r in found if r is not None], str(split_file(data_dir, split))
    return [_located_record(row, registry) for row in rows], "located from the gold values (no matching data folder)"


def _prediction(row: dict[str, Any]) -> Prediction:
    pred = row["pred"]
    return Prediction(name=pred.get("name"), arguments=pred.get("arguments") or {}, raw=row.get("raw", ""), valid=True,
                      latency_ms=row.get("latency_ms"), confidence=row.get("confidence", 1.0))


def outcomes(records: list[Record], rows: list[dict[str, Any]], registry: Registry) -> Outcomes:
    tp, n_pred, n_gold = [], [], []
    for record, row in zip(records, rows, strict=True):
        gold_tags, pred_tags = bio_tags(record, _prediction(row), registry)
        gold_entities, pred_entities = set(get_entities(gold_tags)), set(get_entities(pred_tags))  # seqeval's default mode
        tp.append(len(gold_entities & pred_entities))
        n_pred.append(len(pred_entities))
        n_gold.append(len(gold_entities))
    preds = [_prediction(row) for row in rows]
    return Outcomes(
        function_correct=np.array([p.name == r.function for r, p in zip(records, preds, strict=True)], dtype=np.float64),
        exact=np.array([exact(r, p) for r, p in zip(records, preds, strict=True)], dtype=np.float64),
        slot_tp=np.array(tp, dtype=np.float64), slot_pred=np.array(n_pred, dtype=np.float64), slot_gold=np.array(n_gold, dtype=np.float64),
        latency_ms=[float(row["latency_ms"]) for row in rows if row.get("latency_ms") is not None],
    )


def _mean(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return values[idx].mean(axis=-1)


def _slot_f1(o: Outcomes, idx: np.ndarray) -> np.ndarray:
    """Micro F1 = 2·TP / (predicted + gold) over the indexed utterances; 1.0 where neither side has an entity, as `score`."""
    tp, total = o.slot_tp[idx].sum(axis=-1), (o.slot_pred[idx] + o.slot_gold[idx]).sum(axis=-1)
    return np.divide(2 * tp, total, out=np.ones_like(tp), where=total > 0)


METRICS: dict[str, Callable[[Outcomes, np.ndarray], np.ndarray]] = {
    "function_accuracy": lambda o, idx: _mean(o.function_correct, idx),
    "exact_match": lambda o, idx: _mean(o.exact, idx),
    "slot_f1": _slot_f1,
}


def paired_bootstrap(a: Outcomes, b: Outcomes, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Resampled deltas (B − A) per metric: each resample draws utterance indices with replacement, the same for both runs."""
    n = len(a.function_correct)
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for start in range(0, samples, CHUNK):
        idx = rng.integers(0, n, size=(min(CHUNK, samples - start), n))
        for name, metric in METRICS.items():
            deltas[name].append(metric(b, idx) - metric(a, idx))
    return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in deltas.items()}


def p_value(delta: float, resampled: np.ndarray) -> float:
    """Two-sided: the fraction of resamples whose delta does not share the observed delta's sign, doubled, capped at 1."""
    if delta == 0 or len(resampled) == 0:
        return 1.0
    flipped = np.mean(resampled <= 0) if delta > 0 else np.mean(resampled >= 0)
    return float(min(1.0, 2 * flipped))


def _p50(latencies: list[float]) -> float | None:
    return float(np.percentile(latencies, 50)) if latencies else None


def compare_runs(a: Path, b: Path, split: str = "test", samples: int = 2000, seed: int = 0, data: Path | None = None) -> Comparison:
    """`data`: the folder holding the split's gold records (default: run A's config.yaml `data_dir`)."""
    path_a, path_b = predictions_path(a, split, data), predictions_path(b, split, data)
    rows_a, rows_b = read_predictions(path_a), read_predictions(path_b)
    check_same_utterances(path_a, rows_a, path_b, rows_b)
    if not rows_a:
        raise InputError(path_a, None, "predictions", "no utterances")
    data_dir = data if data is not None else run_data_dir(a)
    registry = registry_for_data(data_dir) if data_dir is not None and data_dir.exists() else default_registry()
    records, source = gold_records(rows_a, data_dir, split, registry)
    out_a, out_b = outcomes(records, rows_a, registry), outcomes(records, rows_b, registry)
    everything = np.arange(len(records))
    resampled = paired_bootstrap(out_a, out_b, samples, seed)
    metrics = []
    for name, metric in METRICS.items():
        value_a, value_b = float(metric(out_a, everything)), float(metric(out_b, everything))
        delta = value_b - value_a
        low, high = (np.percentile(resampled[name], [2.5, 97.5]) if samples else (delta, delta))
        metrics.append(MetricDelta(name, value_a, value_b, delta, float(low), float(high), p_value(delta, resampled[name])))
    same = sum(row_a["pred"] == row_b["pred"] for row_a, row_b in zip(rows_a, rows_b, strict=True)) / len(rows_a)
    return Comparison(run_a=str(a), run_b=str(b), split=split, n=len(records), samples=samples, gold_spans=source, metrics=metrics,
                      latency_ms_p50_a=_p50(out_a.latency_ms), latency_ms_p50_b=_p50(out_b.latency_ms), same_call=same)


def format_table(comparison: Comparison) -> str:
    """A markdown table; `*` marks a delta with p < 0.05."""
    c = comparison
    lines = [f"A: {c.run_a}", f"B: {c.run_b}",
             f"split {c.split}, {c.n} utterances, paired bootstrap over {c.samples} resamples; gold spans: {c.gold_spans}", "",
             "| metric | A | B | Δ (B − A) | 95% CI of Δ | p | |", "|---|---|---|---|---|---|---|"]
    for m in c.metrics:
        lines.append(f"| {m.name} | {m.a:.4f} | {m.b:.4f} | {m.delta:+.4f} | [{m.ci_low:+.4f}, {m.ci_high:+.4f}] | {m.p_value:.3f} "
                     f"| {'*' if m.significant else ''} |")
    if c.latency_ms_p50_a is not None and c.latency_ms_p50_b is not None:
        lines.append(f"| latency_ms_p50 | {c.latency_ms_p50_a:.1f} | {c.latency_ms_p50_b:.1f} | "
                     f"{c.latency_ms_p50_b - c.latency_ms_p50_a:+.1f} | – | – | |")
    lines += ["", f"Same call (name and arguments) from A and B: {c.same_call:.3f} of the utterances.",
              f"* p < {SIGNIFICANCE} (two-sided paired bootstrap)"]
    return "\n".join(lines) + "\n"
