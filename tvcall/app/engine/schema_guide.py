"""The argument stage's schema constraint, through outlines.

Each distinct parameter schema of the registry is compiled once by outlines (JSON schema → regular expression
→ an index of the tokens allowed in each state over the model's whole vocabulary), shared by every function
with that schema (1,325 functions have about 200 distinct schemas, 3,153 have 337) and kept on disk for the
next process (`load_or_compile`). A guide walks the answer from the end of the
name, `,"arguments":{...}}`, in the compact JSON the model writes. The decoder's own tries add what no static
schema can say (only spans of this utterance for a copied string, integer bounds, which outlines-core's JSON
regex does not enforce, values said in the utterance), so a token must pass both.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from outlines.backends.outlines_core import OutlinesCoreBackend
from outlines.models.transformers import TransformerTokenizer
from outlines_core import Guide, Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from tvcall.data import prompt as P
from tvcall.functions.registry import Registry
from tvcall.functions.spec import strip_private_keywords
from tvcall.model.load import cache_dir

COMPACT = ""  # no whitespace between JSON tokens: the answer format of tvcall.data.prompt


class GuideError(RuntimeError):
    """The decoder's tries and the outlines schema disagree: a bug, never a model error."""


def arguments_regex(schema: dict[str, Any]) -> str:
    """The answer from the end of the name: the arguments key, the arguments object, the call's closing brace."""
    if not (P.ARGS_OPEN.endswith("{") and P.ARGS_CLOSE == "}}"):
        raise ValueError("the answer format changed: arguments_regex assumes ',\"arguments\":{' ... '}}'")
    return re.escape(P.ARGS_OPEN[:-1]) + build_regex_from_schema(json.dumps(schema), COMPACT) + re.escape(P.ARGS_CLOSE[1:])


def outlines_vocabulary(tokenizer: Any) -> Vocabulary:
    """The tokenizer's vocabulary as outlines-core indexes it (0.6 s for SmolLM2's 49k tokens)."""
    return OutlinesCoreBackend.create_outlines_core_vocabulary(
        tokenizer.get_vocab(), tokenizer.eos_token_id, tokenizer.eos_token,
        TransformerTokenizer(tokenizer).convert_token_to_string)


@cache
def _vocabulary(tokenizer: Any) -> Vocabulary:
    """Built when a schema must be compiled, not at start-up: a process that finds every index on disk needs none."""
    return outlines_vocabulary(tokenizer)


@cache
def _compiled(tokenizer: Any) -> tuple[dict[str, Index], Path]:
    """One schema JSON → index cache per tokenizer, shared by every decoder in the process (an eval's engine and its
    reference, a test run's many engines) instead of rebuilt by each; and the folder of its indexes on disk."""
    return {}, index_cache_dir(tokenizer)


def index_cache_dir(tokenizer: Any) -> Path:
    """Where compiled indexes for this tokenizer live: keyed by its vocabulary and the outlines-core version.

    A fast tokenizer is fingerprinted by its serialised form (40 ms for SmolLM2's), which holds the vocabulary;
    others by their sorted vocabulary (180 ms)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    described = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    fingerprint = hashlib.sha256(json.dumps([described, tokenizer.eos_token_id, version("outlines-core")]).encode())
    return cache_dir() / "schema-indexes" / fingerprint.hexdigest()[:24]


def load_or_compile(regex: str, vocabulary: Callable[[], Vocabulary], folder: Path) -> Index:
    """The index of `regex`, from the disk cache when an earlier process compiled it (a schema takes 50–100 ms to
    compile on 2 cores, 337 of them 19 s; loading one takes about 1 ms), else compiled and written there."""
    path = folder / (hashlib.sha256(regex.encode()).hexdigest()[:32] + ".pickle")
    if path.exists():
        try:
            return pickle.loads(path.read_bytes())  # written by this function only, in the user's own cache
        except Exception:  # a damaged or truncated file fails in many ways (AttributeError, IndexError, ...):
            pass  # compile again and replace it
    index = Index(regex, vocabulary())
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(index))
    os.replace(tmp, path)
    return index


class SchemaGuides:
    def __init__(self, tokenizer: Any, registry: Registry, cache_folder: Path | None = None) -> None:
        """`cache_folder`: compiled indexes on disk there, and none shared with other decoders of the process
        (the bench's cold and cached start-ups); default: the tokenizer's folder in the user's cache."""
        self.registry, self.tokenizer = registry, tokenizer
        # _indexes: schema JSON → compiled index
        self._indexes, self._cache_folder = ({}, cache_folder) if cache_folder is not None else _compiled(tokenizer)
        self._schemas: dict[str, str] = {}  # function name → its schema as JSON

    def schema_key(self, name: str) -> str:
        if name not in self._schemas:
            # not sort_keys: the order of "properties" is the order the keys must come in
            self._schemas[name] = json.dumps(strip_private_keywords(self.registry[name].parameters))
        return self._schemas[name]

    def index(self, name: str) -> Index:
        key = self.schema_key(name)
        if key not in self._indexes:
            self._indexes[key] = load_or_compile(arguments_regex(json.loads(key)), lambda: _vocabulary(self.tokenizer),
                                                     self._cache_folder)
        return self._indexes[key]

    def guide(self, name: str) -> Guide:
        return Guide(self.index(name))

    def compile_all(self) -> int:
        """Compile (or load from the disk cache) every schema of the registry now, at a server's start-up, rather
        than at a function's first call; the number of distinct schemas."""
        for name in self.registry.names:
            self.index(name)
        return len({self.schema_key(name) for name in self.registry.names})


def advance(guide: Guide, tokens: list[int], name: str) -> None:
    for token in tokens:
        if not guide.accepts_tokens([token]):
            raise GuideError(f"{name}: the schema refuses token {token} the decoder chose")
        guide.advance(token, return_tokens=False)


def admitted(guide: Guide, tokens: list[int]) -> list[int]:
    return [t for t in tokens if guide.accepts_tokens([t])]
