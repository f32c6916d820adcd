"""scripts/gpu_check.sh runs its CPU-safe parts here: the tiny stand-in, 2 QLoRA and 2 LoRA steps, constrained decoding."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [m["method"] for m in report["methods"]] == ["qlora", "lora"]
    for method in report["methods"]:
        assert method["steps"] == 2 and method["decode"]["valid"] == method["decode"]["n"] > 0
        assert abs(method["param_bytes_gb"] - method["plan"]["weights_gb"]) <= 0.01 * method["plan"]["weights_gb"] + 0.001
    assert "seed static (7B)" in (tmp_path / "out" / "gpu_check.log").read_text()
