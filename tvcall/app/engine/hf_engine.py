"""The local backend: a transformers model (base + merged adapter) with the staged constrained decoder."""

from __future__ import annotations

import ctypes
import gc
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tvcall.app.engine.base import Engine, RouteResult
from tvcall.app.engine.decoder import ConstrainedDecoder, Decoded, TransformersLM, common_prefix_length
from tvcall.app.engine.fastlm import FastLlama
from tvcall.app.engine.growth import choose_unseen_boost
from tvcall.app.engine.plan import (
    NameSettings,
    apply_to_retriever,
    conversational,
    load_act_threshold,
    load_calibration,
    settings_of,
    use_run_retriever,
    words_of,
)
from tvcall.data.mentions import LexiconLinker
from tvcall.data.prompt import prompt_ids
from tvcall.functions.registry import Registry, default_registry
from tvcall.functions.retrieve import Retrieved, Retriever
from tvcall.functions.validate import call_errors
from tvcall.model.load import cpu_bf16_native, load_run_model
from tvcall.run import DEFAULT_RUN_DIR, DEFAULT_TOP_OBJECTS, RunDir
from tvcall.training.refresh import Refresh

MAX_PROMPT_TOKENS = 384  # the fast path's cache holds 512 tokens: room for the longest answer after the prompt
FAST_BATCH = 16  # sequences the fast path decodes together: the router batches up to 16 requests
INT8_DECODE_ROWS = 16  # passes of up to this many tokens run on the fast path's int8 weights (`FastLlama.int8_rows`)
CALIBRATION_PROMPTS = 16  # prompts whose activation ranges smooth the fp32 fast path's int8 weights (`FastLlama.quantize`)


class TransformersEngine(Engine):
    """A transformers model (base + merged LoRA adapter) with the staged constrained decoder.

    backend "fast" runs the same weights through `FastLlama` (static prefix-cached KV, allowed-rows-only
    output projection); "hf" steps through transformers itself (the reference path).
    """

    def __init__(self, model: Any, tokenizer: Any, registry: Registry | None = None, backend: str = "fast",
                 top_objects: int | None = DEFAULT_TOP_OBJECTS, retriever: Retriever | None = None,
                 dtype: torch.dtype | None = None, prompt_options: bool = True, int8: bool = True) -> None:
        self.registry = registry or default_registry()
        self.top_objects = top_objects
        self.refreshed: Refresh | None = None  # what a registry grown past the run refitted (`from_run`)
        self.prompt_options = prompt_options  # as the model was trained: retrieved objects listed in the prompt
        self.max_prompt_tokens = MAX_PROMPT_TOKENS
        self.retriever = conversational(retriever or Retriever(self.registry)) if top_objects else None
        if self.retriever is not None and self.retriever.linker is None:
            self.retriever.linker = LexiconLinker(self.registry)
        self.tokenizer = tokenizer
        self.backend = backend
        self.model: Any = None  # the transformers model, kept by the "hf" path only
        if backend == "fast":
            # FastLlama copies the weights it runs; holding the transformers model too would keep a second copy
            # (0.5 GiB in float32) in the router's memory
            dtype = dtype or fast_dtype()
            int8_rows = INT8_DECODE_ROWS if int8 and dtype == torch.bfloat16 else 0
            fast = FastLlama(model.eval(), dtype=dtype, batch=FAST_BATCH, int8_rows=int8_rows)
            fast.set_prefix(shared_prompt_prefix(tokenizer))
            if int8 and dtype == torch.float32:
                fast.quantize(self.calibration_prompts())
            lm: Any = fast
        elif backend == "hf":
            self.model = model.eval()
            lm = TransformersLM(self.model)
        else:
            raise ValueError(f"unknown backend {backend!r} (fast, hf)")
        self.decoder = ConstrainedDecoder(lm, tokenizer, self.registry)
        self.decoder.words = lambda text: words_of(self.retriever)(text)  # follows the linker the retriever has now

    def calibration_prompts(self, count: int = CALIBRATION_PROMPTS) -> list[list[int]]:
        """Prompts as routing renders them, of a seeded sample of the registry's own descriptions, half in Chinese
        and half in English: inputs like the ones served, with no data folder needed."""
        names = random.Random(0).sample(self.registry.names, min(count, len(self.registry.names)))
        return [self.prompt(self.registry[name].description.forms("zh" if index % 2 == 0 else "en")[0])
                for index, name in enumerate(names)]

    def prompt(self, text: str) -> list[int]:
        """The prompt's tokens as routing renders them: with the retrieved objects listed when the run was trained so."""
        options: list[str] = []
        if self.retriever is not None and self.top_objects:
            found = self.retriever.retrieve(text, self.top_objects)
            options = found.options if self.prompt_options else []
        return prompt_ids(self.tokenizer, text, options)

    @classmethod
    def from_run(cls, run_dir: Path, registry: Registry | None = None, backend: str = "fast") -> TransformersEngine:
        """Load the base model named in the run's config and merge the run's LoRA adapter into it."""
        run = RunDir(run_dir)
        config = run.config()
        run.check_prompt_format()
        model, tokenizer = load_run_model(run.path)
        if getattr(model, "hf_quantizer", None) is not None or any(n.endswith("q_proj.bias") for n, _ in model.named_parameters()):
            backend = "hf"  # FastLlama takes plain bias-free weights: bitsandbytes exports and Qwen run through transformers
        engine = cls(model, tokenizer, registry or run.registry(), backend, config.retrieval_top_objects,
                     prompt_options=config.prompt_options)  # retrieval as the model was trained
        del model  # the fast path holds its own copy: free this one before the classifier loads (the router's peak memory)
        release_freed_memory()
        engine.name_settings = load_calibration(run)
        engine.act_threshold = load_act_threshold(run)
        engine.follows_up = run.summary().followup_examples > 0
        if engine.retriever is not None:  # a registry beyond the run's: its new functions grow the classifier
            def log(line: str) -> None:
                print(line, file=sys.stderr)

            engine.refreshed = refreshed = use_run_retriever(engine.retriever, run, log=log)
            if refreshed.new_functions and refreshed.unseen_boost is None:
                choose_unseen_boost(lambda texts: [r.name for r in engine.route_batch(texts, name_only=True)],
                                    engine.retriever, engine.top_objects, run, refreshed, log)
        return engine

    @property
    def name_settings(self) -> NameSettings:
        return settings_of(self.decoder.null_bias, self.decoder.prior_weight, self.retriever, self.decoder.followup_null_bias)

    @name_settings.setter
    def name_settings(self, settings: NameSettings) -> None:
        self.decoder.null_bias, self.decoder.prior_weight = settings.null_bias, settings.prior_weight
        self.decoder.followup_null_bias = settings.followup_null_bias
        apply_to_retriever(settings, self.retriever)

    def ready_schemas(self) -> float:
        """Compile (or load from the disk cache) every argument schema now, at start-up, rather than at a function's
        first call; the seconds it took."""
        started = time.perf_counter()
        self.decoder.guides.compile_all()
        return time.perf_counter() - started

    def route(self, text: str) -> RouteResult:
        return self.route_batch([text])[0]


    def route_batch(self, texts: list[str], name_only: bool = False) -> list[RouteResult]:
        """Route several utterances in one batched decode; results in order, each as `route` would give.
        `name_only`: choose the functions alone, as a whole decode would (no arguments, nothing validated)."""
        started = time.perf_counter()
        if self.retriever is not None and self.top_objects:
            found = [self.retriever.retrieve(t, self.top_objects) for t in texts]
            options = [f.options if self.prompt_options else () for f in found]
            decoded = self.decoder.decode_batch(texts, [f.functions for f in found], options, [f.prior for f in found],
                                                name_only)
            ranked = [likeliest(f) for f in found]
        else:
            decoded = self.decoder.decode_batch(texts, [None] * len(texts), [()] * len(texts), name_only=name_only)
            ranked = [[] for _ in texts]
        latency_ms = (time.perf_counter() - started) * 1000
        return [self._result(d, latency_ms, validate=not name_only, candidates=c) for d, c in zip(decoded, ranked, strict=True)]

    def _result(self, decoded: Decoded, latency_ms: float, validate: bool = True, candidates: list[str] | None = None) -> RouteResult:
        return RouteResult(candidates=(candidates or [])[:CANDIDATES_KEPT],
            name=decoded.name, arguments=decoded.arguments, confidence=decoded.confidence, latency_ms=latency_ms,
            raw=decoded.text, errors=call_errors(self.registry, decoded.name, decoded.arguments) if validate else [],
            stats={"model_calls": decoded.model_calls, "decided_tokens": decoded.decided_tokens,
                   "forced_tokens": decoded.forced_tokens},
            null_margin=decoded.null_margin,
        )


