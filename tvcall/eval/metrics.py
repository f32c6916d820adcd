"""Metrics over (gold record, predicted call) pairs: function accuracy, seqeval slot P/R/F1, exact match, validity,
out-of-scope precision/recall, latency percentiles.

Slot F1 is entity level: each argument becomes a character span labelled with its slot. Gold spans come from
the record; a predicted value equal to the gold value takes the gold span, any other is located in the text
through its surface forms (digits, numerals, enum phrases). A predicted value that cannot be located is still
a false positive: it is tagged on an extra position where the gold sequence has no entity.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from tvcall.data.followups import followup_kind
from tvcall.data.grounding import value_surfaces
from tvcall.data.record import Record
from tvcall.functions.registry import Registry


@dataclass
class Prediction:
    name: str | None
    arguments: dict[str, Any]
    raw: str
    valid: bool  # fits the registry's schema (after decoding)
    latency_ms: float | None  # None: routed in a batch, not timed on its own
    confidence: float = 1.0


def _tag(tags: list[str], start: int, end: int, slot: str) -> bool:
    if any(t != "O" for t in tags[start:end]):
        return False
    tags[start] = f"B-{slot}"
    for i in range(start + 1, end):
        tags[i] = f"I-{slot}"
    return True


def bio_tags(record: Record, pred: Prediction, registry: Registry) -> tuple[list[str], list[str]]:
    gold = ["O"] * len(record.text)
    for span in record.spans:
        _tag(gold, span.start, span.end, span.slot)
    predicted = ["O"] * len(record.text)
    lowered = record.text.lower()
    extra = 0
    schema_props = registry[pred.name].properties if pred.name in registry else {}
    for slot, value in pred.arguments.items():
        gold_span = next((s for s in record.spans if s.slot == slot), None)
        if gold_span and record.arguments.get(slot) == value and _tag(predicted, gold_span.start, gold_span.end, slot):
            continue
        placed = False
        for form in value_surfaces(value, schema_props.get(slot, {}), record.lang):
            start = lowered.find(form.lower()) if form else -1
            if start >= 0 and _tag(predicted, start, start + len(form), slot):
                placed = True
                break
        if not placed:
            predicted.append(f"B-{slot}")
            extra += 1
    gold += ["O"] * extra
    return gold, predicted


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _ratio_or_none(numerator: int, denominator: int) -> float | None:
    """None where the ratio is undefined, as a set without out-of-scope utterances has no out-of-scope recall: a 0
    there would read as a failure in the report."""
    return numerator / denominator if denominator else None


def json_valid(raw: str) -> bool:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return False
    return isinstance(value, dict) and "name" in value


def exact(record: Record, pred: Prediction) -> bool:
    return pred.name == record.function and (pred.name is None or pred.arguments == record.arguments)


def score(records: list[Record], preds: list[Prediction], registry: Registry) -> dict[str, Any]:
    if len(records) != len(preds):
        raise ValueError(f"{len(records)} records but {len(preds)} predictions")
    gold_tags, pred_tags = zip(*(bio_tags(r, p, registry) for r, p in zip(records, preds, strict=True)), strict=True) if records else ((), ())
    pred_oos = [p.name is None for p in preds]
    gold_oos = [r.function is None for r in records]
    both = sum(p and g for p, g in zip(pred_oos, gold_oos, strict=True))
    latencies = [p.latency_ms for p in preds if p.latency_ms is not None]  # None: not timed on its own
    has_entities = any(t != "O" for seq in [*gold_tags, *pred_tags] for t in seq)
    return {
        "n": len(records),
        "function_accuracy": _ratio(sum(p.name == r.function for r, p in zip(records, preds, strict=True)), len(records)),
        "slot_precision": precision_score(list(gold_tags), list(pred_tags), zero_division=0) if has_entities else 1.0,
        "slot_recall": recall_score(list(gold_tags), list(pred_tags), zero_division=0) if has_entities else 1.0,
        "slot_f1": f1_score(list(gold_tags), list(pred_tags), zero_division=0) if has_entities else 1.0,
        "exact_match": _ratio(sum(exact(r, p) for r, p in zip(records, preds, strict=True)), len(records)),
        "json_valid_rate": _ratio(sum(json_valid(p.raw) for p in preds), len(preds)),
        "schema_valid_rate": _ratio(sum(p.valid for p in preds), len(preds)),
        "oos_precision": _ratio_or_none(both, sum(pred_oos)),
        "oos_recall": _ratio_or_none(both, sum(gold_oos)),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "latency_n": len(latencies),
    }


def per_domain(records: list[Record], preds: list[Prediction], registry: Registry) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[record.function.split(".")[0] if record.function else "out_of_scope"].append(index)
    return {
        domain: score([records[i] for i in idx], [preds[i] for i in idx], registry)
        for domain, idx in sorted(groups.items())
    }


def per_followup_kind(records: list[Record], preds: list[Prediction], registry: Registry) -> dict[str, dict[str, Any]]:
    """Scores by follow-up kind (`tvcall.data.followups.followup_kind`); empty for a split without follow-ups."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        if (kind := followup_kind(record)) is not None:
            groups[kind].append(index)
    return {kind: score([records[i] for i in idx], [preds[i] for i in idx], registry) for kind, idx in sorted(groups.items())}


SLOT_ERROR_KINDS = ("correct", "boundary", "type", "boundary_and_type", "missed", "extra")


def _overlap(a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
    return a[1] <= b[2] and b[1] <= a[2]  # seqeval's entity ends are inclusive


def slot_errors(gold: list[str], predicted: list[str]) -> dict[str, int]:
    """One utterance's entities sorted into kinds: each gold and each predicted entity counts once. `boundary`: the
    right slot over an overlapping but different span; `type`: the same span under another slot; both: overlapping,
    neither the span nor the slot right; `missed`/`extra`: no overlapping entity on the other side."""
    counts = dict.fromkeys(SLOT_ERROR_KINDS, 0)
    gold_left, pred_left = list(get_entities(gold)), list(get_entities(predicted))
    for entity in list(gold_left):
        if entity in pred_left:
            gold_left.remove(entity)
            pred_left.remove(entity)
            counts["correct"] += 1
    for entity in list(gold_left):
        match = next((p for p in pred_left if _overlap(entity, p)), None)
        if match is None:
            continue
        same_span, same_type = match[1:] == entity[1:], match[0] == entity[0]
        counts["type" if same_span else "boundary" if same_type else "boundary_and_type"] += 1
        gold_left.remove(entity)
        pred_left.remove(match)
    counts["missed"] += len(gold_left)
    counts["extra"] += len(pred_left)
    return counts


def slot_breakdown(records: list[Record], preds: list[Prediction], registry: Registry) -> dict[str, Any]:
    """Slot P/R/F1 by slot type, and every slot error sorted by kind (`slot_errors`), over a split."""
    tags = [bio_tags(r, p, registry) for r, p in zip(records, preds, strict=True)]
    errors = dict.fromkeys(SLOT_ERROR_KINDS, 0)
    for gold, predicted in tags:
        for kind, count in slot_errors(gold, predicted).items():
            errors[kind] += count
    golds, predicted = [g for g, _ in tags], [p for _, p in tags]
    has_entities = any(t != "O" for seq in [*golds, *predicted] for t in seq)
    report = classification_report(golds, predicted, output_dict=True, zero_division=0) if has_entities else {}
    by_type = {slot: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"], "support": int(v["support"])}
               for slot, v in sorted(report.items(), key=lambda item: -item[1]["support"]) if not slot.endswith(" avg")}
    return {"slot_errors": errors, "slot_f1_by_type": by_type}
