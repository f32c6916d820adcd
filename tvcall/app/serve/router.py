"""The HTTP function router: text in, a validated call out, and, when asked, the call executed.

`create_app(engine, config)` builds the FastAPI app; `tvcall serve` (tvcall/app/serve/server.py) runs it with
uvicorn. Endpoints:

- `POST /v1/route` — route a text; with `execute` run the call if its confidence reaches the act threshold (else
  `needs_clarification` with candidates; risky ones wait for `/v1/confirm`, or for "确定" in the same `session`,
  where "撤销" / "undo that" runs the inverse of the session's last call); in a session a command is routed after
  the session's last call, so "再大一点" or "那主演呢" follows it;
- `POST /v1/confirm` — run a held risky call by its token;
- `POST /v1/feedback` — the client says an answer was wrong, or gives the right call (kept in the traffic log);
- `POST /v1/chat/completions` — OpenAI-compatible, the call as `tool_calls`; the conversation's last tool call is
  the last user message's context;
- `GET /v1/functions` — the registry as OpenAI `tools`, filterable by domain and text;
- `GET /healthz`, `GET /metrics` (Prometheus).

Every error is `{"error": {"type", "message"}}` with a 4xx/5xx status; user text never reaches a log line
unescaped (only lengths, names and escaped excerpts are logged).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field, SecretStr

from tvcall.app.engine.base import Engine, RouteResult
from tvcall.app.engine.compound import compound_walk
from tvcall.app.serve import openai_compat
from tvcall.app.serve.api_models import (
    MAX_TEXT_CHARS,
    ChatRequest,
    ChatResponse,
    ConfirmRequest,
    ConfirmResponse,
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    FunctionList,
    Health,
    Lang,
    RanCall,
    RoutedCall,
    RouteRequest,
    RouteResponse,
    check_text,
)
from tvcall.app.serve.batcher import Batcher, QueueFull, TextTooLong
from tvcall.app.serve.dispatch import TV_TARGET, Call, Confirmations, Dispatcher, PendingCall, WebhookError
from tvcall.app.serve.http_errors import ERRORS, GET_ERRORS, install_error_handlers
from tvcall.app.serve.metrics import Metrics, RequestMetrics
from tvcall.app.serve.security import BodyLimit, escape_for_log, require_token
from tvcall.app.serve.sessions import CANCEL, DIALOG_FUNCTIONS, UNDO, DoneCall, Session, Sessions, context_after, reply
from tvcall.app.serve.traffic import Answered, TrafficLog, UnknownRequest, new_request_id
from tvcall.functions.tv import CallResult, SimulatedTV
from tvcall.functions.validate import call_errors

log = logging.getLogger("tvcall.router")
CHAT_PATH = "/v1/chat/completions"
CLARIFY_CANDIDATES = 3  # functions offered when the router asks instead of acting


class RouterConfig(BaseModel):
    token: SecretStr | None = Field(default=None, description="bearer token required on every endpoint but /healthz")
    max_body_bytes: int = Field(default=16 * 1024, gt=0)
    max_chat_body_bytes: int = Field(default=1024 * 1024, gt=0, description="chat requests carry `tools` (all 1,328: ~350 KB)")
    timeout_s: float = Field(default=10.0, gt=0, description="per request: queue wait plus routing")
    max_batch: int = Field(default=16, ge=1)
    max_queue: int = Field(default=64, ge=1)
    confirm_ttl_s: float = Field(default=120.0, gt=0)
    session_ttl_s: float = Field(default=300.0, gt=0, description="a session idle this long is forgotten")
    max_sessions: int = Field(default=10_000, ge=1, description="the least recently used sessions make room beyond it")
    webhooks: dict[str, str] = Field(default_factory=dict, description="domain → URL that executes its calls")
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    traffic: str | None = Field(default=None, description="SQLite file of the traffic log (None: nothing is logged)")
    run: str | None = Field(default=None, description="the run that answers, as the traffic log records it")
    data_version: str | None = Field(default=None, description="the data version that run was trained on")
    act_threshold: float | None = Field(default=None, ge=0, description="the confidence a call needs to be executed "
                                       "(None: the run's, chosen on dev; 0: every call acts)")


class RouterState:
    def __init__(self, engine: Engine, config: RouterConfig, tv: SimulatedTV | None) -> None:
        self.engine, self.config = engine, config
        self.registry = engine.registry
        self.metrics = Metrics()
        self.batcher = Batcher(engine, config.max_batch, config.max_queue, self.metrics.observe_batch)
        self.tv = tv or SimulatedTV(self.registry)
        self.dispatcher = Dispatcher(self.tv, config.webhooks, config.webhook_timeout_s)
        self.confirmations = Confirmations(config.confirm_ttl_s)
        self.sessions = Sessions(config.session_ttl_s, config.max_sessions)
        self.act_threshold = engine.act_threshold if config.act_threshold is None else config.act_threshold
        self.traffic = TrafficLog(Path(config.traffic), config.run, config.data_version) if config.traffic else None

    def clarification(self, result: RouteResult) -> list[str] | None:
        """The functions to ask the user about when a call is under the act threshold (its own first); None: act."""
        if result.name is None or result.confidence >= self.act_threshold:
            return None
        self.metrics.clarifications.inc()
        return list(dict.fromkeys([result.name, *result.candidates]))[:CLARIFY_CANDIDATES]

    async def log(self, answered: Answered) -> None:
        """Keep an answered request; a failed write is counted and logged, never the request's failure."""
        if self.traffic is not None and not await self.traffic.record(answered):
            self.metrics.errors.labels("traffic_log").inc()

    async def log_outcome(self, request_ids: list[str | None], confirmation: str,
                          results: list[dict[str, Any]] | None = None) -> None:
        """Each held call's confirmation outcome, executed as its result says (nothing ran without `results`)."""
        for index, request_id in enumerate(request_ids):
            executed = bool(results and results[index].get("ok", True))
            if self.traffic is not None and request_id is not None and not await self.traffic.mark(request_id, executed, confirmation):
                self.metrics.errors.labels("traffic_log").inc()


