"""Evaluate compound commands: the whole list of calls must match, in order (`tvcall.app.engine.compound`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tvcall.app.engine.base import Engine
from tvcall.app.engine.compound import route_calls, segmentations
from tvcall.app.serve.sessions import DIALOG_FUNCTIONS
from tvcall.data.compound import CompoundRecord
from tvcall.data.record import Record, write_atomic


def _calls(results: list[Any]) -> list[dict[str, Any]]:
    return [{"name": r.name, "arguments": r.arguments} for r in results if r.valid]


def compound_metrics(records: list[CompoundRecord], predicted: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Exact match of the whole list; the share with the right number of calls; each call right at its place."""
    gold = [[c.model_dump() for c in r.calls] for r in records]
    exact = [g == p for g, p in zip(gold, predicted, strict=True)]
    counted = [len(g) == len(p) for g, p in zip(gold, predicted, strict=True)]
    calls = [gc == pc for g, p in zip(gold, predicted, strict=True) for gc, pc in zip(g, p, strict=False)]
    by_calls = {str(n): {"n": sum(len(g) == n for g in gold),
                         "exact_match": round(float(np.mean([e for g, e in zip(gold, exact, strict=True) if len(g) == n] or [0])), 4)}
                for n in sorted({len(g) for g in gold})}
    return {"n": len(records), "exact_match": round(float(np.mean(exact)), 4) if exact else 0.0,
            "call_count_accuracy": round(float(np.mean(counted)), 4) if counted else 0.0,
            "call_exact_at_place": round(sum(calls) / sum(len(g) for g in gold), 4) if gold else 0.0, "by_calls": by_calls}


def singles_cut(engine: Engine, singles: list[Record]) -> dict[str, Any]:
    """How many single commands (in scope) the router would cut into several calls: each one is a wrong answer."""
    candidates = [r for r in singles if r.function is not None and segmentations(r.text)]
    cut = [r.text for r in tqdm(candidates, desc="singles with a connective", unit="utt") if len(route_calls(engine, r.text, alone=DIALOG_FUNCTIONS)) > 1]
    return {"singles": len(singles), "singles_with_a_connective": len(candidates), "singles_cut": len(cut),
            "singles_cut_examples": cut[:10]}


def evaluate_compound(engine: Engine, records: list[CompoundRecord], out_dir: Path, meta: dict[str, Any],
                      singles: list[Record] | None = None) -> Path:
    """The compound split's metrics, and with `singles` (the single-command split of the same data) how many of
    those the splitting would cut."""
    started = time.monotonic()
    predicted, latencies = [], []
    for record in tqdm(records, desc="eval (compound)", unit="utt"):
        begun = time.perf_counter()
        predicted.append(_calls(route_calls(engine, record.text, alone=DIALOG_FUNCTIONS)))
        latencies.append((time.perf_counter() - begun) * 1000)
    metrics = compound_metrics(records, predicted) | {
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1) if latencies else None}
    if singles is not None:
        metrics |= singles_cut(engine, singles)
    meta = {**meta, "eval_seconds": round(time.monotonic() - started, 1), "registry_functions": len(engine.registry)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "predictions.jsonl", "".join(
        json.dumps({"id": r.id, "text": r.text, "gold": [c.model_dump() for c in r.calls], "pred": p}, ensure_ascii=False) + "\n"
        for r, p in zip(records, predicted, strict=True)))
    path = out_dir / "metrics.json"
    write_atomic(path, json.dumps({**metrics, "meta": meta}, indent=1, ensure_ascii=False) + "\n")
    lines = ["# tvcall evaluation: compound commands", "", *[f"- {k}: `{v}`" for k, v in meta.items()], "",
             "| metric | value |", "|---|---|",
             *[f"| {k} | {metrics[k]} |" for k in ("n", "exact_match", "call_count_accuracy", "call_exact_at_place",
                                                    "latency_ms_p50", "latency_ms_p95", "singles", "singles_with_a_connective",
                                                    "singles_cut") if k in metrics],
             "", "| calls | n | exact match |", "|---|---|---|",
             *[f"| {n} | {m['n']} | {m['exact_match']:.3f} |" for n, m in metrics["by_calls"].items()]]
    write_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
    return path
