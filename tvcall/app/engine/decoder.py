"""Constrained decoding of a function call, stage by stage, over token tries and outlines' schema guides.

The answer is decoded as the segments of `tvcall.data.prompt.answer_segments`: the name is chosen from a
trie over every registered name (and `null`), then argument keys from the function's own parameters in
schema order, then each value from a trie of what its schema allows: enum values, booleans, every integer
within the bounds, and, for string slots, only spans of the utterance (a copy constraint) or, in a conversation, the
previous call's value of the slot (`plan.copy_values`). Tokens the
constraint forces (JSON punctuation, keys, the rest of a name once its prefix is unique) are fed to the model
without asking it; the model only runs where there is a real choice. From the end of the name on, every token
must also pass outlines' guide of the function's parameter schema (`tvcall.app.engine.schema_guide`).

At the name stage a prior over the candidate names (the retriever's classifier, `Retrieved.prior`) can join the
model's scores as a product of experts: each name token's logit gains `prior_weight` times the log of the prior
mass under that token relative to its node, so over a whole name the model's log-probability gains
`prior_weight` × the name's log prior.

The prior's favourite name is also a draft (`ConstrainedDecoder._passes`): its tokens run in the prompt's pass,
which keeps a head per position, so each decision along it is read off that pass instead of a decode pass of
its own; where the walk leaves the draft, the rest is dropped from the cache. The choices are the same. Once a
copied value has started, the rest of the utterance is the draft of the next pass in the same way: a title of
ten tokens costs one pass, not ten.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch
from outlines_core import Guide

from tvcall.app.engine.plan import (
    Words,
    argument_plan,
    callable_candidates,
    copied,
    copy_values,
    free_occurrence,
    null_bias_for,
    utterance_spans,
)
from tvcall.app.engine.schema_guide import GuideError, SchemaGuides, admitted, advance
from tvcall.data import prompt as P
from tvcall.data.words import word_boundaries
from tvcall.functions.registry import Registry
from tvcall.functions.spec import FunctionSpec

_CLOSE = object()  # marker: no more arguments
DRAFT_TOKENS = 24  # longest draft of a copied value a pass checks (a Chinese title of 8 characters is ~16 tokens)


class TrieNode:
    __slots__ = ("children", "terminal", "payload")

    def __init__(self) -> None:
        self.children: dict[int, TrieNode] = {}
        self.terminal = False
        self.payload: Any = None


class TokenTrie:
    """Alternatives as token sequences; each terminal carries the alternative's payload."""

    def __init__(self, alternatives: Iterable[tuple[Sequence[int], Any]]) -> None:
        self.root = TrieNode()
        self.size = 0
        self._heights: dict[int, int] = {}
        for tokens, payload in alternatives:
            node = self.root
            for token in tokens:
                node = node.children.setdefault(token, TrieNode())
            if not node.terminal:
                self.size += 1
            node.terminal, node.payload = True, payload

    def first_tokens(self) -> frozenset[int]:
        return frozenset(self.root.children)

    def height(self, node: TrieNode) -> int:
        """Tokens on the longest path below `node` (memoised: a trie does not change once built)."""
        if id(node) not in self._heights:
            self._heights[id(node)] = 1 + max((self.height(child) for child in node.children.values()), default=-1)
        return self._heights[id(node)]


def goes_on_or_ends(trie: TokenTrie, node: TrieNode) -> bool:
    """Whether a copied value has started at `node` and can only go on along the utterance or end there."""
    return node is not trie.root and len(node.children) <= 2


def longest_path(trie: TokenTrie, node: TrieNode) -> list[int]:
    """The tokens of the longest alternative below `node` (`DRAFT_TOKENS` at most): in a copy trie, once a value
    has started, the rest of the utterance from there (the likeliest continuation, and a draft to check in one pass;
    the other child of each node ends the value with its closing quote merged into the last token)."""
    path: list[int] = []
    while node.children and len(path) < DRAFT_TOKENS:
        token, node = max(node.children.items(), key=lambda item: trie.height(item[1]))
        path.append(token)
    return path


@dataclass
class Decoded:
    name: str | None
    arguments: dict[str, Any]
    text: str  # the JSON the model produced
    confidence: float  # product of the probabilities of every choice, renormalised over what was allowed
    name_confidence: float
    model_calls: int
    decided_tokens: int
    forced_tokens: int
    null_margin: float = math.nan  # logit of "no function" minus the best name's, before any abstention bias
    # (with the prior's share added, as the name stage scores it)


