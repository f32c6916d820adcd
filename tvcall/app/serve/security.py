"""The router's guards: loopback unless a token is set, bearer tokens, a request size limit, safe logging."""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost",)
bearer = HTTPBearer(auto_error=False, description="required when the server is bound to a non-loopback address")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a bearer token."""
    if not is_loopback(host) and not token:
        raise ValueError(f"binding to {host!r} (not loopback) needs a bearer token: set TVCALL_API_TOKEN")


def token_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def require_token(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """FastAPI dependency: the app's token (if it has one) must come as `Authorization: Bearer …`."""
    expected: str | None = request.app.state.token
    if expected is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer" or not token_matches(expected, credentials.credentials):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def escape_for_log(value: Any, limit: int = 120) -> str:
    """A log-safe rendering of untrusted text: ASCII-escaped, quoted, no newlines or control characters."""
    text = value if isinstance(value, str) else str(value)
    clipped = text[:limit] + ("…" if len(text) > limit else "")
    return json.dumps(clipped, ensure_ascii=True)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class BodyLimit:
    """ASGI middleware: a declared or streamed body over the path's limit (else `max_bytes`) gets 413."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None) -> None:
        self.app, self.max_bytes, self.path_limits = app, max_bytes, path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(limit, scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)  # FastAPI re-raises HTTPExceptions from body reading
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"error": {"type": "payload_too_large", "message": f"request body over {limit} bytes"}}
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)
