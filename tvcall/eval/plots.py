"""report.html beside report.md: the headline metrics and meta, and matplotlib plots embedded as PNG (per-function F1,
the most confused function pairs, latency, and the learning curve when given)."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import shutil
import subprocess
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from matplotlib import rc_context
from matplotlib.figure import Figure  # no pyplot: the Agg canvas without switching the process's backend

from tvcall.data.record import write_atomic

TOP_N = 15  # functions per F1 panel
SLOT_TYPES_SHOWN = 25
CONFUSED_PAIRS = 12
NONE_LABEL = "(no function)"
CJK_FAMILIES = ("WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "SimHei", "Microsoft YaHei")


@dataclass
class FunctionScore:
    name: str
    support: int
    f1: float


def _label(name: str | None) -> str:
    return NONE_LABEL if name is None else name


@cache
def cjk_font() -> str | None:
    """A family with CJK glyphs that matplotlib can use: a known one, else any of fontconfig's zh fonts; None without one."""
    from matplotlib import font_manager

    known = {f.name for f in font_manager.fontManager.ttflist}
    names: list[str] = []
    if shutil.which("fc-list"):
        try:
            listed = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True, timeout=10, check=False).stdout
            names = [part.strip() for line in listed.splitlines() for part in line.split(",")]
        except (OSError, subprocess.SubprocessError):
            names = []
    return next((name for name in [*CJK_FAMILIES, *names] if name in known), None)