def guess_lang(text: str) -> str:
    return "zh" if any("\u3400" <= c <= "\u9fff" for c in text) else "en"


async def route_parts(state: RouterState, text: str, previous: tuple[str, dict[str, Any]] | None) -> list[tuple[str, RouteResult]]:
    """(text routed, its answer) for each call `text` asks for: the parts of a compound command
    (`tvcall.app.engine.compound`), each batch routed together through the batcher, else the text as one command."""
    walk = compound_walk(text, previous, state.engine.in_context, alone=DIALOG_FUNCTIONS)
    try:
        batch = next(walk)
        while True:
            batch = walk.send(list(await asyncio.gather(*(route_text(state, t) for t in batch))))
    except StopIteration as done:
        return done.value


async def route_text(state: RouterState, text: str) -> RouteResult:
    """The engine's answer through the batcher, with errors mapped to HTTP; an invalid call becomes none."""
    state.metrics.queue_depth.set(state.batcher.depth)
    try:
        result = await state.batcher.route(text, state.config.timeout_s)
    except QueueFull as exc:
        state.metrics.errors.labels("queue_full").inc()
        raise HTTPException(503, "the router is at capacity; retry later", headers={"Retry-After": str(exc.retry_after_s)}) from None
    except TimeoutError:
        state.metrics.errors.labels("timeout").inc()
        raise HTTPException(504, f"routing took longer than {state.config.timeout_s:g} s") from None
    except TextTooLong as exc:
        raise HTTPException(422, str(exc)) from None
    except Exception as exc:
        state.metrics.errors.labels("engine").inc()
        log.exception("engine failed on a text of %d chars: %s", len(text), escape_for_log(exc))
        raise HTTPException(500, "the engine failed on this request") from None
    state.metrics.observe_route(result)
    if result.errors:
        state.metrics.errors.labels("invalid_call").inc()
        log.error("engine produced an invalid call %s: %s", result.name, escape_for_log("; ".join(result.errors)))
        result.name, result.arguments = None, {}
    return result


