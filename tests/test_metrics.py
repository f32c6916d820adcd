import pytest

from tvcall.data.record import Record, Span
from tvcall.eval.metrics import Prediction, score


def _rec(text, function, arguments, spans):
    return Record(id="t", text=text, lang="en" if text.isascii() else "zh", function=function, arguments=arguments,
                  spans=[Span(slot=s, start=a, end=b) for s, a, b in spans])


def _pred(name, arguments):
    raw = '{"name": null}' if name is None else '{"name": "x", "arguments": {}}'
    return Prediction(name=name, arguments=arguments, raw=raw, valid=True, latency_ms=10.0)


def test_scores_function_slots_exact_match_and_out_of_scope(registry):
    records = [
        _rec("把亮度调到二十", "picture.brightness.set", {"value": 20}, [("value", 5, 7)]),
        _rec("who directed Inception", "media.movie.query_director", {"title": "Inception"}, [("title", 13, 22)]),
        _rec("write me a poem", None, {}, []),
        _rec("set brightness to 30", "picture.brightness.set", {"value": 30}, [("value", 18, 20)]),
    ]
    preds = [
        _pred("picture.brightness.set", {"value": 20}),       # right: value normalised, gold span reused
        _pred("media.movie.query_director", {"title": "Inception"}),
        _pred(None, {}),
        _pred("picture.brightness.set", {"value": 31}),       # wrong value, not in the text: FP and FN
    ]
    m = score(records, preds, registry)
    assert m["function_accuracy"] == 1.0
    assert m["exact_match"] == 0.75
    assert m["slot_precision"] == pytest.approx(2 / 3) and m["slot_recall"] == pytest.approx(2 / 3)
    assert m["oos_precision"] == 1.0 and m["oos_recall"] == 1.0
    assert m["json_valid_rate"] == 1.0 and m["latency_ms_p50"] == 10.0


def test_wrong_value_found_elsewhere_in_text_is_a_located_false_positive(registry):
    records = [_rec("play Inception after Up", "media.movie.query_director", {"title": "Inception"}, [("title", 5, 14)])]
    m = score(records, [_pred("media.movie.query_director", {"title": "Up"})], registry)
    assert m["slot_f1"] == 0.0 and m["function_accuracy"] == 1.0 and m["exact_match"] == 0.0


def test_a_benchmark_report_prints_the_published_results_beside_ours():
    from tvcall.cli import benchmark_meta
    from tvcall.eval.runner import report_markdown

    manifest = {"import": {"name": "atis"}, "unknown_function": "atis.unseen.intent", "unseen": {"test": {"day_name": 2, "x": 1}}}
    meta = benchmark_meta(manifest, "test")
    assert meta["benchmark"] == "atis" and meta["unseen_intents"].startswith("3 test utterances of 2 intents")
    metrics = {"function_accuracy": 0.9, "slot_f1": 0.8, "exact_match": 0.7, "json_valid_rate": 1.0, "schema_valid_rate": 1.0,
               "oos_precision": 0.0, "oos_recall": 0.0, "latency_ms_p50": 10.0, "latency_ms_p95": 20.0}
    report = report_markdown(metrics, {}, meta)
    assert "| tvcall (this run) | 0.900 | 0.800 | 0.700 |" in report and "| JointBERT | 0.975 | 0.961 | 0.882 |" in report
    assert "## Published" not in report_markdown(metrics, {}, {"run": "r"})


def test_out_of_scope_precision_and_recall_are_undefined_not_zero_without_out_of_scope_utterances(registry):
    records = [_rec("play Inception", "media.movie.query_director", {"title": "Inception"}, [("title", 5, 14)])]
    m = score(records, [_pred("media.movie.query_director", {"title": "Inception"})], registry)
    assert m["oos_precision"] is None and m["oos_recall"] is None
    m = score(records, [_pred(None, {})], registry)
    assert m["oos_precision"] == 0.0 and m["oos_recall"] is None


def test_slot_errors_are_sorted_into_boundary_type_missed_and_extra():
    from tvcall.eval.metrics import slot_errors

    gold = ["B-title", "I-title", "I-title", "O", "B-singer", "I-singer", "O", "B-year", "O", "O"]
    pred = ["O", "B-title", "I-title", "O", "B-song", "I-song", "O", "O", "O", "B-app"]
    assert slot_errors(gold, pred) == {"correct": 0, "boundary": 1, "type": 1, "boundary_and_type": 0, "missed": 1, "extra": 1}
    assert slot_errors(gold, gold)["correct"] == 3 and sum(slot_errors(gold, gold).values()) == 3
    shifted = ["O", "B-song", "I-song", "I-song", "O", "O", "O", "O", "O", "O"]
    assert slot_errors(gold[:4] + ["O"] * 6, shifted)["boundary_and_type"] == 1


def test_the_report_shows_slots_by_type_and_errors_by_kind(registry):
    from tvcall.eval.metrics import slot_breakdown
    from tvcall.eval.runner import report_markdown

    text = "who directed Inception"
    records = [_rec(text, "media.movie.query_director", {"title": "Inception"}, [("title", 13, 22)]),
               _rec("把亮度调到二十", "picture.brightness.set", {"value": 20}, [("value", 5, 7)])]
    preds = [_pred("media.movie.query_director", {"title": "Incep"}), _pred("picture.brightness.set", {"value": 20})]
    breakdown = slot_breakdown(records, preds, registry)
    assert breakdown["slot_errors"]["boundary"] == 1 and breakdown["slot_errors"]["correct"] == 1
    assert breakdown["slot_f1_by_type"]["value"]["f1"] == 1.0 and breakdown["slot_f1_by_type"]["title"]["f1"] == 0.0
    report = report_markdown(breakdown, {}, {})
    assert "## Slot errors" in report and "| boundary | 1 | 1.000 |" in report and "| title | 1 | 0.000 | 0.000 | 0.000 |" in report