CANDIDATES_KEPT = 5  # the likeliest functions a result carries, for asking the user which one was meant


def likeliest(found: Retrieved) -> list[str]:
    """The retrieved functions, best first: by the classifier's prior where there is one, else in retrieval order."""
    return sorted(found.functions, key=lambda name: -found.prior.get(name, -math.inf)) if found.prior else found.functions


def fast_dtype() -> torch.dtype:
    """bf16 where the CPU multiplies it natively (AVX512-BF16 / AMX): on 2 cores it routed the test split 1.4× faster
    one at a time and 2.5× faster batched than fp32, with 594 of 600 calls identical; fp32 elsewhere."""
    return torch.bfloat16 if cpu_bf16_native() else torch.float32


def shared_prompt_prefix(tokenizer: Any) -> list[int]:
    """The prompt tokens every utterance shares (system turn and the user turn's header)."""
    a, b = prompt_ids(tokenizer, "a"), prompt_ids(tokenizer, "b")
    return a[:common_prefix_length(a, b)]


def release_freed_memory() -> None:
    """Hand memory Python has freed back to the OS: glibc kept 0.25 GiB of the freed transformers model in the
    router's resident memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def load_engine(run: str | None, model: str | None = None, threads: int | None = None,
                registry: Registry | None = None) -> TransformersEngine:
    """The local engine of a run folder, or of a base model without adapter (`model`); `registry`: route over it
    instead of the run's own."""
    set_threads(threads)
    if model:
        from tvcall.model.load import load_model, load_tokenizer

        return TransformersEngine(load_model(model), load_tokenizer(model), registry)
    return TransformersEngine.from_run(Path(run or DEFAULT_RUN_DIR), registry)
