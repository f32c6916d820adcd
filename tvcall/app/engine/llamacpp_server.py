"""llama.cpp's OpenAI-compatible server (llama-cpp-python's) on a GGUF export, as a child process: what the tests and
`scripts/llamacpp_bench.py` route through with `--backend remote --protocol llama.cpp`.

By hand: `python -m llama_cpp.server --model model.gguf --n_threads 2 --n_ctx 1024 --port 8000`.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

N_CTX = 1024  # the longest prompt (`MAX_PROMPT_TOKENS`, 384) and answer fit with room to spare


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_cpp_server(model: Path, threads: int | None = None, port: int | None = None, ready_s: float = 120.0) -> Iterator[str]:
    """Serve `model` until the block ends; yields the base URL (ending in /v1)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeError("serving GGUF needs llama-cpp-python: pip install -e '.[gguf]'")
    port = port or free_port()
    threads = threads or os.cpu_count() or 1  # llama-cpp-python's own default is half the cores
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--n_threads", str(threads),
               "--n_ctx", str(N_CTX), "--host", "127.0.0.1", "--port", str(port), "--verbose", "false"]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama.cpp's server on {model} exited ({server.returncode}): {log.read()[-2000:]}")
            try:
                if httpx.get(url + "/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp's server on {model} was not ready within {ready_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