def build_api(state: RouterState) -> APIRouter:
    api = APIRouter(dependencies=[Depends(require_token)] if state.config.token else [])  # the spec shows auth only if on

    @api.post("/v1/route", response_model=RouteResponse, responses=ERRORS)
    async def route(body: RouteRequest) -> RouteResponse:
        started = time.perf_counter()
        session = state.sessions.get(body.session) if body.session else None
        parts = await route_parts(state, body.text, session.last_answer if session else None)
        lang = body.lang or guess_lang(body.text)
        calls = [RoutedCall(id=new_request_id("req"), name=r.name, arguments=r.arguments, confidence=r.confidence,
                            risky=state.registry[r.name].risk == "confirm") for _, r in parts if r.name]
        first = parts[0][1]
        response = RouteResponse(id=calls[0].id if calls else new_request_id("req"), name=first.name, arguments=first.arguments,
                                 confidence=first.confidence, latency_ms=0.0, calls=calls, risky=any(c.risky for c in calls))
        if session is not None:
            session.last_answer = context_after(session.last_answer, [(c.name, c.arguments) for c in calls])
        acted = await act(state, session, [r for _, r in parts if r.name], lang, [c.id for c in calls]) if body.execute and calls else None
        confirmation = None
        if acted and acted.candidates:
            response.needs_clarification, response.candidates = True, acted.candidates
        elif acted and acted.token:
            response.needs_confirmation, response.confirmation_token, confirmation = True, acted.token, "held"
            response.expires_in_s = state.config.confirm_ttl_s
        elif acted:
            for call, result in zip(calls, acted.results, strict=True):
                call.result = result
            response.result = acted.results[0]
        response.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        named = [text for text, r in parts if r.name]  # each call's own text (a compound command's part)
        for text, call in list(zip(named, calls, strict=True)) or [(parts[0][0], None)]:
            await state.log(Answered(call.id if call else response.id, "/v1/route", text, lang, call.name if call else None,
                                     call.arguments if call else {}, call.confidence if call else first.confidence,
                                     response.latency_ms, executed=bool(call and call.result and call.result.get("ok", True)),
                                     confirmation=confirmation))
        return response

    @api.post("/v1/confirm", response_model=ConfirmResponse, responses={**ERRORS, 404: {"model": ErrorBody}})
    async def confirm(body: ConfirmRequest) -> ConfirmResponse:
        pending = state.confirmations.take(body.token)
        if pending is None:
            raise HTTPException(404, "unknown, used or expired confirmation token")
        state.metrics.confirmations.labels("confirmed").inc()
        results = await run_confirmed(state, None, pending, body.lang)
        return ConfirmResponse(name=pending.name, arguments=pending.arguments, result=results[0],
                               calls=[RanCall(name=n, arguments=a, result=r) for (n, a), r in zip(pending.calls, results, strict=True)])

    @api.post("/v1/feedback", response_model=FeedbackResponse, responses={**ERRORS, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        if state.traffic is None:
            raise HTTPException(409, "the traffic log is off (tvcall serve --no-traffic): there is nothing to give feedback on")
        if body.call is not None:
            if body.correct:
                raise HTTPException(422, "call: give a call only with correct=false (the right call for a wrong answer)")
            errors = call_errors(state.registry, body.call.name, body.call.arguments)
            if errors:
                raise HTTPException(422, f"call: {'; '.join(errors)}")
        try:
            await state.traffic.add_feedback(body.id, body.correct, body.call.name if body.call else None,
                                             body.call.arguments if body.call else None)
        except UnknownRequest:
            raise HTTPException(404, f"id: no answered request {body.id} in the traffic log") from None
        except sqlite3.Error as exc:
            state.metrics.errors.labels("traffic_log").inc()
            raise HTTPException(503, f"the traffic log could not record the feedback ({exc}); retry later") from None
        return FeedbackResponse(id=body.id)

    @api.post(CHAT_PATH, response_model=ChatResponse, response_model_exclude_none=True, responses=ERRORS)
    async def chat_completions(body: ChatRequest) -> ChatResponse:
        if errors := openai_compat.context_errors(body, state.registry):
            raise HTTPException(422, "; ".join(errors))
        text = openai_compat.user_text(body)
        if not text.strip():  # nothing asked: no function
            return openai_compat.chat_response(body, [RouteResult(None, {}, 1.0, 0.0, raw="")])
        try:
            check_text(text)
        except ValueError as exc:
            raise HTTPException(422, f"the last user message: {exc}") from None
        if len(text) > MAX_TEXT_CHARS:
            raise HTTPException(422, f"the last user message is over {MAX_TEXT_CHARS} characters")
        parts = await route_parts(state, text, openai_compat.previous_call(body))
        response = openai_compat.chat_response(body, [r for _, r in parts], new_request_id("chatcmpl"))
        given = {call.function.name for call in response.choices[0].message.tool_calls or []}
        for index, (routed, result) in enumerate(parts):  # what the client got: a call outside its `tools` is none
            name = result.name if result.name in given else None
            await state.log(Answered(response.id if index == 0 else new_request_id("chatcmpl"), CHAT_PATH, routed,
                                     guess_lang(text), name, result.arguments if name else {}, result.confidence, result.latency_ms))
        return response

    @api.get("/v1/functions", response_model=FunctionList, responses=GET_ERRORS)
    async def functions(
        domain: Annotated[str | None, Query(max_length=64, description="only this domain")] = None,
        q: Annotated[str | None, Query(max_length=100, description="substring of the name or a description (zh or en)")] = None,
        lang: Annotated[Lang, Query(description="description language")] = "en",
    ) -> FunctionList:
        needle = (q or "").casefold()
        specs = [s for s in state.registry.functions.values() if domain in (None, s.domain)
                 and (not needle or any(needle in t.casefold() for t in (s.name, *s.description.zh, *s.description.en)))]
        return FunctionList(count=len(specs), tools=[s.openai_tool(lang) for s in specs])

    @api.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}, **GET_ERRORS})
    async def metrics() -> Response:
        state.metrics.queue_depth.set(state.batcher.depth)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    return api


