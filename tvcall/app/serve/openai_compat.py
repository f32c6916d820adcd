"""OpenAI chat-completions shapes: which text to route, and a routed call as `tool_calls`."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from tvcall.app.engine.base import RouteResult
from tvcall.app.serve.api_models import AssistantMessage, ChatRequest, ChatResponse, Choice, ToolCall, ToolFunction, Usage
from tvcall.functions.registry import Registry
from tvcall.functions.validate import call_errors

NO_FUNCTION_REPLY = "No TV function matches this request."


def user_text(request: ChatRequest) -> str:
    """The last user message's text (earlier turns and system prompts do not change the routing)."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text()
    return ""


def earlier_calls(request: ChatRequest) -> list[tuple[str, ToolCall]]:
    """The assistant's tool calls of the conversation, in order, each with where it is."""
    return [(f"messages[{i}].tool_calls[{j}].function", call) for i, message in enumerate(request.messages)
            if message.role == "assistant" for j, call in enumerate(getattr(message, "tool_calls", None) or [])]


def call_arguments(call: ToolCall) -> dict[str, Any] | None:
    """A tool call's arguments, None when they are not a JSON object."""
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        return None
    return arguments if isinstance(arguments, dict) else None


def context_errors(request: ChatRequest, registry: Registry) -> list[str]:
    """Earlier tool calls of the conversation that name no registered function or whose arguments its schema does not
    take, each with where it is."""
    errors = []
    for where, call in earlier_calls(request):
        arguments = call_arguments(call)
        if call.function.name not in registry.functions:
            errors.append(f"{where}.name: unknown function {call.function.name!r}")
        elif arguments is None:
            errors.append(f"{where}.arguments: not a JSON object")
        else:
            errors += [f"{where}.arguments: {error}" for error in call_errors(registry, call.function.name, arguments)]
    return errors


def previous_call(request: ChatRequest) -> tuple[str, dict[str, Any]] | None:
    """The conversation's last tool call before its last user message (the context of a follow-up)."""
    last_user = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=-1)
    calls = [call for i, message in enumerate(request.messages[:last_user]) if message.role == "assistant"
             for call in getattr(message, "tool_calls", None) or []]
    if not calls:
        return None
    arguments = call_arguments(calls[-1])
    return (calls[-1].function.name, arguments) if arguments is not None else None


def allowed_names(request: ChatRequest) -> set[str] | None:
    """The function names the client offered in `tools` (None: every registered function)."""
    if request.tools is None:
        return None
    return {t["function"]["name"] for t in request.tools if isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)}


def wants_tools(request: ChatRequest) -> bool:
    return request.tool_choice != "none"


def chat_response(request: ChatRequest, results: list[RouteResult], response_id: str | None = None) -> ChatResponse:
    """The routed calls (several for a compound command) as `tool_calls`, those outside the client's `tools` left out."""
    allowed = allowed_names(request)
    calls = [ToolCall(id=f"call_{secrets.token_hex(12)}", function=ToolFunction(
                 name=r.name, arguments=json.dumps(r.arguments, ensure_ascii=False)))
             for r in results if r.name is not None and wants_tools(request) and (allowed is None or r.name in allowed)]
    if not calls:
        message = AssistantMessage(content=NO_FUNCTION_REPLY)
        finish = "stop"
    else:
        message, finish = AssistantMessage(tool_calls=calls), "tool_calls"
    completion = sum(r.stats.get(k, 0) for r in results for k in ("decided_tokens", "forced_tokens"))
    prompt = sum(int(r.stats.get("prompt_tokens", 0)) for r in results)
    return ChatResponse(
        id=response_id or f"chatcmpl-{secrets.token_hex(12)}", created=int(time.time()), model=request.model,
        choices=[Choice(message=message, finish_reason=finish)],
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
    )