class TransformersLM:
    """Decoding steps through a transformers model and its own KV cache (the reference path; no batching)."""

    capacity = 1_000_000

    def __init__(self, model: Any) -> None:
        self.model = model

    def open(self, prompt: list[int]) -> dict[str, Any]:
        return {"cache": None, "pending": list(prompt)}

    def close(self, stream: dict[str, Any]) -> None:
        stream["cache"] = None

    def run(self, streams: list[dict[str, Any]], tokens: list[list[int]], keep: list[int]) -> list[torch.Tensor]:
        """Run each stream's pending prompt plus its `tokens`; the logits of its last `keep[i]` positions."""
        heads = []
        for stream, new, k in zip(streams, tokens, keep, strict=True):
            ids = stream["pending"] + list(new)
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([ids]), cache=stream["cache"], use_cache=True,
                                 logits_to_keep=k)
            stream["cache"], stream["pending"] = out.past_key_values, []
            heads.append(out.logits[0, -k:].float())
        return heads

    def rewind(self, stream: dict[str, Any], count: int) -> None:
        if count:
            stream["cache"].crop(-count)

    def scores(self, head: torch.Tensor, allowed: list[int]) -> torch.Tensor:
        return head[allowed]


class _PriorMass:
    """Log prior mass under trie nodes (the payloads' log-probabilities summed), memoised for one walk."""

    def __init__(self, prior: dict[Any, float]) -> None:
        self.prior = prior
        self.memo: dict[int, float] = {}

    def of(self, node: TrieNode) -> float:
        if id(node) not in self.memo:
            parts = [self.prior.get(node.payload, -math.inf)] if node.terminal else []
            parts += [self.of(child) for child in node.children.values()]
            top = max(parts, default=-math.inf)
            self.memo[id(node)] = top if top == -math.inf else top + math.log(sum(math.exp(p - top) for p in parts))
        return self.memo[id(node)]

    def shares(self, node: TrieNode, allowed: list[int]) -> torch.Tensor:
        """log(mass under each allowed token / mass at `node`); a token that ends the alternative gets the
        node's own payload's share; no mass anywhere under the node: zeros (the prior has no opinion)."""
        total = self.of(node)
        if total == -math.inf:
            return torch.zeros(len(allowed))
        own = self.prior.get(node.payload, -math.inf) if node.terminal else -math.inf
        masses = [self.of(node.children[t]) if t in node.children else own for t in allowed]
        return torch.tensor([max(m - total, -30.0) for m in masses])  # a floor: no name is ruled out outright


# tokens to run first (empty: reuse the last state), tokens allowed next, a guess of the tokens after them
Step = tuple[list[int], list[int], list[int]]


@dataclass
class Pass:
    """One model pass a decode asks for: drop the last `rewind` cached tokens, run `tokens`, and return the heads of
    the last `keep` positions."""

    tokens: list[int]
    keep: int = 1
    rewind: int = 0


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@dataclass
class Walk:
    """Bookkeeping of one decode: tokens fed but not yet run, and counts."""

    pending: list[int]
    margin: float = math.nan  # at the name's first token: logit of "no function" minus the best name's
    forced: int = 0
    decided: int = 0
    guide: Guide | None = None  # outlines' schema guide of the arguments, once the name is chosen
    function: str = ""

    def feed(self, tokens: Sequence[int], forced: bool = True) -> None:
        if self.guide is not None:
            advance(self.guide, list(tokens), self.function)
        self.pending.extend(tokens)
        if forced:
            self.forced += len(tokens)

    def take(self) -> list[int]:
        tokens, self.pending = self.pending, []
        return tokens