def _rc() -> dict[str, Any]:
    cjk = cjk_font()
    return {"font.family": ["DejaVu Sans", cjk] if cjk else ["DejaVu Sans"], "axes.unicode_minus": False}


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Glyph .* missing from")  # no CJK font: boxes, no noise
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(png: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def function_scores(rows: list[dict[str, Any]]) -> list[FunctionScore]:
    """One-vs-rest F1 of each gold function's name predictions (out of scope, name null, counts as a function)."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for row in rows:
        gold, pred = _label(row["gold"]["name"]), _label(row["pred"]["name"])
        if gold == pred:
            tp[gold] += 1
        else:
            fp[pred] += 1
            fn[gold] += 1
    golds = set(tp) | set(fn)
    return [FunctionScore(name, tp[name] + fn[name], 2 * tp[name] / (2 * tp[name] + fp[name] + fn[name])) for name in golds]


def confused_pairs(rows: list[dict[str, Any]], top: int = CONFUSED_PAIRS) -> list[tuple[str, str, int]]:
    pairs = Counter((_label(r["gold"]["name"]), _label(r["pred"]["name"])) for r in rows if r["gold"]["name"] != r["pred"]["name"])
    return [(gold, pred, count) for (gold, pred), count in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:top]]


def _bars(ax: Any, scores: list[FunctionScore], title: str) -> None:
    labels = [f"{s.name} (n={s.support})" for s in scores]
    bars = ax.barh(range(len(scores)), [s.f1 for s in scores], color="#4878a8")
    ax.bar_label(bars, [f"{s.f1:.2f}" for s in scores], fontsize=7, padding=2)  # a zero bar is otherwise invisible
    ax.set_yticks(range(len(scores)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("F1")
    ax.set_title(title, fontsize=10)


def f1_figure(scores: list[FunctionScore], top: int = TOP_N) -> Figure:
    """The best and the worst `top` functions by F1, the better supported first among ties (most functions have one
    or two test utterances, so support decides which of the equal ones are shown)."""
    best = sorted(scores, key=lambda s: (-s.f1, -s.support, s.name))[:top]
    worst = sorted(scores, key=lambda s: (s.f1, -s.support, s.name))[:top]
    fig = Figure(figsize=(13, 0.3 * max(len(best), len(worst)) + 1.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    _bars(left, best, f"highest F1 ({len(scores)} functions)")
    _bars(right, worst, "lowest F1")
    return fig


def confusion_figure(pairs: list[tuple[str, str, int]]) -> Figure:
    golds = list(dict.fromkeys(g for g, _, _ in pairs))
    preds = list(dict.fromkeys(p for _, p, _ in pairs))
    counts = [[0] * len(preds) for _ in golds]
    for gold, pred, count in pairs:
        counts[golds.index(gold)][preds.index(pred)] = count
    fig = Figure(figsize=(2 + 0.55 * len(preds) + 4, 1.5 + 0.4 * len(golds) + 3), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Reds", aspect="auto")
    top = max(c for _, _, c in pairs)
    ax.set_xticks(range(len(preds)), preds, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(golds)), golds, fontsize=8)
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color="white" if count > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title("most confused function pairs", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.6)
    return fig


def latency_figure(latencies: list[float]) -> Figure:
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.hist(latencies, bins=min(40, max(5, len(latencies) // 5)), color="#4878a8")
    ax.set_xlabel("latency (ms, one utterance at a time)")
    ax.set_ylabel("utterances")
    ax.set_title(f"latency of {len(latencies)} timed utterances", fontsize=10)
    return fig


def reliability_figure(bins: list[dict[str, Any]], threshold: float | None) -> Figure:
    """Confidence against the exact rate of the calls in each bin (the diagonal: perfectly calibrated)."""
    shown = [b for b in bins if b["count"]]
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax, counts = fig.subplots(1, 2, width_ratios=(3, 2))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1)
    ax.plot([b["mean_confidence"] for b in shown], [b["exact_rate"] for b in shown], marker="o", color="#4878a8")
    if threshold is not None and 0 < threshold <= 1:
        ax.axvline(threshold, color="#c44e52", linewidth=1, label=f"act threshold {threshold:.3f}")
        ax.legend(loc="upper left", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="exact rate", title="reliability of the calls")
    counts.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins], width=0.09, color="#4878a8")
    counts.set(xlim=(0, 1), xlabel="confidence", ylabel="calls", title="calls per bin")
    return fig


def learning_curve_figure(points: list[dict[str, Any]]) -> Figure:
    points = sorted(points, key=lambda p: p["train_examples"])
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    for key in ("function_accuracy", "slot_f1", "exact_match"):
        shown = [p for p in points if p.get(key) is not None]
        if shown:
            ax.plot([p["train_examples"] for p in shown], [p[key] for p in shown], marker="o", label=key)
    ax.set_xlabel("training examples")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("learning curve", fontsize=10)
    return fig


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _sections(rows: list[dict[str, Any]], metrics: dict[str, Any], learning_curve: list[dict[str, Any]] | None) -> list[str]:
    scalars = [[k, _value(v)] for k, v in metrics.items() if k not in ("per_domain", "meta", "reliability", "slot_errors", "slot_f1_by_type")]
    parts = ["<h2>Metrics</h2>", _table(["metric", "value"], scalars),
             "<h2>Meta</h2>", _table(["key", "value"], [[k, str(v)] for k, v in metrics.get("meta", {}).items()])]
    domains = metrics.get("per_domain", {})
    if domains:
        parts += ["<h2>Per domain</h2>", _table(["domain", "n", "function_accuracy", "slot_f1", "exact_match"],
                                                [[d, str(m.get("n")), _value(m.get("function_accuracy")), _value(m.get("slot_f1")),
                                                  _value(m.get("exact_match"))] for d, m in domains.items()])]
    if metrics.get("slot_errors"):
        parts += ["<h2>Slot errors</h2>", _table(["kind", "count"], [[k, str(v)] for k, v in metrics["slot_errors"].items()])]
    if metrics.get("slot_f1_by_type"):
        parts += ["<h2>Slots by type</h2>", _table(["slot", "support", "precision", "recall", "F1"], [
            [slot, str(m["support"]), _value(m["precision"]), _value(m["recall"]), _value(m["f1"])]
            for slot, m in list(metrics["slot_f1_by_type"].items())[:SLOT_TYPES_SHOWN]])]
    parts.append("<h2>Per-function F1</h2>")
    scores = function_scores(rows)
    parts.append(_img(_png(f1_figure(scores)), "per-function F1") if scores else "<p>No utterances.</p>")
    parts.append("<h2>Most confused functions</h2>")
    pairs = confused_pairs(rows)
    if pairs:
        parts += [_img(_png(confusion_figure(pairs)), "most confused function pairs"),
                  _table(["gold", "predicted", "count"], [[g, p, str(c)] for g, p, c in pairs])]
    else:
        parts.append("<p>No function confused.</p>")
    parts.append("<h2>Latency</h2>")
    latencies = [float(r["latency_ms"]) for r in rows if r.get("latency_ms") is not None]
    parts.append(_img(_png(latency_figure(latencies)), "latency histogram") if latencies
                 else "<p>No utterance was timed on its own (all routed in batches): no latency histogram.</p>")
    if any(b["count"] for b in metrics.get("reliability", [])):
        parts += ["<h2>Confidence reliability</h2>",
                  _img(_png(reliability_figure(metrics["reliability"], metrics.get("act_threshold"))), "reliability diagram")]
    if learning_curve:
        parts += ["<h2>Learning curve</h2>", _img(_png(learning_curve_figure(learning_curve)), "learning curve")]
    return parts


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}img{max-width:100%}")


def write_html_report(eval_dir: Path, learning_curve: list[dict[str, Any]] | None = None) -> Path:
    """`learning_curve`: points {"train_examples": int, "function_accuracy": float, "slot_f1": float}."""
    eval_dir = Path(eval_dir)
    rows = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)  # "findfont: Failed to find font weight normal" for CJK fonts that are medium only
    try:
        with rc_context(_rc()):
            body = _sections(rows, metrics, learning_curve)
    finally:
        font_log.setLevel(level)
    title = f"tvcall evaluation: {metrics.get('meta', {}).get('run', eval_dir.parent.name)}"
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
            f"</head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")
    path = eval_dir / "report.html"
    write_atomic(path, page)
    return path
