"""Guided decoding of a call in two generation requests, for backends that constrain a whole generation to a
choice or a JSON schema (vLLM in-process, vLLM's OpenAI-compatible server, other OpenAI-compatible servers).

The staged trie decoder (`tvcall.app.engine.decoder`) constrains every token itself; these backends take one
constraint per request, so a call is decoded in the same two stages with one request each:

1. the name: the retrieved candidates and "no function", as a choice among the answer's own opening
   (`{"name": "dom.obj.act"` or `{"name": null}`, exactly the text the model was trained to write) or, where
   a server takes only JSON schemas, as `{"name": <enum>}`;
2. the arguments: the whole answer `{"name": "dom.obj.act", "arguments": {...}}` under a JSON schema whose name
   is that function's and whose arguments are the function's own parameter schema (private `x-` keys
   stripped), string slots narrowed, like the local decoder's copy constraint, to spans of the utterance.
   A function without parameters needs no second request.

Both stages prompt with the training prompt (`tvcall.data.prompt.messages` with the retrieved options);
every call is checked with `tvcall.functions.validate.call_errors` afterwards.
"""

from __future__ import annotations

import json
import math
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tvcall.app.engine.base import Engine, RouteResult
from tvcall.app.engine.decoder import utterance_spans
from tvcall.data import prompt as P
from tvcall.functions.registry import Registry, default_registry
from tvcall.functions.retrieve import Retriever, load_classifier
from tvcall.functions.spec import strip_private_keywords
from tvcall.functions.validate import call_errors
from tvcall.run import DEFAULT_TOP_OBJECTS, RunDir

NAME_MAX_TOKENS = 48  # `{"name": "domain.object.action"` is under 20 tokens in SmolLM2's and Qwen's vocabularies
CALL_MAX_TOKENS = 256


@dataclass(frozen=True)
class Stage:
    """One constrained generation: the name among `choices` (stage 1) or the call under `schema` (stage 2)."""

    kind: Literal["name", "call"]
    schema: dict[str, Any]
    choices: dict[str, str | None] = field(default_factory=dict)  # choice text → name (stage 1 only)
    max_tokens: int = CALL_MAX_TOKENS


@dataclass
class Prompt:
    """What one request asks: the utterance, the candidate objects shown in the prompt, and an adapter
    (a LoRA adapter's folder in-process; a served adapter's model name over HTTP; None: the default)."""

    text: str
    options: list[str]
    candidates: list[str]
    adapter: str | None = None

    def messages(self) -> list[dict[str, str]]:
        return P.messages(self.text, self.options)


@dataclass
class Generation:
    text: str
    logprob: float | None = None  # of the generated tokens, when the backend reports it
    prompt_tokens: int = 0
    completion_tokens: int = 0


# --- the two stages -------------------------------------------------------------------------------------
def name_choices(candidates: Sequence[str]) -> dict[str, str | None]:
    """The answer's opening for each candidate and the whole "no function" answer, as the model writes them."""
    choices: dict[str, str | None] = {P.NAME_OPEN + P.name_segment(name): name for name in candidates}
    choices[P.answer_text(None, {})] = None
    return choices


def name_schema(candidates: Sequence[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"enum": [*candidates, None]}}, "required": ["name"], "additionalProperties": False}


def name_stage(candidates: Sequence[str]) -> Stage:
    return Stage("name", name_schema(candidates), name_choices(candidates), NAME_MAX_TOKENS)


def arguments_schema(registry: Registry, name: str, text: str | None = None) -> dict[str, Any]:
    """The function's parameter schema without `x-` keys; with `text`, free string slots take only its spans."""
    schema = strip_private_keywords(registry[name].parameters)
    spans = utterance_spans(text) if text else []
    if spans:
        for key, slot in schema.get("properties", {}).items():
            if slot.get("type") == "string" and "enum" not in slot:
                schema["properties"][key] = {**slot, "enum": spans}
    return schema


def call_schema(registry: Registry, name: str, text: str | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"enum": [name]}, "arguments": arguments_schema(registry, name, text)},
            "required": ["name", "arguments"], "additionalProperties": False}


def call_stage(registry: Registry, name: str, text: str | None = None) -> Stage:
    return Stage("call", call_schema(registry, name, text))


def needs_arguments(registry: Registry, name: str) -> bool:
    return bool(registry[name].properties)


# --- how each kind of server is asked -------------------------------------------------------------------
def structured_outputs(stage: Stage) -> dict[str, Any]:
    """vLLM's `structured_outputs` (the fields of `vllm.sampling_params.StructuredOutputsParams`): a choice for
    the name, a JSON schema for the call. vLLM ≥ 0.12 ignores the older `guided_json`/`guided_choice` fields."""
    return {"choice": list(stage.choices)} if stage.kind == "name" else {"json": stage.schema}


def response_format(stage: Stage) -> dict[str, Any]:
    """The OpenAI `response_format` for servers that take JSON schemas only (not strict: optional slots)."""
    return {"type": "json_schema", "json_schema": {"name": f"tvcall_{stage.kind}", "schema": stage.schema, "strict": False}}


