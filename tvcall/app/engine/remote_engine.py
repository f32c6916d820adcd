"""The remote backend: any OpenAI-compatible chat-completions server, over HTTP.

Three ways of asking, by what the server is (`protocol`):

- "vllm" — vLLM's `vllm serve` with the fine-tuned model (the adapter merged, or a LoRA module selected by
  `model`): the training prompt, and the two guided stages of `tvcall.app.engine.guided` as vLLM's
  `structured_outputs` request field (`{"choice": [...]}` for the name, `{"json": schema}` for the call);
- "openai" — any server with OpenAI structured outputs: the same prompt and stages as `response_format`
  `json_schema` (vLLM takes this too, without the choice stage's exactness);
- "llama.cpp" — llama.cpp's servers (`llama-server`, and llama-cpp-python's, which serves `tvcall export --format
  gguf`): the same, with the schema as `response_format` `{"type": "json_object", "schema": ...}`, the form
  llama-cpp-python takes;
- "tools" — a server that routes by itself: the project's own router (`tvcall serve`) or a function-calling
  model. The utterance alone is sent as the user message with the retrieved candidate functions as OpenAI
  `tools`; the answer is read from `tool_calls`.

Every call is validated against the registry (`call_errors`); an invalid one comes back with `errors` set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx

from tvcall.app.engine.base import RouteResult
from tvcall.app.engine.guided import Generation, GuidedEngine, Prompt, Stage, TokenChoice, response_format, structured_outputs
from tvcall.data.prompt import split_context
from tvcall.errors import BackendError
from tvcall.functions.registry import Registry
from tvcall.functions.retrieve import language
from tvcall.functions.validate import call_errors
from tvcall.run import DEFAULT_TOP_OBJECTS

Protocol = Literal["vllm", "openai", "llama.cpp", "tools"]
PROTOCOLS: tuple[str, ...] = ("vllm", "openai", "llama.cpp", "tools")
API_KEY_ENV = "TVCALL_REMOTE_API_KEY"  # an environment variable, not a flag: flags show in `ps`
DEFAULT_MODEL = "tvcall"


class RemoteError(BackendError):
    """The server refused or failed a request, or answered something that is not a chat completion."""


def chat_body(model: str, prompt: Prompt, stage: Stage, protocol: Protocol) -> dict[str, Any]:
    """The chat-completions request for one guided stage (protocol "vllm" or "openai")."""
    body: dict[str, Any] = {"model": prompt.adapter or model, "messages": prompt.messages(), "temperature": 0.0,
                            "max_tokens": stage.max_tokens}
    if stage.kind == "name":
        body["logprobs"] = True  # the name's probability is the call's confidence
        if stage.top_logprobs:
            body["top_logprobs"] = stage.top_logprobs
    if protocol == "vllm":
        body["structured_outputs"] = structured_outputs(stage)
    elif protocol == "openai":
        body["response_format"] = response_format(stage)
    elif protocol == "llama.cpp":
        body["response_format"] = {"type": "json_object", "schema": stage.schema}
        body["repeat_penalty"] = 1.0  # llama-cpp-python's default of 1.1 bends greedy choices away from repeated `"`
    else:
        raise ValueError(f"protocol {protocol!r} has no guided stages")
    return body


def tools_body(model: str, prompt: Prompt, registry: Registry) -> dict[str, Any]:
    """The chat-completions request for protocol "tools": the utterance, and the candidates as `tools`; in a conversation
    the previous call comes first as the assistant's tool call, as a chat model expects it."""
    context, command = split_context(prompt.text)
    messages: list[dict[str, Any]] = []
    if context is not None:
        call = {"id": "call_previous", "type": "function",
                "function": {"name": context["name"], "arguments": json.dumps(context["arguments"], ensure_ascii=False)}}
        messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": "call_previous", "content": "done"}]
    lang = language(command)
    return {"model": prompt.adapter or model, "messages": [*messages, {"role": "user", "content": command}], "temperature": 0.0,
            "tools": [registry[name].openai_tool(lang) for name in prompt.candidates], "tool_choice": "auto"}


def completion_message(response: dict[str, Any]) -> dict[str, Any]:
    try:
        message = response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise RemoteError("the server's answer has no choices[0].message") from None
    if not isinstance(message, dict):
        raise RemoteError("the server's choices[0].message is not an object")
    return message


