"""Prometheus metrics of one router app (its own registry, so apps in one process do not collide)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tvcall.app.engine.base import RouteResult

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tvcall_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("tvcall_request_latency_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.route_latency = Histogram("tvcall_route_latency_seconds", "engine time per routed text", buckets=LATENCY_BUCKETS, registry=r)
        self.decode_tokens = Counter("tvcall_decode_tokens", "answer tokens decoded", ["kind"], registry=r)
        self.model_calls = Counter("tvcall_model_calls", "model forward calls while decoding", registry=r)
        self.calls = Counter("tvcall_routed_calls", "routed texts by outcome", ["outcome"], registry=r)
        self.errors = Counter("tvcall_errors", "errors by kind", ["kind"], registry=r)
        self.executions = Counter("tvcall_executions", "calls executed", ["domain", "target"], registry=r)
        self.confirmations = Counter("tvcall_confirmations", "risky calls held or confirmed", ["event"], registry=r)
        self.clarifications = Counter("tvcall_clarifications", "execute asked, confidence under the act threshold", registry=r)
        self.batch_size = Histogram("tvcall_batch_size", "texts per engine batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_latency = Histogram("tvcall_batch_latency_seconds", "engine time per batch", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("tvcall_queue_depth", "requests waiting for the engine", registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def observe_route(self, result: RouteResult) -> None:
        self.route_latency.observe(result.latency_ms / 1000)
        for kind in ("decided_tokens", "forced_tokens"):
            self.decode_tokens.labels(kind.removesuffix("_tokens")).inc(result.stats.get(kind, 0))
        self.model_calls.inc(result.stats.get("model_calls", 0))
        self.calls.labels("invalid" if result.errors else "none" if result.name is None else "call").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: count and time every request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
