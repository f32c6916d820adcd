"""Guided decoding of a call, for backends that constrain a whole generation to a choice or a JSON schema (vLLM
in-process, vLLM's OpenAI-compatible server, llama.cpp's and other OpenAI-compatible servers).

The staged trie decoder (`tvcall.app.engine.decoder`) constrains every token itself; these backends take one
constraint per request. Both obey the one constraint plan (`tvcall.app.engine.plan`), in two stages:

1. the name, among the callable candidates and "no function", as a choice among the answer's own opening
   (`{"name": "dom.obj.act"` or `{"name": null}`, exactly the text the model was trained to write) or, where a
   server takes only JSON schemas, as `{"name": <enum>}`. With the run's tokenizer (`use_run`), the decision is
   the local decoder's, replayed on the log-probabilities the server reports (`GuidedEngine._replayed`);
2. the arguments: the whole answer `{"name": "dom.obj.act", "arguments": {...}}` under a JSON schema whose name
   is that function's and whose arguments are its parameter schema narrowed by the plan (`plan.arguments_schema`).
   A function without parameters needs no second request.

Both stages prompt with the training prompt (`tvcall.data.prompt.messages` with the retrieved options);
every call is checked with `tvcall.functions.validate.call_errors` afterwards.
"""

from __future__ import annotations

import json
import math
import sys
import time
from abc import abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tvcall.app.engine.base import Engine, RouteResult
from tvcall.app.engine.decoder import NameTokens, Walk, choose
from tvcall.app.engine.plan import (
    NameSettings,
    Words,
    apply_to_retriever,
    arguments_schema,
    callable_candidates,
    conversational,
    load_act_threshold,
    load_calibration,
    null_bias_for,
    settings_of,
    use_run_retriever,
    words_of,
)
from tvcall.data import prompt as P
from tvcall.data.words import word_boundaries
from tvcall.functions.registry import Registry, default_registry
from tvcall.functions.retrieve import Retriever
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
    top_logprobs: int = 0  # alternatives to report at each generated token (the name stage, to replay its decision)


@dataclass
class Prompt:
    """What one request asks: the utterance, the candidate objects shown in the prompt, and an adapter
    (a LoRA adapter's folder in-process; a served adapter's model name over HTTP; None: the default)."""

    text: str
    options: list[str]
    candidates: list[str]  # the callable candidates (`plan.callable_candidates`)
    adapter: str | None = None
    prior: dict[str | None, float] = field(default_factory=dict)  # the retriever's log prior over them and None

    def messages(self) -> list[dict[str, str]]:
        return P.messages(self.text, self.options)


@dataclass(frozen=True)
class TokenChoice:
    """One generated token as a server reports it: its text, log-probability and the top alternatives' (by text)."""

    token: str
    logprob: float
    top: dict[str, float]


@dataclass
class Generation:
    text: str
    logprob: float | None = None  # of the generated tokens, when the backend reports it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: list[TokenChoice] = field(default_factory=list)  # when the backend reports them


# --- the two stages -------------------------------------------------------------------------------------
def name_choices(candidates: Sequence[str | None]) -> dict[str, str | None]:
    """The answer's opening for each candidate and the whole "no function" answer (None), as the model writes them."""
    return {P.NAME_OPEN + P.name_segment(name) if name is not None else P.answer_text(None, {}): name for name in candidates}


def name_schema(candidates: Sequence[str | None]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"enum": list(candidates)}}, "required": ["name"], "additionalProperties": False}


def name_stage(candidates: Sequence[str], none: bool = True, top_logprobs: int = 0) -> Stage:
    """The name among `candidates` and, with `none`, "no function"."""
    every = [*candidates, None] if none else list(candidates)
    return Stage("name", name_schema(every), name_choices(every), NAME_MAX_TOKENS, top_logprobs)


def call_schema(registry: Registry, name: str, text: str | None = None, words: Words = word_boundaries) -> dict[str, Any]:
    """The whole answer for `name`, its arguments narrowed by the constraint plan for `text` (`plan.arguments_schema`)."""
    return {"type": "object", "properties": {"name": {"enum": [name]}, "arguments": arguments_schema(registry[name], text, words)},
            "required": ["name", "arguments"], "additionalProperties": False}


def call_stage(registry: Registry, name: str, text: str | None = None, words: Words = word_boundaries) -> Stage:
    return Stage("call", call_schema(registry, name, text, words))


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


# --- the name decision, replayed -------------------------------------------------------------------------
TOP_LOGPROBS = 20  # alternatives a server reports per token (OpenAI's most); a name token has a handful


@dataclass
class NameDecision:
    name: str | None
    logprob: float  # of the name, renormalised over what was allowed at each choice (the local decoder's)
    first: Generation  # the last name-stage generation (token counts)
    requests: int
    null_margin: float = math.nan
    error: str | None = None


@dataclass(frozen=True)
class ServerPath:
    """The name tokens a server wrote after the answer's opening, as the training tokenizer's ids (None: a piece no
    name has), and at each the log-probabilities it reported, by id."""

    tokens: list[int | None]
    top: list[dict[int, float]]


def server_path(generation: Generation, piece_ids: dict[str, int]) -> ServerPath | None:
    """None when the server did not open the answer as the model was trained to (`P.NAME_OPEN`, then a boundary)."""
    opened, start = "", None
    for index, choice in enumerate(generation.tokens):
        if opened == P.NAME_OPEN:
            start = index
            break
        opened += choice.token
        if not P.NAME_OPEN.startswith(opened):
            return None
    if start is None:
        return None
    rest = generation.tokens[start:]
    return ServerPath([piece_ids.get(c.token) for c in rest],
                      [{piece_ids[t]: lp for t, lp in {**c.top, c.token: c.logprob}.items() if t in piece_ids} for c in rest])


def follows(path: ServerPath | None, walked: list[int]) -> bool:
    """Whether the server's path went along `walked` and reported the step after it."""
    return path is not None and path.tokens[:len(walked)] == walked and len(path.top) > len(walked)


# --- the engine -------------------------------------------------------------------------------------------
class GuidedEngine(Engine):
    """Retrieve → name stage → call stage → validate; subclasses run the generations (`generate`).

    With a run (`use_run`), the name is the local decoder's decision: its greedy walk over the candidates' token trie
    (`decoder.choose`), with the prior and the abstention bias, scored by the log-probabilities the server reports
    along the name it generated; where the walk leaves that name, the server generates again among the names that
    go the walk's way. Without one, the name is the server's own constrained choice.
    """

    def __init__(self, registry: Registry | None = None, top_objects: int | None = DEFAULT_TOP_OBJECTS, copy_spans: bool = True) -> None:
        self.registry = registry or default_registry()
        self.top_objects = top_objects
        self.retriever = conversational(Retriever(self.registry)) if top_objects else None
        self.copy_spans = copy_spans
        self.prompt_options = True  # as the served model was trained: retrieved objects listed in the prompt
        self.null_bias, self.prior_weight = 0.0, 0.0
        self.followup_null_bias: float | None = None
        self.names: NameTokens | None = None  # the names in the training tokenizer's ids: the decision is replayed
        self.piece_ids: dict[str, int] = {}

    def use_run(self, run_dir: Path) -> None:
        """Decide as the run's model does locally: its prompt, retriever, calibrated name settings and act threshold."""
        from tvcall.model.load import load_tokenizer

        run = RunDir(run_dir)
        if not run.exists:  # a served model named by hand: the default prompt, the server's own name choice
            return
        self.prompt_options = run.config().prompt_options
        if self.retriever is not None:
            use_run_retriever(self.retriever, run, log=lambda line: print(line, file=sys.stderr))
        self.name_settings = load_calibration(run)
        self.act_threshold = load_act_threshold(run)
        self.follows_up = run.summary().followup_examples > 0
        self.use_tokenizer(load_tokenizer(run.model_source()))

    def use_tokenizer(self, tokenizer: Any) -> None:
        """Replay the local name decision (`_replayed`) with the names in the training tokenizer's ids."""
        self.names = NameTokens(tokenizer, self.registry.names)
        self.piece_ids = {tokenizer.decode([i]): i for ids in self.names.ids.values() for i in ids}

    @property
    def name_settings(self) -> NameSettings:
        return settings_of(self.null_bias, self.prior_weight, self.retriever, self.followup_null_bias)

    @name_settings.setter
    def name_settings(self, settings: NameSettings) -> None:
        self.null_bias, self.prior_weight = settings.null_bias, settings.prior_weight
        self.followup_null_bias = settings.followup_null_bias
        apply_to_retriever(settings, self.retriever)

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], stages: Sequence[Stage]) -> list[Generation]:
        """One constrained generation per (prompt, stage), in order."""

    def prompt(self, text: str, adapter: str | None = None) -> Prompt:
        if self.retriever is not None and self.top_objects:
            found = self.retriever.retrieve(text, self.top_objects)
            return Prompt(text, found.options if self.prompt_options else [], callable_candidates(self.registry, text, found.functions),
                          adapter, found.prior)
        return Prompt(text, [], callable_candidates(self.registry, text, self.registry.names), adapter)

    def route(self, text: str) -> RouteResult:
        return self.route_batch([text])[0]

    def _names_after(self, prompt: Prompt, walked: list[int]) -> Stage:
        """The name stage among the candidates whose tokens start with `walked`, scores of the alternatives reported."""
        assert self.names is not None
        names = [n for n in prompt.candidates if self.names.ids[n][:len(walked)] == walked]
        return name_stage(names, none=self.names.ids[None][:len(walked)] == walked, top_logprobs=TOP_LOGPROBS)

    def _replayed(self, prompt: Prompt) -> Generator[list[Stage], list[Generation], NameDecision]:
        """The local decoder's name decision on the server's scores: yields the name stages to generate, a round at a
        time. Where the walk leaves the server's name, the server generates again among the names that go the walk's
        way; a token allowed but not among the reported alternatives is scored by a generation that must take it."""
        assert self.names is not None
        walk = Walk(pending=[])
        prior = (prompt.prior, self.prior_weight) if prompt.prior else None
        bias = null_bias_for(prompt.text, self.null_bias, self.followup_null_bias)
        chooser = choose(walk, self.names.trie(prompt.candidates), bias=(self.names.null_first, bias), prior=prior)
        walked: list[int] = []
        path: ServerPath | None = None
        last, requests = Generation(""), 0
        try:
            run, allowed, _ = next(chooser)
            while True:
                walked += run
                if not follows(path, walked):
                    stage = self._names_after(prompt, walked)
                    [last] = yield [stage]
                    requests += 1
                    path = server_path(last, self.piece_ids)
                    if not follows(path, walked):  # the server wrote the name its own way: take its choice
                        return self._server_decision(stage, last, requests)
                assert path is not None
                reported = dict(path.top[len(walked)])
                missing = [t for t in allowed if t not in reported]
                if missing:
                    for token, forced in zip(missing, (yield [self._names_after(prompt, [*walked, t]) for t in missing]), strict=True):
                        taken = server_path(forced, self.piece_ids)
                        if follows(taken, walked) and taken is not None and taken.tokens[len(walked)] == token:
                            reported[token] = taken.top[len(walked)][token]
                    requests += len(missing)
                floor = min(reported.values())  # a token still unscored counts no higher than the lowest reported
                run, allowed, _ = chooser.send(torch.tensor([reported.get(t, floor) for t in allowed]))
        except StopIteration as done:
            name, logprob = done.value
            return NameDecision(name, logprob, last, requests, walk.margin)

    @staticmethod
    def _server_decision(stage: Stage, generation: Generation, requests: int) -> NameDecision:
        try:
            return NameDecision(parse_name(stage, generation.text), generation.logprob or 0.0, generation, requests)
        except Unreadable as exc:
            return NameDecision(None, 0.0, generation, requests, error=str(exc))

    def _server_choice(self, prompt: Prompt) -> Generator[list[Stage], list[Generation], NameDecision]:
        stage = name_stage(prompt.candidates)
        [generation] = yield [stage]
        return self._server_decision(stage, generation, 1)

    def decide_names(self, prompts: Sequence[Prompt]) -> list[NameDecision]:
        """Every prompt's name; the generations of each round go to the server together."""
        deciding = [self._replayed(p) if self.names is not None else self._server_choice(p) for p in prompts]
        asked: dict[int, list[Stage]] = {i: next(d) for i, d in enumerate(deciding)}
        decided: dict[int, NameDecision] = {}
        while asked:
            batch = [(i, stage) for i, stages in asked.items() for stage in stages]
            generations = self.generate([prompts[i] for i, _ in batch], [stage for _, stage in batch])
            answers: dict[int, list[Generation]] = {}
            for (i, _), generation in zip(batch, generations, strict=True):
                answers.setdefault(i, []).append(generation)
            for i, answered in answers.items():
                try:
                    asked[i] = deciding[i].send(answered)
                except StopIteration as done:
                    decided[i] = done.value
                    del asked[i]
        return [decided[i] for i in range(len(prompts))]

    def route_batch(self, texts: Sequence[str], adapters: Sequence[str | None] | None = None) -> list[RouteResult]:
        """Every text's name stage in rounds of one batch, then the call stage of those that named a function."""
        started = time.perf_counter()
        prompts = [self.prompt(text, adapter) for text, adapter in zip(texts, adapters or [None] * len(texts), strict=True)]
        decisions = self.decide_names(prompts)
        errors = [[d.error] if d.error else [] for d in decisions]
        todo = [i for i, d in enumerate(decisions) if d.name is not None and d.name in self.registry and needs_arguments(self.registry, d.name)]
        words = words_of(self.retriever)
        second_stages = [call_stage(self.registry, str(decisions[i].name), texts[i] if self.copy_spans else None, words)
                         for i in todo]
        seconds = dict(zip(todo, self.generate([prompts[i] for i in todo], second_stages), strict=True))
        latency_ms = (time.perf_counter() - started) * 1000
        results = []
        for i, decision in enumerate(decisions):
            name, second = decision.name, seconds.get(i)
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
            generations = [g for g in (decision.first, second) if g is not None]
            results.append(RouteResult(
                name=name, arguments=arguments, latency_ms=latency_ms,
                confidence=math.exp(decision.logprob),  # the name's probability
                raw=second.text if second is not None else decision.first.text if errors[i] else P.answer_text(name, {}),
                errors=errors[i], null_margin=decision.null_margin,
                stats={"requests": decision.requests + (second is not None), "prompt_tokens": decision.first.prompt_tokens,
                       "decided_tokens": sum(g.completion_tokens for g in generations)},
            ))
        return results
