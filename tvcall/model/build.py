"""How a run builds its base model for training: weight dtype, attention kernel, bitsandbytes quantisation, placement.

lora and full load 16/32-bit weights; qlora loads the linear layers in 4-bit (NF4, double quantisation,
bf16 compute) and prepares the model for k-bit training. Trap (MEASURED.md): never run an inference forward
on a 4-bit model before or during its training.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from transformers import BitsAndBytesConfig, PreTrainedModel

from tvcall.model.load import load_model
from tvcall.run import RunConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r} (known: {', '.join(DTYPES)})")
    return DTYPES[name]


def attn_implementation(requested: str | None) -> str | None:
    """`auto`: FlashAttention 2 when it is installed and a GPU is there, else PyTorch SDPA."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def bnb_4bit_config(quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "bfloat16") -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch_dtype(compute_dtype),
    )


def bnb_8bit_config() -> BitsAndBytesConfig:
    return BitsAndBytesConfig(load_in_8bit=True)


def run_bnb_config(config: RunConfig) -> BitsAndBytesConfig:
    return bnb_4bit_config(config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant, config.bnb_4bit_compute_dtype)


def quantized_device_map() -> dict[str, int] | None:
    """A quantised model is placed at load time: each process's whole model on its own GPU."""
    if not torch.cuda.is_available():
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def build_model(config: RunConfig) -> PreTrainedModel:
    """The base model as `config.method` trains it (lora/full: plain weights; qlora: 4-bit, prepared for k-bit training)."""
    kwargs: dict[str, Any] = {}
    attn = attn_implementation(config.attn_implementation)
    if attn:
        kwargs["attn_implementation"] = attn
    if config.method == "qlora":
        kwargs |= {"quantization_config": run_bnb_config(config), "device_map": quantized_device_map()}
    model = load_model(config.model, dtype=torch_dtype(config.dtype), **kwargs)
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.training_setting("gradient_checkpointing"))
    return model


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of a loaded model's state: parameters and persistent buffers, and for bitsandbytes layers their
    quantisation constants too (the state dict holds them all); tied weights count once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