def choose(walk: Walk, trie: TokenTrie, follow: frozenset[int] = frozenset(),
           bias: tuple[int, float] | None = None, prior: tuple[dict[Any, float], float] | None = None,
           drafts: bool = False) -> Generator[Step, torch.Tensor, tuple[Any, float]]:
    """Greedy walk of `trie`; `follow` are the first tokens of what comes next (to end a prefix alternative).
    `drafts`: where a copied value can only go on or end, each step offers the trie's longest path ahead as a draft.

    `bias` (token, logit offset) shifts one first token at the root; `walk.margin` records that token's
    unbiased logit minus the best other one there. `prior` (log-probability per payload, weight) adds the
    weighted log prior mass under each allowed token, relative to its node's.
    """
    masses = _PriorMass(prior[0]) if prior is not None and prior[1] else None
    node, logprob = trie.root, 0.0
    while True:
        ending = node.terminal
        if ending and not node.children:
            return node.payload, logprob
        allowed = list(node.children) + ([t for t in follow if t not in node.children] if ending else [])
        if walk.guide is not None:
            allowed = admitted(walk.guide, allowed)
            if not allowed:
                raise GuideError(f"{walk.function}: the schema admits none of the tokens the decoder allows")
        if len(allowed) == 1 and not ending:
            walk.feed([allowed[0]])
            node = node.children[allowed[0]]
            continue
        scores = yield walk.take(), allowed, longest_path(trie, node) if drafts and goes_on_or_ends(trie, node) else []
        if masses is not None and prior is not None:
            scores = scores + prior[1] * masses.shares(node, allowed)
        if bias is not None and node is trie.root and bias[0] in allowed and len(allowed) > 1:
            index = allowed.index(bias[0])
            others = torch.cat([scores[:index], scores[index + 1:]])
            walk.margin = float(scores[index] - others.max())
            scores = scores.clone()
            scores[index] += bias[1]
        best = int(torch.argmax(scores))
        logprob += float(torch.log_softmax(scores, dim=0)[best])
        token = allowed[best]
        walk.decided += 1
        if token not in node.children:  # the next segment starts: this alternative ends here
            return node.payload, logprob
        walk.feed([token], forced=False)
        node = node.children[token]



class NameTokens:
    """Every registered name and "no function" as the token ids the model writes them with (`P.name_segment`)."""

    def __init__(self, tokenizer: Any, names: Sequence[str]) -> None:
        every = [*names, None]
        self.ids: dict[str | None, list[int]] = dict(zip(every, tokenizer([P.name_segment(n) for n in every],
                                                                           add_special_tokens=False)["input_ids"], strict=True))

    def trie(self, candidates: Sequence[str]) -> TokenTrie:
        """Names narrowed to `candidates`; "no function" stays allowed."""
        return TokenTrie((self.ids[n], n) for n in [*candidates, None] if n in self.ids)

    @property
    def null_first(self) -> int:
        """The first token of "no function": the abstention bias goes on it."""
        return self.ids[None][0]


