"""The `tvcall` command as the measurement scripts run it: one stage in a subprocess, its output returned."""

from __future__ import annotations

import subprocess
import sys


def tvcall(*args: str) -> str:
    print("$ tvcall " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "tvcall.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tvcall {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout
