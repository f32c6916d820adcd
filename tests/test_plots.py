from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from tvcall.eval.plots import confused_pairs, function_scores, write_html_report

PNG = b"\x89PNG"


def _eval_dir(tmp_path: Path, latency: bool) -> Path:
    rows = []
    for i in range(40):
        gold = ["sound.volume.increase", "sound.volume.decrease", "channel.tv.next", None][i % 4]
        pred = gold if i % 5 else "sound.volume.decrease"
        rows.append({"id": f"u{i}", "text": f"声音大一点 {i}", "gold": {"name": gold, "arguments": {}}, "pred": {"name": pred, "arguments": {}},
                     "raw": "{}", "confidence": 0.9, "latency_ms": 100.0 + i if latency and i % 2 else None})
    metrics = {"n": 40, "function_accuracy": 0.8, "slot_f1": 1.0, "exact_match": 0.8, "json_valid_rate": 1.0, "schema_valid_rate": 1.0,
               "oos_precision": 1.0, "oos_recall": 0.5, "latency_ms_p50": 120.0 if latency else None, "latency_ms_p95": None,
               "per_domain": {"sound": {"n": 20, "function_accuracy": 0.9, "slot_f1": 1.0, "exact_match": 0.9}},
               "meta": {"run": "runs/toy", "split": "test", "data_version": "abc123"}}
    folder = tmp_path / "eval-test"
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)]


def test_html_report_has_plots_and_metrics(tmp_path: Path) -> None:
    folder = _eval_dir(tmp_path, latency=True)
    curve = [{"train_examples": 1000, "function_accuracy": 0.5, "slot_f1": 0.4}, {"train_examples": 4000, "function_accuracy": 0.8, "slot_f1": 0.7}]
    path = write_html_report(folder, learning_curve=curve)
    assert path == folder / "report.html"
    page = path.read_text()
    images = _images(page)
    assert len(images) == 4 and all(image.startswith(PNG) for image in images)  # F1, confusion, latency, learning curve
    for name in ("function_accuracy", "slot_f1", "exact_match", "oos_recall", "latency_ms_p50", "data_version", "abc123", "Learning curve"):
        assert name in page


def test_html_report_without_timings_or_curve(tmp_path: Path) -> None:
    page = write_html_report(_eval_dir(tmp_path, latency=False)).read_text()
    assert len(_images(page)) == 2
    assert "no latency histogram" in page and "Learning curve" not in page


def test_function_scores_and_pairs() -> None:
    rows = [{"gold": {"name": g}, "pred": {"name": p}} for g, p in [("a", "a"), ("a", "b"), ("b", "b"), (None, "b"), ("a", "b")]]
    scores = {s.name: (s.support, round(s.f1, 4)) for s in function_scores(rows)}
    assert scores == {"a": (3, 0.5), "b": (1, 0.4), "(no function)": (1, 0.0)}
    assert confused_pairs(rows) == [("a", "b", 2), ("(no function)", "b", 1)]