class ConstrainedDecoder:
    def __init__(self, lm: Any, tokenizer: Any, registry: Registry) -> None:
        self.lm, self.tokenizer, self.registry = lm, tokenizer, registry
        self._ids = lru_cache(maxsize=65536)(lambda s: tuple(P.segment_ids(tokenizer, s)))
        self.names = NameTokens(tokenizer, registry.names)
        self._name_ids = self.names.ids
        self.name_trie = self.candidate_trie(registry.names)
        self.guides = SchemaGuides(tokenizer, registry)
        self._key_tries: dict[tuple[str, int], TokenTrie] = {}
        self._value_tries: dict[tuple[Any, ...], TokenTrie] = {}
        self.null_bias = 0.0  # added to the "no function" logit at the name's first token (see tvcall.eval.calibrate)
        self.followup_null_bias: float | None = None  # the same after a previous call (`plan.null_bias_for`)
        self.prior_weight = 0.0  # how much the name prior counts against the model's own scores (calibrated too)
        self.speculate = True  # run the prior's favourite name with the prompt (`_passes`): same result, fewer passes
        self.draft_copies = True  # check the rest of the utterance in one pass once a copied value starts (`_passes`)
        self.words: Words = word_boundaries  # where copies may start and end (the engine's: `plan.words_of`)
        word_boundaries("开机")  # load the Chinese segmenter's dictionary now, not in the first request

    # --- tries -----------------------------------------------------------------------------------
    def _trie(self, alternatives: list[tuple[str, Any]]) -> TokenTrie:
        unique = list(dict.fromkeys(text for text, _ in alternatives))
        encoded = self.tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
        lookup = dict(zip(unique, encoded, strict=True))
        return TokenTrie((lookup[text], payload) for text, payload in alternatives)

    def key_trie(self, spec: FunctionSpec, position: int, available: frozenset[str] | None = None,
                 filled: frozenset[str] = frozenset()) -> TokenTrie:
        """Keys that may follow the key at `position` (-1: none yet), in schema order, or the closing braces.

        `available`: the optional keys the utterance grounds (None: all); required keys are always allowed.
        `filled`: optional keys that must appear all the same (their value is said in the utterance).
        """
        cache_key = (spec.name, position, available, filled)
        if cache_key not in self._key_tries:
            props = list(spec.properties)
            required = set(spec.required) | filled
            alternatives: list[tuple[str, Any]] = []
            for index in range(position + 1, len(props)):
                if available is None or props[index] in available or props[index] in required:
                    alternatives.append((P.key_segment(props[index], first=position == -1), props[index]))
                if props[index] in required:
                    break
            if not required & set(props[position + 1:]):
                alternatives.append((P.ARGS_CLOSE, _CLOSE))
            self._key_tries[cache_key] = self._trie(alternatives)
        return self._key_tries[cache_key]

    def value_trie(self, schema: dict[str, Any], copies: Callable[[], list[str]], grounded: list[Any] | None,
                   copy_key: tuple[Any, ...]) -> TokenTrie:
        """What a value may be: `grounded` values when given, else all the schema allows (strings: `copies`, called
        on a cache miss only and cached under `copy_key`)."""
        values: Callable[[], list[Any]]  # called on a cache miss only: this is the hot path
        if grounded:
            key: tuple[Any, ...] = ("grounded", json.dumps(grounded))
            values = lambda: list(grounded)  # noqa: E731
        elif "enum" in schema:
            key, values = ("enum", tuple(schema["enum"])), lambda: list(schema["enum"])
        elif schema.get("type") == "boolean":
            key, values = ("boolean",), lambda: [True, False]
        elif schema.get("type") == "integer":
            low, high = schema["minimum"], schema["maximum"]
            key, values = ("integer", low, high), lambda: list(range(low, high + 1))
        else:  # copied(schema, grounded)
            key, values = ("copy", *copy_key), copies
        if key not in self._value_tries:
            if key[0] in ("copy", "grounded") and len(self._value_tries) > 4096:
                self._value_tries = {k: v for k, v in self._value_tries.items() if k[0] not in ("copy", "grounded")}
            self._value_tries[key] = self._trie([(P.value_segment(v), v) for v in values()])
        return self._value_tries[key]

    def candidate_trie(self, candidates: Sequence[str]) -> TokenTrie:
        """Names narrowed to `candidates` (retrieved functions); "no function" stays allowed."""
        return self.names.trie(candidates)

    def _steps(self, text: str, candidates: Sequence[str] | None, prior: dict[str | None, float] | None = None,
               name_only: bool = False) -> Generator[Step, torch.Tensor, Decoded]:
        """One decode as a coroutine: yields what to run and score, receives the scores. `name_only`: stop once the
        name is chosen (no arguments); the name is the one a whole decode would choose."""
        walk = Walk(pending=list(self._ids(P.NAME_OPEN)))
        names = self.name_trie if candidates is None else self.candidate_trie(candidates)
        null_first = self.names.null_first
        bias = null_bias_for(text, self.null_bias, self.followup_null_bias)
        name, name_logprob = yield from choose(walk, names, bias=(null_first, bias),
                                                     prior=(prior, self.prior_weight) if prior else None)
        logprob = name_logprob
        arguments: dict[str, Any] = {}
        if name is not None and not name_only:
            spec = self.registry[name]
            props = list(spec.properties)
            plan = argument_plan(spec, text, self.words)
            said, available, filled = plan.said, plan.available, plan.filled
            walk.guide, walk.function = self.guides.guide(name), name
            walk.feed(self._ids(P.ARGS_OPEN))
            position = -1
            taken: list[tuple[int, int]] = []  # character ranges of the values copied so far
            while True:
                key, lp = yield from choose(walk, self.key_trie(spec, position, available, filled))
                logprob += lp
                if key is _CLOSE:
                    break
                position = props.index(key)
                follow = self.key_trie(spec, position, available, filled).first_tokens()
                copies = lambda key=key, taken=tuple(taken): copy_values(plan, key, taken)  # noqa: E731
                value_trie = self.value_trie(spec.properties[key], copies, said.get(key),
                                             (plan.command, plan.bounds, tuple(taken), plan.carried.get(key)))
                is_copy = copied(spec.properties[key], said.get(key))
                value, lp = yield from choose(walk, value_trie, follow, drafts=is_copy and self.draft_copies)
                logprob += lp
                arguments[key] = value
                if is_copy and (place := free_occurrence(plan.command, value, taken, plan.bounds)):
                    taken.append(place)
                    if not utterance_spans(plan.command, taken=taken, bounds=plan.bounds):  # every word is in a value: no more copies
                        available = frozenset(k for k in available if not copied(spec.properties[k], said.get(k)))
        if walk.guide is not None and not walk.guide.is_finished():
            raise GuideError(f"{name}: the call ended where the schema has not")
        return Decoded(
            name=name, arguments=arguments, text=P.answer_text(name, arguments), confidence=math.exp(logprob),
            name_confidence=math.exp(name_logprob), model_calls=0,  # counted by `_passes`
            decided_tokens=walk.decided, forced_tokens=walk.forced, null_margin=walk.margin,
        )

    def _draft(self, candidates: Sequence[str] | None, prior: dict[str | None, float] | None) -> list[int]:
        """The tokens the decode is guessed to feed first: the answer's opening and the name the prior favours."""
        if not self.speculate or not prior:
            return []
        allowed = set(candidates) | {None} if candidates is not None else None
        ranked = [n for n in prior if (allowed is None or n in allowed) and n in self._name_ids]
        if not ranked:
            return []
        return [*self._ids(P.NAME_OPEN), *self._name_ids[max(ranked, key=lambda n: prior[n])]]

    def _passes(self, steps: Generator[Step, torch.Tensor, Decoded],
                draft: Sequence[int]) -> Generator[Pass, torch.Tensor, Decoded]:
        """Turn a decode's steps (tokens to run, tokens allowed next, a guess) into model passes, speculating.

        The first pass runs the `draft` tokens after the first step's and keeps a head per position; a later pass
        runs its step's own guess the same way. Each later step whose tokens go on along the guess is answered from
        those heads without the model; at the first step that leaves it, the rest is dropped from the cache. A pass
        of a few tokens costs about what a pass of one does, and every choice is made on the head it would have been
        made on without the guess, so a right guess saves decode passes and a wrong one costs a few tokens in a pass.
        """
        run, allowed, hint = next(steps)
        heads: torch.Tensor | None = None  # the last pass's heads; row `at` is the state the decode is in
        ahead: list[int] = []  # drafted tokens in the cache that the decode has not fed yet
        at, passes = 0, 0
        while True:
            if ahead[:len(run)] == run and heads is not None:  # along the draft (or nothing new): no model pass
                at, ahead = at + len(run), ahead[len(run):]
            else:
                agreed = common_prefix_length(run, ahead)
                guess = list(draft[len(run):]) if passes == 0 and list(draft[:len(run)]) == run else hint
                heads = yield Pass(run[agreed:] + guess, keep=len(guess) + 1, rewind=len(ahead) - agreed)
                passes, ahead, at = passes + 1, guess, 0
            try:
                run, allowed, hint = steps.send(self.lm.scores(heads[at], allowed))
            except StopIteration as done:
                return replace(done.value, model_calls=passes)

    def decode(self, text: str, candidates: Sequence[str] | None = None, options: Sequence[str] = (),
               prior: dict[str | None, float] | None = None) -> Decoded:
        return self.decode_batch([text], [candidates], [options], [prior])[0]

    def decode_batch(self, texts: Sequence[str], candidates: Sequence[Sequence[str] | None],
                     options: Sequence[Sequence[str]], priors: Sequence[dict[str | None, float] | None] | None = None,
                     name_only: bool = False) -> list[Decoded]:
        """Decode several utterances together: each model step runs every sequence that needs one at once.
        `name_only`: decode the names alone (see `_steps`)."""
        priors = priors if priors is not None else [None] * len(texts)
        candidates = [c if c is None else callable_candidates(self.registry, t, c) for t, c in zip(texts, candidates, strict=True)]
        results: list[Decoded] = []
        for start in range(0, len(texts), self.lm.capacity):
            chunk = range(start, min(len(texts), start + self.lm.capacity))
            results += self._decode_chunk([texts[i] for i in chunk], [candidates[i] for i in chunk],
                                          [options[i] for i in chunk], [priors[i] for i in chunk], name_only)
        return results

    def _decode_chunk(self, texts: list[str], candidates: list[Sequence[str] | None], options: list[Sequence[str]],
                      priors: list[dict[str | None, float] | None], name_only: bool = False) -> list[Decoded]:
        streams = [self.lm.open(P.prompt_ids(self.tokenizer, t, o)) for t, o in zip(texts, options, strict=True)]
        try:
            walks = [self._passes(self._steps(t, c, p, name_only), self._draft(c, p))
                     for t, c, p in zip(texts, candidates, priors, strict=True)]
            passes: list[Pass | None] = [next(w) for w in walks]
            results: list[Decoded | None] = [None] * len(walks)
            while active := [i for i, p in enumerate(passes) if p is not None]:
                asked = [p for p in passes if p is not None]
                for i, p in zip(active, asked, strict=True):
                    if p.rewind:
                        self.lm.rewind(streams[i], p.rewind)
                heads = self.lm.run([streams[i] for i in active], [p.tokens for p in asked], [p.keep for p in asked])
                for i, head in zip(active, heads, strict=True):
                    try:
                        passes[i] = walks[i].send(head)
                    except StopIteration as done:
                        passes[i], results[i] = None, done.value
        finally:
            for stream in streams:
                self.lm.close(stream)
        return [r for r in results if r is not None]
