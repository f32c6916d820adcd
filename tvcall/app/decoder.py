"""Constrained decoding of a function call, stage by stage, over token tries.

The answer is decoded as the segments of `tvcall.data.prompt.answer_segments`: the name is chosen from a
trie over every registered name (and `null`), then argument keys from the function's own parameters in
schema order, then each value from a trie of what its schema allows: enum values, booleans, every integer
within the bounds, and, for string slots, only spans of the utterance (a copy constraint). Tokens the
constraint forces (JSON punctuation, keys, the rest of a name once its prefix is unique) are fed to the model
without asking it; the model only runs where there is a real choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from tvcall.data import prompt as P
from tvcall.functions.registry import Registry
from tvcall.functions.spec import FunctionSpec

_CLOSE = object()  # marker: no more arguments
MAX_COPY_CHARS = 48  # longest string slot value copied from an utterance


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
        for tokens, payload in alternatives:
            node = self.root
            for token in tokens:
                node = node.children.setdefault(token, TrieNode())
            if not node.terminal:
                self.size += 1
            node.terminal, node.payload = True, payload

    def first_tokens(self) -> frozenset[int]:
        return frozenset(self.root.children)


def utterance_spans(text: str, max_chars: int = MAX_COPY_CHARS) -> list[str]:
    """Every substring that can be a slot value: trimmed, not cutting through an ASCII word or number."""

    def word_char(c: str) -> bool:
        return c.isascii() and c.isalnum()

    def boundary(i: int) -> bool:
        return i in (0, len(text)) or not (word_char(text[i - 1]) and word_char(text[i]))

    starts = [i for i in range(len(text)) if boundary(i) and not text[i].isspace()]
    spans = []
    for i in starts:
        for j in range(i + 1, min(len(text), i + max_chars) + 1):
            if boundary(j) and not text[j - 1].isspace():
                spans.append(text[i:j])
    return list(dict.fromkeys(spans))


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


class TransformersLM:
    """Decoding steps through a transformers model and its own KV cache."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def begin(self, prompt: list[int]) -> tuple[dict[str, Any], list[int]]:
        return {"cache": None}, list(prompt)

    def run(self, session: dict[str, Any], tokens: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([tokens]), cache=session["cache"], use_cache=True, logits_to_keep=1)
        session["cache"] = out.past_key_values
        return out.logits[0, -1].float()

    def score(self, head: torch.Tensor, allowed: list[int]) -> torch.Tensor:
        return head[allowed]


class FastLM:
    """Decoding steps through `FastLlama` with its static, prefix-cached KV cache."""

    def __init__(self, fast: Any) -> None:
        self.fast = fast
        self._cache = fast.new_cache()

    def begin(self, prompt: list[int]) -> tuple[Any, list[int]]:
        return self.fast.start(prompt, self._cache)

    def run(self, session: Any, tokens: list[int]) -> torch.Tensor:
        return self.fast.forward(tokens, session)

    def score(self, head: torch.Tensor, allowed: list[int]) -> torch.Tensor:
        return self.fast.scores(head, allowed)


@dataclass
class _LMState:
    """One decode: the backend's session plus tokens fed but not yet run."""

    lm: Any
    session: Any
    pending: list[int]
    head: torch.Tensor | None = None
    calls: int = 0
    forced: int = 0
    decided: int = 0

    def feed(self, tokens: Sequence[int], forced: bool = True) -> None:
        if tokens:
            self.pending.extend(tokens)
            self.head = None
            if forced:
                self.forced += len(tokens)

    def scores(self, allowed: list[int]) -> torch.Tensor:
        if self.head is None:
            self.head = self.lm.run(self.session, self.pending)
            self.pending = []
            self.calls += 1
        return self.lm.score(self.head, allowed)