async def execute(state: RouterState, name: str, arguments: dict[str, Any], lang: str) -> dict[str, Any]:
    target = state.dispatcher.target(name)
    try:
        result = await state.dispatcher.execute(name, arguments, lang)
    except WebhookError as exc:
        state.metrics.errors.labels("webhook").inc()
        raise HTTPException(502, str(exc)) from None
    state.metrics.executions.labels(name.split(".")[0], target).inc()
    log.info("executed %s on %s", name, target)
    return result


async def execute_in(state: RouterState, session: Session | None, name: str, arguments: dict[str, Any],
                     lang: str) -> dict[str, Any]:
    """Execute, and remember the call in the session with what takes it back (known for the TV's own calls only)."""
    result = await execute(state, name, arguments, lang)
    if session is not None:
        undo = result.get("undo", []) if state.dispatcher.target(name) == TV_TARGET else []
        session.calls.append(DoneCall(name, dict(arguments), undo))
    return result


async def dialog_reply(state: RouterState, session: Session | None, name: str, lang: str) -> dict[str, Any]:
    """What confirm, cancel or undo does in the session: the confirmed call's result, or a reply saying what was
    done or why nothing was."""
    def said(key: str, ok: bool = False, about: str = "", **data: Any) -> dict[str, Any]:
        return CallResult(ok=ok, name=name, message=reply(key, lang, name=about), data=data).model_dump()

    if session is None:
        return said("no_session")
    if name == UNDO:
        if not session.calls:
            return said("nothing_done")
        last = session.calls[-1]
        if not last.undo:
            return said("irreversible", about=last.name)
        session.calls.pop()
        done = [await execute(state, call["name"], call["arguments"], lang) for call in last.undo]
        return said("undone", ok=True, about=last.name, undone={"name": last.name, "arguments": last.arguments}, calls=done)
    pending = state.confirmations.take(session.pending_token) if session.pending_token else None
    session.pending_token = None
    if pending is None:
        return said("nothing_pending")
    if name == CANCEL:
        state.metrics.confirmations.labels("cancelled").inc()
        await state.log_outcome(pending.request_ids, "cancelled")
        return said("cancelled", ok=True, about=pending.name)
    state.metrics.confirmations.labels("confirmed").inc()
    results = await run_confirmed(state, session, pending, lang)
    return results[0] if len(results) == 1 else CallResult(
        ok=all(r.get("ok", True) for r in results), name=name, message="; ".join(r.get("message", "") for r in results),
        data={"calls": results}).model_dump()


