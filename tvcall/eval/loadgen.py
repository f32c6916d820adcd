"""Drive a running router from concurrent clients and report latency, throughput, errors and invalid calls.

Used by scripts/load_test.py and the load test in tests/. `server_process` starts the real
server (`tvcall serve`) as a subprocess on 127.0.0.1 and a free port; `drive` sends requests from client
threads, bounded both in time and in count, and checks every answer against the registry.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from pydantic import BaseModel

from tvcall.functions.registry import Registry
from tvcall.functions.validate import call_errors

COMMANDS = [
    "把音量调到20", "音量调高一点", "静音", "切换到HDMI 2", "打开爱奇艺", "暂停播放", "打开客厅的灯", "把空调调到26度",
    "霸王别姬的导演是谁", "明天北京天气怎么样", "换到中央五台", "关闭字幕",
    "turn the volume up", "switch to HDMI 1", "set the brightness to 70", "pause the movie", "what's the weather tomorrow",
    "turn off the bedroom light", "set a sleep timer for 30 minutes", "open Netflix", "mute the TV", "play the next episode",
]
RUNNING_RE = re.compile(r"Uvicorn running on http://([0-9.]+):(\d+)")


class LoadReport(BaseModel):
    clients: int
    seconds: float
    requests: int
    ok: int
    errors: int
    invalid_calls: int
    status_counts: dict[str, int]
    requests_per_s: float
    p50_ms: float
    p95_ms: float

    def line(self, label: str) -> str:
        return (f"{label}: {self.requests} requests in {self.seconds:.1f} s from {self.clients} clients → "
                f"{self.requests_per_s:.2f} req/s, p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, "
                f"{self.errors} errors, {self.invalid_calls} invalid calls, status {self.status_counts}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def drive(base_url: str, registry: Registry, clients: int, duration_s: float, max_requests: int,
          texts: list[str] | None = None, token: str | None = None, request_timeout_s: float = 60.0,
          answered: list[str] | None = None) -> LoadReport:
    """`clients` threads, each sending one request at a time until `duration_s` or `max_requests` in all;
    `answered` collects the ids of the requests answered 200."""
    texts = texts or COMMANDS
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    invalid = 0
    sent = 0
    deadline = time.monotonic() + duration_s

    def take_ticket() -> int | None:
        nonlocal sent
        with lock:
            if sent >= max_requests or time.monotonic() >= deadline:
                return None
            sent += 1
            return sent

    def client_loop() -> None:
        nonlocal invalid
        with httpx.Client(base_url=base_url, headers=headers, timeout=request_timeout_s) as client:
            while (ticket := take_ticket()) is not None:
                started = time.perf_counter()
                try:
                    response = client.post("/v1/route", json={"text": texts[ticket % len(texts)]})
                    status = str(response.status_code)
                    bad = response.status_code == 200 and bool(call_errors(registry, response.json().get("name"), response.json().get("arguments", {})))
                except httpx.HTTPError as exc:
                    status, bad = type(exc).__name__, False
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    invalid += bad
                    if status == "200":
                        latencies.append(elapsed)
                        if answered is not None:
                            answered.append(response.json()["id"])

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, name=f"load-client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    ok = statuses.get("200", 0)
    return LoadReport(
        clients=clients, seconds=seconds, requests=sum(statuses.values()), ok=ok, errors=sum(statuses.values()) - ok,
        invalid_calls=invalid, status_counts=statuses, requests_per_s=ok / seconds if seconds else 0.0,
        p50_ms=percentile(latencies, 0.5), p95_ms=percentile(latencies, 0.95),
    )


@contextmanager
def server_process(serve_args: list[str], start_timeout_s: float = 180.0, env: dict[str, str] | None = None,
                   started: list[subprocess.Popen[bytes]] | None = None) -> Iterator[str]:
    """Run `tvcall serve --host 127.0.0.1 --port 0 SERVE_ARGS…` in a subprocess; yield its base URL (`started`
    receives the process, for a caller that kills it)."""
    with tempfile.TemporaryDirectory(prefix="tvcall-serve-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            command = [sys.executable, "-m", "tvcall.cli", "serve", "--host", "127.0.0.1", "--port", "0", *serve_args]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
            if started is not None:
                started.append(process)
            try:
                yield _wait_until_running(process, log_path, start_timeout_s)
            finally:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_until_running(process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = RUNNING_RE.search(log_path.read_text(errors="replace"))
        if match:
            return f"http://{match.group(1)}:{match.group(2)}"
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"the server did not start in {timeout_s:.0f} s:\n{log_path.read_text(errors='replace')[-2000:]}")