# --- reading the answers ---------------------------------------------------------------------------------
class Unreadable(ValueError):
    pass


def parse_name(stage: Stage, output: str) -> str | None:
    """The name from a choice (the text itself) or from `{"name": ...}` JSON."""
    if output in stage.choices:
        return stage.choices[output]
    try:
        value = json.loads(output)
    except json.JSONDecodeError as exc:
        raise Unreadable(f"the name stage's answer is not a choice nor JSON: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("name", 0), str | None):
        raise Unreadable("the name stage's answer has no string or null `name`")
    return value["name"]


def parse_call(output: str) -> tuple[str | None, dict[str, Any]]:
    try:
        value = json.loads(output)
    except json.JSONDecodeError as exc:
        raise Unreadable(f"the call stage's answer is not JSON: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("arguments", {}), dict):
        raise Unreadable("the call stage's answer is not {\"name\": ..., \"arguments\": {...}}")
    name = value.get("name")
    return (name if isinstance(name, str) else None), dict(value.get("arguments", {}))


# --- the engine -------------------------------------------------------------------------------------------
class GuidedEngine(Engine):
    """Retrieve → name stage → call stage → validate; subclasses run the generations (`generate`)."""

    def __init__(self, registry: Registry | None = None, top_objects: int | None = DEFAULT_TOP_OBJECTS, copy_spans: bool = True) -> None:
        self.registry = registry or default_registry()
        self.top_objects = top_objects
        self.retriever = Retriever(self.registry) if top_objects else None
        self.copy_spans = copy_spans
        self.prompt_options = True  # as the served model was trained: retrieved objects listed in the prompt

    def use_run_retriever(self, run_dir: Path) -> None:
        """Retrieve and prompt as the run's model was trained (its classifier, when it has one)."""
        run = RunDir(run_dir)
        if run.exists:  # else a served model named by hand: the default prompt
            self.prompt_options = run.config().prompt_options
        if self.retriever is not None:  # the BM25 index built at construction stays; only the classifier is added
            self.retriever.use_classifier(load_classifier(run.classifier_file))

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], stages: Sequence[Stage]) -> list[Generation]:
        """One constrained generation per (prompt, stage), in order."""

    def prompt(self, text: str, adapter: str | None = None) -> Prompt:
        if self.retriever is not None and self.top_objects:
            retrieved = self.retriever.retrieve(text, self.top_objects)
            return Prompt(text, retrieved.options if self.prompt_options else [], retrieved.functions, adapter)
        return Prompt(text, [], list(self.registry.names), adapter)

    def route(self, text: str) -> RouteResult:
        return self.route_batch([text])[0]

    def route_batch(self, texts: Sequence[str], adapters: Sequence[str | None] | None = None) -> list[RouteResult]:
        """Every text's name stage in one batch, then the call stage of those that named a function."""
        started = time.perf_counter()
        prompts = [self.prompt(text, adapter) for text, adapter in zip(texts, adapters or [None] * len(texts), strict=True)]
        first_stages = [name_stage(p.candidates) for p in prompts]
        firsts = self.generate(prompts, first_stages)
        names: list[str | None] = []
        errors: list[list[str]] = []
        for stage, generation in zip(first_stages, firsts, strict=True):
            try:
                names.append(parse_name(stage, generation.text))
                errors.append([])
            except Unreadable as exc:
                names.append(None)
                errors.append([str(exc)])
        todo = [i for i, name in enumerate(names) if name is not None and name in self.registry and needs_arguments(self.registry, name)]
        second_stages = [call_stage(self.registry, str(names[i]), texts[i] if self.copy_spans else None) for i in todo]
        seconds = dict(zip(todo, self.generate([prompts[i] for i in todo], second_stages), strict=True))
        latency_ms = (time.perf_counter() - started) * 1000
        results = []
        for i, (name, first) in enumerate(zip(names, firsts, strict=True)):
            second = seconds.get(i)
            arguments: dict[str, Any] = {}
            if second is not None:
                try:
                    called, arguments = parse_call(second.text)
                    if called != name:
                        errors[i].append(f"the call stage named {called!r}, not {name!r}")
                except Unreadable as exc:
                    errors[i].append(str(exc))
            if not errors[i]:
                errors[i] = call_errors(self.registry, name, arguments)
            generations = [g for g in (first, second) if g is not None]
            results.append(RouteResult(
                name=name, arguments=arguments, latency_ms=latency_ms,
                confidence=math.exp(first.logprob) if first.logprob is not None else 1.0,  # the name's probability
                raw=second.text if second is not None else first.text if errors[i] else P.answer_text(name, {}),  # the rest is forced
                errors=errors[i],
                stats={"requests": len(generations), "prompt_tokens": first.prompt_tokens,
                       "decided_tokens": sum(g.completion_tokens for g in generations)},
            ))
        return results
