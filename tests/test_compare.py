from __future__ import annotations

import json
from pathlib import Path

import pytest

from tvcall.cli import main
from tvcall.data.record import Record, Span, write_jsonl
from tvcall.errors import InputError
from tvcall.eval.compare import compare_runs, format_table
from tvcall.eval.metrics import Prediction, score

UP, DOWN = "sound.volume.increase", "sound.volume.decrease"


def _record(i: int) -> Record:
    step = i % 9 + 1
    text = f"turn the volume up by {step}"
    if i % 10 == 0:
        return Record(id=f"u{i:03d}", text="what a nice day", lang="en", function=None)
    return Record(id=f"u{i:03d}", text=text, lang="en", function=UP, arguments={"step": step}, spans=[Span(slot="step", start=len(text) - 1, end=len(text))])


RECORDS = [_record(i) for i in range(120)]


def _right(record: Record) -> dict:
    return {"name": record.function, "arguments": record.arguments}


def _wrong(record: Record) -> dict:
    if record.function is None:
        return {"name": UP, "arguments": {"step": 50}}
    return {"name": DOWN, "arguments": {"step": record.arguments["step"] % 9 + 2}}


def _run(root: Path, name: str, preds: list[dict], latency: float | None = None) -> Path:
    run = root / name
    lines = [json.dumps({"id": r.id, "text": r.text, "gold": _right(r), "pred": p, "raw": json.dumps(p), "confidence": 0.5,
                         "latency_ms": latency}) for r, p in zip(RECORDS, preds, strict=True)]
    (run / "eval-test").mkdir(parents=True)
    (run / "eval-test" / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    write_jsonl(folder / "test.jsonl", RECORDS)
    return folder


def test_identical_runs_have_no_delta(tmp_path: Path, data: Path) -> None:
    preds = [_right(r) if i % 3 else _wrong(r) for i, r in enumerate(RECORDS)]
    a, b = _run(tmp_path, "a", preds), _run(tmp_path, "b", preds)
    comparison = compare_runs(a, b, samples=300, data=data)
    assert comparison.n == len(RECORDS)
    for m in comparison.metrics:
        assert m.delta == 0 and m.p_value == 1.0 and not m.significant
        assert m.ci_low == m.ci_high == 0
    assert "*" not in format_table(comparison).split("\n\n")[1]
    assert comparison.same_call == 1.0


def test_same_call_counts_the_utterances_both_answered_alike(tmp_path: Path, data: Path) -> None:
    a = _run(tmp_path, "a", [_right(r) for r in RECORDS])
    b = _run(tmp_path, "b", [_right(r) if i % 4 else _wrong(r) for i, r in enumerate(RECORDS)])
    comparison = compare_runs(a, b, samples=100, data=data)
    assert comparison.same_call == pytest.approx(sum(1 for i in range(len(RECORDS)) if i % 4) / len(RECORDS))
    assert f"Same call (name and arguments) from A and B: {comparison.same_call:.3f}" in format_table(comparison)


def test_clearly_better_run_is_marked(tmp_path: Path, data: Path) -> None:
    a = _run(tmp_path, "a", [_right(r) if i % 2 else _wrong(r) for i, r in enumerate(RECORDS)], latency=300.0)
    b = _run(tmp_path, "b", [_right(r) if i % 7 else _wrong(r) for i, r in enumerate(RECORDS)], latency=200.0)
    comparison = compare_runs(a, b, samples=500, data=data)
    by_name = {m.name: m for m in comparison.metrics}
    assert set(by_name) == {"function_accuracy", "exact_match", "slot_f1"}
    for m in by_name.values():
        assert m.delta > 0 and m.significant and 0 < m.ci_low <= m.delta <= m.ci_high
    table = format_table(comparison)
    assert "| function_accuracy |" in table and "| * |" in table
    assert "| latency_ms_p50 | 300.0 | 200.0 | -100.0 |" in table


def test_values_match_score(tmp_path: Path, data: Path, registry) -> None:
    """The recomputed metrics are those `tvcall eval` wrote: seqeval's slot F1 over the same BIO tags."""
    preds = [_right(r) if i % 4 else _wrong(r) for i, r in enumerate(RECORDS)]
    preds[5] = {"name": UP, "arguments": {"step": 77}}  # a value not in the text: an extra false positive
    a = _run(tmp_path, "a", preds)
    expected = score(RECORDS, [Prediction(p["name"], p["arguments"], "", True, None) for p in preds], registry)
    for located in (data, tmp_path / "missing"):  # annotated spans, and spans located from the gold values
        comparison = compare_runs(a, a, samples=50, data=located)
        values = {m.name: m.a for m in comparison.metrics}
        assert values == pytest.approx({k: expected[k] for k in values})


def test_mismatched_ids_name_the_files(tmp_path: Path, data: Path) -> None:
    a = _run(tmp_path, "a", [_right(r) for r in RECORDS])
    b = _run(tmp_path, "b", [_right(r) for r in RECORDS])
    path = b / "eval-test" / "predictions.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(InputError, match="only in") as error:
        compare_runs(a, b, samples=10, data=data)
    assert str(path) in str(error.value) and str(a / "eval-test" / "predictions.jsonl") in str(error.value)
    with pytest.raises(InputError, match="missing"):
        compare_runs(a, tmp_path / "nowhere", samples=10, data=data)


def test_cli_eval_compare(tmp_path: Path, data: Path, capsys) -> None:
    a = _run(tmp_path, "a", [_right(r) if i % 2 else _wrong(r) for i, r in enumerate(RECORDS)])
    b = _run(tmp_path, "b", [_right(r) for r in RECORDS])
    assert main(["eval", "compare", str(a), str(b), "--samples", "200", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"A: {a}" in out and "| exact_match |" in out and "95% CI" in out
    assert main(["eval", "compare", str(a), str(tmp_path / "nowhere")]) == 2
    assert "tvcall: error:" in capsys.readouterr().err


def test_cli_eval_help_still_works(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code == 0
    assert "--run" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "compare", "--help"])
    assert exit_.value.code == 0
    assert "run_a" in capsys.readouterr().out


def test_compare_adds_the_traffic_b_also_trained_on(tmp_path: Path, data: Path, capsys) -> None:
    """B retrained with exported traffic (`extra_data_dirs`): the compare shows the original split, then the traffic's."""
    import shutil

    from tvcall.run import RunConfig, RunDir, TrainSummary

    traffic = tmp_path / "traffic-export"
    write_jsonl(traffic / "test.jsonl", RECORDS)
    a = _run(tmp_path, "a", [_right(r) for r in RECORDS])
    b = _run(tmp_path, "b", [_right(r) for r in RECORDS])
    RunDir(a).write(RunConfig(data_dir=str(data)), TrainSummary())
    RunDir(b).write(RunConfig(data_dir=str(data), extra_data_dirs=[str(traffic)]), TrainSummary())
    assert main(["eval", "compare", str(a), str(b), "--samples", "100"]) == 0
    assert f"`tvcall eval --run RUN --data {traffic}` for both runs" in capsys.readouterr().out

    shutil.copytree(a / "eval-test", RunDir(a).eval_dir("test", RunDir(a).data_qualifier(traffic)))
    _run(tmp_path / "tmp", "b", [_right(r) if i % 2 else _wrong(r) for i, r in enumerate(RECORDS)])
    shutil.copytree(tmp_path / "tmp" / "b" / "eval-test", b / "eval-test-on-traffic-export")
    assert main(["eval", "compare", str(a), str(b), "--samples", "100"]) == 0
    out = capsys.readouterr().out
    assert out.count("| exact_match |") == 2 and f"on the test split of {traffic}" in out
    assert "| exact_match | 1.0000 | 1.0000 | +0.0000 |" in out and "| exact_match | 1.0000 | 0.5000 | -0.5000 |" in out


def test_two_eval_folders_of_one_run_compare_like_two_runs(tmp_path: Path, data: Path, capsys) -> None:
    run = _run(tmp_path, "a", [_right(r) if i % 2 else _wrong(r) for i, r in enumerate(RECORDS)])
    ablated = run / "eval-test-catalogue-none"
    ablated.mkdir()
    (ablated / "predictions.jsonl").write_text((run / "eval-test" / "predictions.jsonl").read_text())
    (run / "eval-test" / "predictions.jsonl").write_text("".join(
        json.dumps({"id": r.id, "text": r.text, "gold": _right(r), "pred": _right(r), "raw": "", "confidence": 0.5,
                    "latency_ms": None}) + "\n" for r in RECORDS))
    comparison = compare_runs(ablated, run / "eval-test", samples=200, data=data)
    assert next(m for m in comparison.metrics if m.name == "exact_match").delta == pytest.approx(0.5)
    assert main(["eval", "compare", str(ablated), str(run / "eval-test"), "--samples", "100", "--data", str(data)]) == 0
    assert "| exact_match |" in capsys.readouterr().out
