"""The vLLM backend, in-process: `vllm.LLM` on the base model, LoRA adapters chosen per request, and the two
guided stages of `tvcall.app.engine.guided` as vLLM structured outputs (`StructuredOutputsParams`: a choice for the
name, the call's JSON schema for the arguments).

The prompt goes in as token ids from the one prompt renderer (`prompt_ids`), so vLLM sees exactly the tokens
the model was trained on. vllm is imported only when an engine is built: this module imports without it.
What the engine asks vLLM is built as plain data by the pure functions below (`vllm_batch`: token ids,
SamplingParams fields, LoRARequest fields), which the tests check without vllm.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvcall.app.engine.guided import CALL_MAX_TOKENS, Generation, GuidedEngine, Prompt, Stage, TokenChoice, structured_outputs
from tvcall.data.prompt import prompt_ids
from tvcall.functions.registry import Registry
from tvcall.run import DEFAULT_TOP_OBJECTS, RunDir

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's `max_lora_rank` accepts


def sampling_kwargs(stage: Stage) -> dict[str, Any]:
    """`vllm.SamplingParams` fields for one stage: greedy, bounded, constrained; the name stage reports the
    sampled tokens' log-probabilities for the confidence, and the top alternatives' where the stage asks
    (`logprobs=N`: the sampled token's and the N likeliest)."""
    kwargs: dict[str, Any] = {"temperature": 0.0, "max_tokens": stage.max_tokens, "structured_outputs": structured_outputs(stage)}
    if stage.kind == "name":
        kwargs["logprobs"] = stage.top_logprobs
    return kwargs


def token_choices(tokenizer: Any, token_ids: Sequence[int], logprobs: Sequence[dict[int, Any]] | None) -> list[TokenChoice]:
    """vLLM's per-token `{token id: Logprob}` as the guided engine reads a server's: the sampled token and the
    alternatives, by text."""
    if not logprobs:
        return []
    return [TokenChoice(tokenizer.decode([token]), float(alternatives[token].logprob),
                        {tokenizer.decode([t]): float(lp.logprob) for t, lp in alternatives.items()})
            for token, alternatives in zip(token_ids, logprobs, strict=True)]


def lora_kwargs(path: str, lora_int_id: int) -> dict[str, Any]:
    """`vllm.lora.request.LoRARequest` fields: the adapter's folder is its name; ids are 1, 2, … per engine."""
    return {"lora_name": str(path), "lora_int_id": lora_int_id, "lora_path": str(path)}


@dataclass
class VLLMBatch:
    """Everything one `LLM.generate` call takes, as plain data: TokensPrompt dicts, SamplingParams fields
    and LoRARequest fields (None: the base model), one of each per request."""

    prompts: list[dict[str, list[int]]]
    sampling: list[dict[str, Any]]
    loras: list[dict[str, Any] | None]


def vllm_batch(tokenizer: Any, prompts: Sequence[Prompt], stages: Sequence[Stage], default_adapter: str | None,
               lora_ids: dict[str, int]) -> VLLMBatch:
    """The requests for one batch of stages; each adapter folder keeps the id it got first (`lora_ids` grows)."""
    loras: list[dict[str, Any] | None] = []
    for prompt in prompts:
        path = prompt.adapter or default_adapter
        loras.append(None if path is None else lora_kwargs(path, lora_ids.setdefault(path, len(lora_ids) + 1)))
    return VLLMBatch(prompts=[{"prompt_token_ids": prompt_ids(tokenizer, p.text, p.options)} for p in prompts],
                     sampling=[sampling_kwargs(stage) for stage in stages], loras=loras)


def lora_rank_limit(path: str | Path) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds the adapter's rank (`r` in adapter_config.json)."""
    rank = int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])
    return next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1])


class VLLMEngine(GuidedEngine):
    """`vllm.LLM(model)`; `adapter` is the default LoRA adapter folder (None: the base model), and
    `route_batch(texts, adapters)` takes one adapter per text. `llm_kwargs` go to `vllm.LLM` (dtype,
    gpu_memory_utilization, max_model_len, enforce_eager, …)."""

    def __init__(self, model: str, adapter: str | Path | None = None, registry: Registry | None = None,
                 top_objects: int | None = DEFAULT_TOP_OBJECTS, enable_lora: bool | None = None, max_lora_rank: int | None = None,
                 copy_spans: bool = True, **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("the vllm backend needs vLLM on a GPU machine (pip install vllm)") from exc
        from tvcall.model.load import load_tokenizer, resolve_model_path

        super().__init__(registry, top_objects, copy_spans)
        self.adapter = str(adapter) if adapter is not None else None
        enable_lora = self.adapter is not None if enable_lora is None else enable_lora
        if enable_lora:
            llm_kwargs = {"enable_lora": True, "max_lora_rank": max_lora_rank or (lora_rank_limit(self.adapter) if self.adapter else 64),
                          "max_loras": 4, **llm_kwargs}  # adapters in one batch
        self.llm = LLM(model=resolve_model_path(model), **llm_kwargs)
        self.tokenizer = load_tokenizer(model)  # the training tokenizer: prompts are its token ids
        self.max_prompt_tokens = int(self.llm.model_config.max_model_len) - CALL_MAX_TOKENS  # read by the router's batcher
        self._lora_ids: dict[str, int] = {}

    @classmethod
    def from_run(cls, run_dir: Path, registry: Registry | None = None, **llm_kwargs: Any) -> VLLMEngine:
        """The run's base model with the run's adapter as the default, retrieving as the model was trained."""
        run = RunDir(run_dir)
        config = run.config()
        engine = cls(run.model_source(config), run.adapter_dir if run.has_adapter else None, registry,
                     config.retrieval_top_objects, **llm_kwargs)
        engine.use_run(run.path)
        return engine

    def generate(self, prompts: Sequence[Prompt], stages: Sequence[Stage]) -> list[Generation]:
        if not prompts:
            return []
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import StructuredOutputsParams

        batch = vllm_batch(self.tokenizer, prompts, stages, self.adapter, self._lora_ids)
        params = [SamplingParams(**{**k, "structured_outputs": StructuredOutputsParams(**k["structured_outputs"])}) for k in batch.sampling]
        loras = [LoRARequest(**k) if k is not None else None for k in batch.loras]
        outputs = self.llm.generate(batch.prompts, params, use_tqdm=False, lora_request=loras)
        return [Generation(text=o.outputs[0].text, logprob=o.outputs[0].cumulative_logprob, prompt_tokens=len(o.prompt_token_ids or []),
                           completion_tokens=len(o.outputs[0].token_ids),
                           tokens=token_choices(self.tokenizer, o.outputs[0].token_ids, o.outputs[0].logprobs)) for o in outputs]
