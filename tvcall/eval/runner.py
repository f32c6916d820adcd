"""Evaluate an engine on a split: predictions.jsonl, metrics.json and report.md in the run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tvcall.app.engine import Engine
from tvcall.data.record import Record, write_atomic
from tvcall.eval.metrics import Prediction, per_domain, score

HEADLINE = ("function_accuracy", "slot_f1", "exact_match", "json_valid_rate", "schema_valid_rate",
            "oos_precision", "oos_recall", "latency_ms_p50", "latency_ms_p95")


def predict(engine: Engine, records: list[Record], warmup: int = 3) -> list[Prediction]:
    for record in records[:warmup]:  # first calls pay one-off costs (allocations, caches)
        engine.route(record.text)
    preds = []
    for record in tqdm(records, desc="eval", unit="utt"):
        result = engine.route(record.text)
        preds.append(Prediction(name=result.name, arguments=result.arguments, raw=result.raw,
                                valid=result.valid, latency_ms=result.latency_ms, confidence=result.confidence))
    return preds


def report_markdown(metrics: dict[str, Any], domains: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# tvcall evaluation", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {metrics[k]:.4f} |" if "latency" not in k else f"| {k} | {metrics[k]:.1f} |" for k in HEADLINE]
    lines += ["", "## Per domain", "", "| domain | n | function acc | slot F1 | exact match | p50 ms |", "|---|---|---|---|---|---|"]
    for domain, m in domains.items():
        lines.append(f"| {domain} | {m['n']} | {m['function_accuracy']:.3f} | {m['slot_f1']:.3f} | {m['exact_match']:.3f} | {m['latency_ms_p50']:.0f} |")
    return "\n".join(lines) + "\n"


def evaluate(engine: Engine, records: list[Record], out_dir: Path, meta: dict[str, Any]) -> Path:
    started = time.monotonic()
    preds = predict(engine, records)
    metrics = score(records, preds, engine.registry)
    domains = per_domain(records, preds, engine.registry)
    meta = {**meta, "eval_seconds": round(time.monotonic() - started, 1), "registry_functions": len(engine.registry)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "predictions.jsonl", "".join(
        json.dumps({"id": r.id, "text": r.text, "gold": {"name": r.function, "arguments": r.arguments},
                    "pred": {"name": p.name, "arguments": p.arguments}, "raw": p.raw, "confidence": p.confidence,
                    "latency_ms": round(p.latency_ms, 2)}, ensure_ascii=False) + "\n"
        for r, p in zip(records, preds, strict=True)))
    path = out_dir / "metrics.json"
    write_atomic(path, json.dumps({**metrics, "per_domain": domains, "meta": meta}, indent=1, ensure_ascii=False) + "\n")
    write_atomic(out_dir / "report.md", report_markdown(metrics, domains, meta))
    return path
