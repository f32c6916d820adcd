"""OpenAI chat-completions shapes: which text to route, and a routed call as `tool_calls`."""

from __future__ import annotations

import json
import secrets
import time

from tvcall.app.engine.base import RouteResult
from tvcall.app.serve.api_models import AssistantMessage, ChatRequest, ChatResponse, Choice, ToolCall, ToolFunction, Usage
from tvcall.functions.registry import Registry

NO_FUNCTION_REPLY = "No TV function matches this request."


def user_text(request: ChatRequest) -> str:
    """The last user message's text (earlier turns and system prompts do not change the routing)."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text()
    return ""


def context_errors(request: ChatRequest, registry: Registry) -> list[str]:
    """Earlier tool calls of the conversation that name no registered function, each with where it is."""
    return [f"messages[{i}].tool_calls[{j}].function.name: unknown function {call.function.name!r}"
            for i, message in enumerate(request.messages) if message.role == "assistant"
            for j, call in enumerate(getattr(message, "tool_calls", None) or [])
            if call.function.name not in registry.functions]


def allowed_names(request: ChatRequest) -> set[str] | None:
    """The function names the client offered in `tools` (None: every registered function)."""
    if request.tools is None:
        return None
    return {t["function"]["name"] for t in request.tools if isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)}


def wants_tools(request: ChatRequest) -> bool:
    return request.tool_choice != "none"


def chat_response(request: ChatRequest, result: RouteResult, response_id: str | None = None) -> ChatResponse:
    allowed = allowed_names(request)
    name = result.name if wants_tools(request) and (allowed is None or result.name in allowed) else None
    if name is None:
        message = AssistantMessage(content=NO_FUNCTION_REPLY)
        finish = "stop"
    else:
        call = ToolCall(id=f"call_{secrets.token_hex(12)}", function=ToolFunction(name=name, arguments=json.dumps(result.arguments, ensure_ascii=False)))
        message, finish = AssistantMessage(tool_calls=[call]), "tool_calls"
    completion = sum(result.stats.get(k, 0) for k in ("decided_tokens", "forced_tokens"))
    prompt = int(result.stats.get("prompt_tokens", 0))
    return ChatResponse(
        id=response_id or f"chatcmpl-{secrets.token_hex(12)}", created=int(time.time()), model=request.model,
        choices=[Choice(message=message, finish_reason=finish)],
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
    )