def generation(response: dict[str, Any]) -> Generation:
    """The content, its log-probability (when `logprobs` came back) and the token counts."""
    content = completion_message(response).get("content")
    if not isinstance(content, str):
        raise RemoteError("the server's answer has no text content")
    tokens = ((response["choices"][0].get("logprobs") or {}).get("content")) or []
    usage = response.get("usage") or {}
    try:
        choices = [TokenChoice(t["token"], float(t["logprob"]), {a["token"]: float(a["logprob"]) for a in t.get("top_logprobs") or []})
                   for t in tokens]
    except (KeyError, TypeError, ValueError):
        raise RemoteError("the server's logprobs are not OpenAI's {token, logprob, top_logprobs}") from None
    return Generation(text=content, logprob=sum(t.logprob for t in choices) if choices else None,
                      prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
                      tokens=choices)


def tool_call(response: dict[str, Any]) -> tuple[str | None, dict[str, Any], str]:
    """(name, arguments, raw) of the first tool call; no tool call is "no function"."""
    calls = completion_message(response).get("tool_calls") or []
    if not calls:
        return None, {}, json.dumps({"name": None})
    function = calls[0].get("function") or {}
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RemoteError(f"the tool call's arguments are not JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise RemoteError("the tool call's arguments are not a JSON object")
    return function.get("name"), arguments, json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)


class OpenAIRemoteEngine(GuidedEngine):
    """`route(text)` through an OpenAI-compatible server (`base_url` ends in `/v1`, as for the OpenAI client).

    `model` is the served model's name (with `vllm serve --lora-modules NAME=PATH`, the adapter's NAME); a
    request's `adapter` overrides it. Texts of a batch are sent concurrently (`max_concurrency`).
    """

    def __init__(self, base_url: str, model: str = DEFAULT_MODEL, api_key: str | None = None, protocol: Protocol = "vllm",
                 registry: Registry | None = None, top_objects: int | None = DEFAULT_TOP_OBJECTS, timeout_s: float = 60.0,
                 max_concurrency: int = 8, copy_spans: bool = True) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r} ({', '.join(PROTOCOLS)})")
        super().__init__(registry, top_objects, copy_spans)
        self.base_url, self.model, self.protocol = base_url.rstrip("/"), model, protocol
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.max_concurrency = max(1, max_concurrency)

    def close(self) -> None:
        self.client.close()

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions; RemoteError for a refusal, a failure or a reply that is not JSON."""
        try:
            response = self.client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise RemoteError(f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise RemoteError(f"{self.base_url} answered {response.status_code}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise RemoteError(f"{self.base_url} answered with something that is not JSON") from None

    def _map(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(bodies) <= 1 or self.max_concurrency == 1:
            return [self.chat(body) for body in bodies]
        with ThreadPoolExecutor(min(self.max_concurrency, len(bodies)), thread_name_prefix="tvcall-remote") as pool:
            return list(pool.map(self.chat, bodies))

    def generate(self, prompts: Sequence[Prompt], stages: Sequence[Stage]) -> list[Generation]:
        bodies = [chat_body(self.model, prompt, stage, self.protocol) for prompt, stage in zip(prompts, stages, strict=True)]
        return [generation(response) for response in self._map(bodies)]

    def route_batch(self, texts: Sequence[str], adapters: Sequence[str | None] | None = None) -> list[RouteResult]:
        if self.protocol != "tools":
            return super().route_batch(texts, adapters)
        started = time.perf_counter()
        prompts = [self.prompt(text, adapter) for text, adapter in zip(texts, adapters or [None] * len(texts), strict=True)]
        responses = self._map([tools_body(self.model, p, self.registry) for p in prompts])
        latency_ms = (time.perf_counter() - started) * 1000
        results = []
        for response in responses:
            name, arguments, raw = tool_call(response)
            usage = response.get("usage") or {}
            results.append(RouteResult(name=name, arguments=arguments, confidence=1.0, latency_ms=latency_ms, raw=raw,
                                       errors=call_errors(self.registry, name, arguments),
                                       stats={"requests": 1, "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                                              "decided_tokens": int(usage.get("completion_tokens") or 0)}))
        return results
