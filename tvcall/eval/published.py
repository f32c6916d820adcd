"""Published results on the public benchmarks, printed beside ours in a benchmark run's report (fractions, test sets).

JointBERT: Chen, Zhuo and Wang 2019, "BERT for Joint Intent Classification and Slot Filling", table 2 (intent
accuracy, slot F1, sentence-level semantic frame accuracy). CM-Net: Liu et al. 2019, "CM-Net: A Novel
Collaborative Memory Network for Spoken Language Understanding", table on CAIS (intent accuracy, slot F1).
"""

from __future__ import annotations

from typing import Any

PUBLISHED: dict[str, list[tuple[str, dict[str, float]]]] = {
    "snips": [("JointBERT", {"function_accuracy": 0.986, "slot_f1": 0.970, "exact_match": 0.928})],
    "atis": [("JointBERT", {"function_accuracy": 0.975, "slot_f1": 0.961, "exact_match": 0.882})],
    "cais": [("CM-Net", {"function_accuracy": 0.9456, "slot_f1": 0.8616})],
}
COLUMNS = (("function_accuracy", "intent acc"), ("slot_f1", "slot F1"), ("exact_match", "frame acc"))


def published_section(benchmark: str | None, metrics: dict[str, Any]) -> list[str]:
    """Markdown lines: ours and the published systems on `benchmark` (none known: no lines)."""
    if benchmark not in PUBLISHED:
        return []
    lines = ["", "## Published results on this test set", "", "| system | " + " | ".join(c for _, c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    rows = [("tvcall (this run)", metrics), *PUBLISHED[benchmark]]
    for system, values in rows:
        lines.append(f"| {system} | " + " | ".join(f"{values[k]:.3f}" if k in values else "–" for k, _ in COLUMNS) + " |")
    return lines