class ConstrainedDecoder:
    def __init__(self, lm: Any, tokenizer: Any, registry: Registry) -> None:
        self.lm, self.tokenizer, self.registry = lm, tokenizer, registry
        self._ids = lru_cache(maxsize=65536)(lambda s: tuple(P.segment_ids(tokenizer, s)))
        self.name_trie = self._trie([(P.name_segment(n), n) for n in registry.names] + [(P.name_segment(None), None)])
        names = [*registry.names, None]
        self._name_ids = dict(zip(names, tokenizer([P.name_segment(n) for n in names], add_special_tokens=False)["input_ids"],
                                  strict=True))
        self._key_tries: dict[tuple[str, int], TokenTrie] = {}
        self._value_tries: dict[tuple[Any, ...], TokenTrie] = {}

    # --- tries -----------------------------------------------------------------------------------
    def _trie(self, alternatives: list[tuple[str, Any]]) -> TokenTrie:
        unique = list(dict.fromkeys(text for text, _ in alternatives))
        encoded = self.tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
        lookup = dict(zip(unique, encoded, strict=True))
        return TokenTrie((lookup[text], payload) for text, payload in alternatives)

    def key_trie(self, spec: FunctionSpec, position: int) -> TokenTrie:
        """Keys that may follow the key at `position` (-1: none yet), in schema order, or the closing braces."""
        cache_key = (spec.name, position)
        if cache_key not in self._key_tries:
            props = list(spec.properties)
            required = set(spec.required)
            alternatives: list[tuple[str, Any]] = []
            for index in range(position + 1, len(props)):
                alternatives.append((P.key_segment(props[index], first=position == -1), props[index]))
                if props[index] in required:
                    break
            if not required & set(props[position + 1:]):
                alternatives.append((P.ARGS_CLOSE, _CLOSE))
            self._key_tries[cache_key] = self._trie(alternatives)
        return self._key_tries[cache_key]

    def value_trie(self, schema: dict[str, Any], text: str) -> TokenTrie:
        if "enum" in schema:
            key: tuple[Any, ...] = ("enum", tuple(schema["enum"]))
            values: list[Any] = list(schema["enum"])
        elif schema.get("type") == "boolean":
            key, values = ("boolean",), [True, False]
        elif schema.get("type") == "integer":
            low, high = schema["minimum"], schema["maximum"]
            key, values = ("integer", low, high), list(range(low, high + 1))
        else:
            key, values = ("copy", text), utterance_spans(text)
        if key not in self._value_tries:
            if key[0] == "copy" and len(self._value_tries) > 4096:
                self._value_tries = {k: v for k, v in self._value_tries.items() if k[0] != "copy"}
            self._value_tries[key] = self._trie([(P.value_segment(v), v) for v in values])
        return self._value_tries[key]

    def warm_up(self) -> None:
        """Build every key and typed value trie now rather than on a user's request."""
        for spec in self.registry.functions.values():
            for position in range(-1, len(spec.properties)):
                self.key_trie(spec, position)
            for schema in spec.properties.values():
                if schema.get("type") != "string" or "enum" in schema:
                    self.value_trie(schema, "")

    # --- decoding --------------------------------------------------------------------------------
    @staticmethod
    def _choose(state: _LMState, trie: TokenTrie, follow: frozenset[int] = frozenset()) -> tuple[Any, float]:
        """Greedy walk of `trie`; `follow` are the first tokens of what comes next (to end a prefix alternative)."""
        node, logprob = trie.root, 0.0
        while True:
            ending = node.terminal
            if ending and not node.children:
                return node.payload, logprob
            allowed = list(node.children) + ([t for t in follow if t not in node.children] if ending else [])
            if len(allowed) == 1 and not ending:
                state.feed([allowed[0]])
                node = node.children[allowed[0]]
                continue
            scores = state.scores(allowed)
            best = int(torch.argmax(scores))
            logprob += float(torch.log_softmax(scores, dim=0)[best])
            token = allowed[best]
            state.decided += 1
            if token not in node.children:  # the next segment starts: this alternative ends here
                return node.payload, logprob
            state.feed([token], forced=False)
            node = node.children[token]

    def candidate_trie(self, candidates: Sequence[str]) -> TokenTrie:
        """Names narrowed to `candidates` (retrieved functions); "no function" stays allowed."""
        return TokenTrie((self._name_ids[n], n) for n in [*candidates, None] if n in self._name_ids)

    def decode(self, text: str, candidates: Sequence[str] | None = None, options: Sequence[str] = ()) -> Decoded:
        session, pending = self.lm.begin(P.prompt_ids(self.tokenizer, text, options))
        state = _LMState(self.lm, session, pending)
        state.feed(self._ids(P.NAME_OPEN))
        names = self.name_trie if candidates is None else self.candidate_trie(candidates)
        name, name_logprob = self._choose(state, names)
        logprob = name_logprob
        arguments: dict[str, Any] = {}
        if name is None:
            out = P.answer_text(None, {})
        else:
            spec = self.registry[name]
            props = list(spec.properties)
            state.feed(self._ids(P.ARGS_OPEN))
            position = -1
            while True:
                key, lp = self._choose(state, self.key_trie(spec, position))
                logprob += lp
                if key is _CLOSE:
                    break
                position = props.index(key)
                follow = self.key_trie(spec, position).first_tokens()
                value, lp = self._choose(state, self.value_trie(spec.properties[key], text), follow)
                logprob += lp
                arguments[key] = value
            out = P.answer_text(name, arguments)
        return Decoded(
            name=name, arguments=arguments, text=out, confidence=math.exp(logprob),
            name_confidence=math.exp(name_logprob), model_calls=state.calls,
            decided_tokens=state.decided, forced_tokens=state.forced,
        )
