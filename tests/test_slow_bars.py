"""The end-to-end issue's bars, measured by the real `make train eval` flow (about 35 minutes on 2 cores)."""

import json
import subprocess
import time

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_make_train_eval_meets_the_accuracy_bars(tmp_path):
    started = time.monotonic()
    runs = tmp_path / "runs"
    out = subprocess.run(["make", "-C", str(REPO), "train", "eval", f"DATA={runs}/data", f"RUN={runs}/cpu-default"],
                         capture_output=True, text=True, check=True).stdout
    minutes = (time.monotonic() - started) / 60
    metrics = json.loads(open(out.strip().splitlines()[-1]).read())
    print(json.dumps({k: metrics[k] for k in ("function_accuracy", "slot_f1", "exact_match", "json_valid_rate")}), f"{minutes:.1f} min")
    assert metrics["function_accuracy"] >= 0.90
    assert metrics["slot_f1"] >= 0.85
    assert metrics["exact_match"] >= 0.80
    assert metrics["json_valid_rate"] == 1.0
    assert minutes <= 45
