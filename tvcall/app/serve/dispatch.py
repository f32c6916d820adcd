"""Running a routed call: on the simulated TV, or forwarded to a webhook configured for its domain.

Risky functions (`risk: confirm`) are never run straight from a route request: the call is held under a
random single-use token that expires, and only `confirm(token)` runs it.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx

from tvcall.functions.registry import Registry
from tvcall.functions.tv import SimulatedTV

TV_TARGET = "tv"
WEBHOOK_TARGET = "webhook"


class WebhookError(RuntimeError):
    pass


def parse_webhooks(items: list[str], registry: Registry) -> dict[str, str]:
    """`DOMAIN=URL` strings (from the command line) → {domain: url}; http(s) only, known domains only."""
    webhooks: dict[str, str] = {}
    for item in items:
        domain, sep, url = item.partition("=")
        if not sep or domain not in registry.domains:
            raise ValueError(f"webhook {item!r}: expected DOMAIN=URL with DOMAIN one of {sorted(registry.domains)}")
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise ValueError(f"webhook for {domain}: {url!r} is not an http(s) URL")
        webhooks[domain] = url
    return webhooks


Call = tuple[str, dict[str, Any]]  # (name, arguments)


@dataclass
class PendingCall:
    calls: list[Call]  # one call, or a compound command's calls held together, in order
    expires_at: float
    request_ids: list[str | None] = field(default_factory=list)  # each call's answered request (the traffic log
                                                                 # records its outcome), when known

    @property
    def name(self) -> str:
        return self.calls[0][0]

    @property
    def arguments(self) -> dict[str, Any]:
        return self.calls[0][1]


class Confirmations:
    """Risky calls waiting for a confirmation: random tokens, single use, expiring, bounded in number."""

    def __init__(self, ttl_s: float = 120.0, max_pending: int = 256) -> None:
        self.ttl_s, self.max_pending = ttl_s, max_pending
        self._pending: OrderedDict[str, PendingCall] = OrderedDict()

    def hold(self, calls: list[Call], request_ids: list[str | None] | None = None) -> str:
        self._expire()
        while len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
        token = secrets.token_urlsafe(24)
        self._pending[token] = PendingCall([(n, dict(a)) for n, a in calls], time.monotonic() + self.ttl_s,
                                           list(request_ids or []))
        return token

    def take(self, token: str) -> PendingCall | None:
        self._expire()
        return self._pending.pop(token, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [t for t, call in self._pending.items() if call.expires_at <= now]:
            del self._pending[token]


class Dispatcher:
    def __init__(self, tv: SimulatedTV, webhooks: dict[str, str] | None = None, timeout_s: float = 5.0) -> None:
        self.tv, self.webhooks, self.timeout_s = tv, dict(webhooks or {}), timeout_s

    def target(self, name: str) -> str:
        return WEBHOOK_TARGET if name.split(".")[0] in self.webhooks else TV_TARGET

    async def execute(self, name: str, arguments: dict[str, Any], lang: str) -> dict[str, Any]:
        url = self.webhooks.get(name.split(".")[0])
        if url is None:
            return self.tv.call(name, arguments, lang).model_dump()
        return await self._forward(url, {"name": name, "arguments": arguments, "lang": lang})

    async def _forward(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
                response = await client.post(url, json=payload)
        except httpx.HTTPError as exc:
            raise WebhookError(f"webhook unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise WebhookError(f"webhook answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {"status": response.status_code}
