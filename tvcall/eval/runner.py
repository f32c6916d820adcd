"""Evaluate an engine on a split: predictions.jsonl, metrics.json and report.md in the run folder."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tvcall.app.engine.base import Engine, RouteResult
from tvcall.data.record import Record, write_atomic
from tvcall.eval.acting import acting_summary
from tvcall.eval.metrics import Prediction, per_domain, per_followup_kind, score, slot_breakdown
from tvcall.eval.plots import SLOT_TYPES_SHOWN, write_html_report
from tvcall.eval.published import published_section

HEADLINE = ("function_accuracy", "slot_f1", "exact_match", "json_valid_rate", "schema_valid_rate",
            "oos_precision", "oos_recall", "act_threshold", "acted_precision", "acted_coverage", "confidence_ece",
            "latency_ms_p50", "latency_ms_p95")


LATENCY_SAMPLE = 150  # utterances routed one at a time, after warm-up, for the latency percentiles
BATCH = 16  # utterances routed together for the accuracy metrics (the router batches up to 16 requests)


def _prediction(result: RouteResult, timed: bool) -> Prediction:
    return Prediction(name=result.name, arguments=result.arguments, raw=result.raw, valid=result.valid,
                      latency_ms=result.latency_ms if timed else None, confidence=result.confidence)


def predict(engine: Engine, records: list[Record], warmup: int = 3, latency_sample: int | None = LATENCY_SAMPLE,
            seed: int = 0) -> tuple[list[Prediction], dict[str, Any]]:
    """The calls: every record routed in batches of `BATCH`, as the router batches concurrent requests. Latency:
    a seeded sample of `latency_sample` records routed one at a time after warm-up (a batch's latency is not one
    request's), which also gives how often a call routed alone equals its batched one. None: every record one at
    a time, no batches."""
    for record in records[:warmup]:  # first calls pay one-off costs (allocations, caches)
        engine.route(record.text)
    if latency_sample is None:
        return [_prediction(engine.route(r.text), timed=True) for r in tqdm(records, desc="eval", unit="utt")], {}
    preds: list[Prediction] = []
    for start in tqdm(range(0, len(records), BATCH), desc="eval (batched)", unit="batch"):
        preds += [_prediction(r, timed=False) for r in engine.route_batch([r.text for r in records[start:start + BATCH]])]
    timed = sorted(random.Random(seed).sample(range(len(records)), min(latency_sample, len(records))))
    agree = 0
    for i in tqdm(timed, desc="latency (one at a time)", unit="utt"):
        alone = engine.route(records[i].text)
        agree += (alone.name, alone.arguments) == (preds[i].name, preds[i].arguments)
        preds[i].latency_ms = alone.latency_ms
    return preds, {"latency_n": len(timed), "batched_vs_single_agreement": round(agree / len(timed), 4) if timed else None}


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report_markdown(metrics: dict[str, Any], domains: dict[str, dict[str, Any]], meta: dict[str, Any],
                    followups: dict[str, dict[str, Any]] | None = None) -> str:
    lines = ["# tvcall evaluation", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_number(metrics.get(k), 1 if 'latency' in k else 4)} |" for k in HEADLINE]  # older evals lack some
    lines += ["", "## Per domain", "", "| domain | n | function acc | slot F1 | exact match | p50 ms |", "|---|---|---|---|---|---|"]
    for domain, m in domains.items():
        lines.append(f"| {domain} | {m['n']} | {m['function_accuracy']:.3f} | {m['slot_f1']:.3f} | {m['exact_match']:.3f} "
                     f"| {_number(m['latency_ms_p50'], 0)} |")
    if followups:
        lines += ["", "## By follow-up kind", "", "| kind | n | function acc | exact match |", "|---|---|---|---|"]
        lines += [f"| {kind} | {m['n']} | {m['function_accuracy']:.3f} | {m['exact_match']:.3f} |" for kind, m in followups.items()]
    lines += _slot_sections(metrics)
    lines += published_section(meta.get("benchmark"), metrics)
    return "\n".join(lines) + "\n"



def _slot_sections(metrics: dict[str, Any]) -> list[str]:
    """Slot errors by kind, and F1 by slot type (the most frequent first)."""
    lines: list[str] = []
    errors = metrics.get("slot_errors")
    if errors:
        wrong = sum(v for k, v in errors.items() if k != "correct")
        lines += ["", "## Slot errors", "", "| kind | count | share of errors |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {'–' if k == 'correct' or not wrong else f'{v / wrong:.3f}'} |" for k, v in errors.items()]
    by_type = metrics.get("slot_f1_by_type")
    if by_type:
        lines += ["", "## Slots by type", "", "| slot | support | precision | recall | F1 |", "|---|---|---|---|---|"]
        lines += [f"| {slot} | {m['support']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |"
                  for slot, m in list(by_type.items())[:SLOT_TYPES_SHOWN]]
        if len(by_type) > SLOT_TYPES_SHOWN:
            lines.append(f"\n({len(by_type) - SLOT_TYPES_SHOWN} rarer slot types in metrics.json)")
    return lines


def evaluate(engine: Engine, records: list[Record], out_dir: Path, meta: dict[str, Any],
             latency_sample: int | None = LATENCY_SAMPLE) -> Path:
    started = time.monotonic()
    preds, routing = predict(engine, records, latency_sample=latency_sample)
    metrics = (score(records, preds, engine.registry) | acting_summary(records, preds, engine.act_threshold)
               | slot_breakdown(records, preds, engine.registry))
    domains = per_domain(records, preds, engine.registry)
    followups = per_followup_kind(records, preds, engine.registry)
    meta = {**meta, **routing, "eval_seconds": round(time.monotonic() - started, 1), "registry_functions": len(engine.registry)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "predictions.jsonl", "".join(
        json.dumps({"id": r.id, "text": r.text, "gold": {"name": r.function, "arguments": r.arguments},
                    "pred": {"name": p.name, "arguments": p.arguments}, "raw": p.raw, "confidence": p.confidence,
                    "latency_ms": None if p.latency_ms is None else round(p.latency_ms, 2)}, ensure_ascii=False) + "\n"
        for r, p in zip(records, preds, strict=True)))
    path = out_dir / "metrics.json"
    write_atomic(path, json.dumps({**metrics, "per_domain": domains, **({"per_followup_kind": followups} if followups else {}),
                                   "meta": meta}, indent=1, ensure_ascii=False) + "\n")
    write_atomic(out_dir / "report.md", report_markdown(metrics, domains, meta, followups))
    write_html_report(out_dir)
    return path
