"""Every stage on real small data: synth → a few real LoRA steps → constrained eval with the trained adapter."""

import json
import subprocess
import sys

import pytest

from tvcall.cli import main
from tvcall.run import ADAPTER_DIR, CONFIG_FILE


def _tvcall(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tvcall.cli", *args], cwd=cwd, capture_output=True, text=True, check=True)


def test_synth_train_eval_route_end_to_end(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    _tvcall("data", "synth", "--out", str(data), "--train-size", "64", "--dev-size", "8", "--test-size", "12", cwd=tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["files"]["train"]["records"] - manifest["files"]["train"]["followups"] == 64 and manifest["version"]
    assert manifest["files"]["followup-test"]["records"] == 8

    _tvcall("train", "--data", str(data), "--out", str(run), "--set", "num_train_examples=16",
            "--set", "per_device_train_batch_size=8", "--set", "logging_steps=1",
            "--set", "checkpoint_examples=[8]", cwd=tmp_path)
    assert (run / ADAPTER_DIR / "adapter_config.json").exists()
    trained = (run / ADAPTER_DIR / "adapter_model.safetensors").read_bytes()
    assert main(["train", "--data", str(data), "--out", str(run)]) == 2  # a trained run is not trained over by accident
    assert "--overwrite" in capsys.readouterr().err and (run / ADAPTER_DIR / "adapter_model.safetensors").read_bytes() == trained
    config = (run / CONFIG_FILE).read_text()
    assert f"data_version: {manifest['version']}" in config and "steps: 2" in config
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in entry for entry in log)

    checkpoint = run / "checkpoints" / "examples-000008"
    assert (checkpoint / ADAPTER_DIR / "adapter_config.json").exists() and "train_examples_seen: 8" in (checkpoint / CONFIG_FILE).read_text()

    out = _tvcall("eval", "--run", str(run), "--data", str(data), "--threads", "2", "--curve", cwd=tmp_path).stdout
    metrics_path = out.strip().splitlines()[-1]
    assert metrics_path.endswith("metrics.json")
    metrics = json.loads(open(metrics_path).read())
    for key in ("function_accuracy", "slot_f1", "exact_match", "json_valid_rate", "oos_precision", "oos_recall",
                "latency_ms_p50", "latency_ms_p95"):
        assert key in metrics
    assert metrics["json_valid_rate"] == 1.0 and metrics["schema_valid_rate"] == 1.0 and metrics["n"] == 12
    assert (run / "eval-test" / "report.md").read_text().startswith("# tvcall evaluation")
    curve = json.loads((run / "eval-test" / "learning_curve.json").read_text())
    assert [p["train_examples"] for p in curve] == [8, 16]  # the checkpoint, then the run
    assert json.loads((checkpoint / "eval-test" / "metrics.json").read_text())["n"] == 12
    assert "Learning curve" in (run / "eval-test" / "report.html").read_text()

    wide = _tvcall("eval", "--run", str(run), "--data", str(data), "--registry", "full", "--limit", "4", cwd=tmp_path).stdout
    wide_metrics = json.loads(open(wide.strip().splitlines()[-1]).read())
    assert wide_metrics["meta"]["registry_functions"] >= 3000 and wide_metrics["meta"]["registry"] == "full"
    assert wide_metrics["n"] == 4 and wide_metrics["schema_valid_rate"] == 1.0
    assert (run / "eval-test-full" / "metrics.json").exists() and metrics_path.endswith("eval-test/metrics.json")

    routed = json.loads(_tvcall("route", "--run", str(run), "把音量调到20", cwd=tmp_path).stdout)
    assert routed["name"] is None or "arguments" in routed


@pytest.mark.parametrize("command", ["registry", "data", "train", "eval", "route"])
def test_every_stage_has_help(command):
    out = subprocess.run([sys.executable, "-m", "tvcall.cli", command, "--help"], capture_output=True, text=True, check=True)
    assert "usage: tvcall" in out.stdout
