"""The inference engine: text in, a validated function call out. Backends implement `Engine.route`."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from tvcall.app.decoder import ConstrainedDecoder
from tvcall.functions.registry import Registry, default_registry
from tvcall.functions.validate import call_errors
from tvcall.training.model import load_model, load_tokenizer


@dataclass
class RouteResult:
    name: str | None
    arguments: dict[str, Any]
    confidence: float
    latency_ms: float
    raw: str  # what the model produced
    errors: list[str] = field(default_factory=list)  # schema violations found after decoding
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.errors

    def call(self) -> dict[str, Any]:
        return {"name": None} if self.name is None else {"name": self.name, "arguments": self.arguments}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(ABC):
    registry: Registry

    @abstractmethod
    def route(self, text: str) -> RouteResult: ...


class TransformersEngine(Engine):
    """transformers model (base + merged LoRA adapter) with the staged constrained decoder."""

    def __init__(self, model: Any, tokenizer: Any, registry: Registry | None = None) -> None:
        self.registry = registry or default_registry()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decoder = ConstrainedDecoder(self.model, tokenizer, self.registry)

    @classmethod
    def from_run(cls, run_dir: Path, registry: Registry | None = None) -> TransformersEngine:
        """Load the base model named in the run's config and merge the run's LoRA adapter into it."""
        from peft import PeftModel

        from tvcall.training.train import ADAPTER_DIR, RUN_CONFIG

        config_path = Path(run_dir) / RUN_CONFIG
        if not config_path.exists():
            raise FileNotFoundError(f"{config_path} missing: train first (`tvcall train`)")
        config = yaml.safe_load(config_path.read_text())
        model = load_model(config["model"])
        adapter = Path(run_dir) / ADAPTER_DIR
        if (adapter / "adapter_config.json").exists():
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        return cls(model, load_tokenizer(config["model"]), registry)

    def route(self, text: str) -> RouteResult:
        started = time.perf_counter()
        decoded = self.decoder.decode(text)
        errors = call_errors(self.registry, decoded.name, decoded.arguments)
        return RouteResult(
            name=decoded.name, arguments=decoded.arguments, confidence=decoded.confidence,
            latency_ms=(time.perf_counter() - started) * 1000, raw=decoded.text, errors=errors,
            stats={"model_calls": decoded.model_calls, "decided_tokens": decoded.decided_tokens,
                   "forced_tokens": decoded.forced_tokens},
        )


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
