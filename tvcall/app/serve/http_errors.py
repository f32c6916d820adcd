"""The router's error bodies: every 4xx/5xx is `{"error": {"type", "message"[, "fields"]}}`, documented in OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tvcall.app.serve.api_models import ErrorBody


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = ErrorBody.model_validate({"error": {"type": kind, "message": message, **extra}})
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


ERROR_KINDS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               422: "invalid_request", 502: "bad_gateway", 503: "overloaded", 504: "timeout"}
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 413, 422, 500, 502, 503, 504)}
GET_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 422)}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and routing's own 404/405
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, ERROR_KINDS.get(exc.status_code, "error"), str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(f['loc'])}: {f['msg']}" for f in fields[:3])
        return error_response(422, "invalid_request", f"the request does not match the schema: {summary}", fields=fields)