async def run_calls(state: RouterState, session: Session | None, calls: list[Call], lang: str) -> list[dict[str, Any]]:
    """Execute `calls` in order. A call that fails after others ran is answered in its place and the rest are not
    run, so the client learns what the TV did; a first call that fails is the request's error (nothing ran)."""
    results: list[dict[str, Any]] = []
    for index, (name, arguments) in enumerate(calls):
        try:
            results.append(await execute_in(state, session, name, arguments, lang))
        except HTTPException as exc:
            if index == 0:
                raise
            results.append(CallResult(ok=False, name=name, message=reply("failed", lang, name=name, why=str(exc.detail))).model_dump())
            results += [CallResult(ok=False, name=n, message=reply("skipped", lang, name=name)).model_dump() for n, _ in calls[index + 1:]]
            break
    return results


async def run_confirmed(state: RouterState, session: Session | None, pending: PendingCall, lang: str) -> list[dict[str, Any]]:
    """Run a confirmed list and record each call's outcome in the traffic log, also when the first call fails."""
    try:
        results = await run_calls(state, session, pending.calls, lang)
    except HTTPException:
        await state.log_outcome(pending.request_ids, "confirmed")
        raise
    await state.log_outcome(pending.request_ids, "confirmed", results)
    return results


@dataclass
class Acted:
    """What `act` did with the calls of one command: asked about them, held them, or ran them."""

    candidates: list[str] | None = None  # under the act threshold: the functions to ask the user about
    unsure: RouteResult | None = None  # the call that was under it
    token: str | None = None  # a risky call holds the whole list under this confirmation token
    results: list[dict[str, Any]] = field(default_factory=list)  # each call's result, in order


async def act(state: RouterState, session: Session | None, results: list[RouteResult], lang: str,
              request_ids: list[str | None] | None = None) -> Acted:
    """Execute the calls one command asked for, as `/v1/route` with `execute` does: a call under the act threshold
    makes the router ask; a lone dialog reply acts on the session; a risky call holds the whole list for
    confirmation; else every call runs in order."""
    for result in results:
        if asked := state.clarification(result):
            return Acted(candidates=asked, unsure=result)
    if len(results) == 1 and results[0].name in DIALOG_FUNCTIONS:
        return Acted(results=[await dialog_reply(state, session, results[0].name, lang)])
    calls: list[Call] = [(r.name, r.arguments) for r in results if r.name]
    if any(state.registry[name].risk == "confirm" for name, _ in calls):
        token = state.confirmations.hold(calls, request_ids)
        state.metrics.confirmations.labels("held").inc()
        if session is not None:
            session.pending_token = token
        return Acted(token=token)
    return Acted(results=await run_calls(state, session, calls, lang))


def create_app(engine: Engine, config: RouterConfig | None = None, tv: SimulatedTV | None = None) -> FastAPI:
    state = RouterState(engine, config or RouterConfig(), tv)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.act_threshold > 1:
            log.warning("execute runs no call: the act threshold is %.2f (dev never reached the precision it needs)",
                        state.act_threshold)
        elif state.act_threshold > 0:
            log.info("execute runs calls at confidence %.3f or more, and asks about the rest", state.act_threshold)
        await state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.stop()
            if state.traffic is not None:
                state.traffic.close()

    app = FastAPI(title="tvcall router", version="1", lifespan=lifespan,
                  description="TV commands (zh/en) → validated function calls, executed on request.")
    app.state.router = state
    app.state.token = state.config.token.get_secret_value() if state.config.token else None
    install_error_handlers(app)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok", functions=len(state.registry), queue_depth=state.batcher.depth, max_batch=state.batcher.max_batch)

    app.include_router(build_api(state))
    app.add_middleware(BodyLimit, max_bytes=state.config.max_body_bytes, path_limits={CHAT_PATH: state.config.max_chat_body_bytes})
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    return app
