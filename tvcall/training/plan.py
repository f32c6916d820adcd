"""GPU memory for a fine-tuning run from the model's config alone (no weights): weights, gradients,
optimizer states and activations.

Parameters are counted exactly: the model is built on the meta device from its config and LoRA is attached
by peft with the run's own `LoraConfig`. Each tensor is then sized the way the run stores it:
- full: weights and gradients in the run's dtype, AdamW's two moments; 16-bit weights under DeepSpeed also
  keep an fp32 master copy (mixed precision: 2 + 2 + 4 + 8 = 16 bytes per parameter);
- lora: the frozen base in the run's dtype; adapters in fp32 (peft upcasts them; bf16 under ZeRO-3, where
  trl keeps them in the base dtype);
- qlora: the decoder's linear weights in 4 bits plus quantisation constants (per 64-weight block an fp32
  absmax, or with double quantisation one byte plus an fp32 per 256 blocks); the rest (embeddings, lm_head,
  norms, biases) in fp32, as peft's prepare_model_for_kbit_training leaves it; adapters in bf16 (trl casts
  them);
- 8-bit optimizers (bitsandbytes): one byte per moment and an fp32 per 256-block for tensors of at least
  4096 elements, fp32 moments below that.
Activations are an estimate (`activation_bytes`); CUDA context and allocator slack are not counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from tvcall.model.build import torch_dtype
from tvcall.model.load import resolve_model_path
from tvcall.run import RunConfig
from tvcall.training.config import deepspeed_path, load_config

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
SHIPPED = {  # model names and hub ids whose config.json values ship in model_configs/
    "qwen2.5-7b": "qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b", "Qwen/Qwen2.5-7B": "qwen2.5-7b",
    "qwen1.5-7b": "qwen1.5-7b", "Qwen/Qwen1.5-7B-Chat": "qwen1.5-7b", "Qwen/Qwen1.5-7B": "qwen1.5-7b",
}
METHOD_PRESETS = {"full": "qwen2.5-7b-full", "lora": "qwen2.5-7b-lora", "qlora": "qwen2.5-7b-qlora"}
SEED_STATIC_GB = {"full": 112.0, "lora": 14.3, "qlora": 4.5}  # the seed's figures for a 7B model
DEFAULT_SEQ_LEN = 512
NF4_BLOCK, NESTED_BLOCK, OPTIM_8BIT_BLOCK, MIN_8BIT_SIZE = 64, 256, 256, 4096
QUANT_STATE_JSON = 160  # bytes of the packed quant-state record bitsandbytes keeps per 4-bit weight (shape, dtype, offset)


@dataclass
class Plan:
    model: str
    method: str
    params_total: int
    params_trainable: int
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    adapter: str = ""  # e.g. "r=16 on q_proj, v_proj"
    lora_r: int = 0
    weights_by_kind: dict[str, int] = field(default_factory=dict)
    params_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def static_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> int:
        return self.static_bytes + self.activations_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method, "params_total": self.params_total, "params_trainable": self.params_trainable,
            "weights_gb": gb(self.weights_bytes), "grads_gb": gb(self.grads_bytes), "optimizer_gb": gb(self.optimizer_bytes),
            "activations_gb": gb(self.activations_bytes), "total_gb": gb(self.total_bytes),
        }


def gb(n: int) -> float:
    return round(n / 1e9, 3)


def load_model_config(model: str) -> PretrainedConfig:
    """The shipped config of a known model (by name or hub id), else the config.json of a local folder."""
    if model in SHIPPED:
        data = json.loads((MODEL_CONFIG_DIR / f"{SHIPPED[model]}.json").read_text())
        data.pop("_source", None)
        return AutoConfig.for_model(data.pop("model_type"), **data)
    try:
        return AutoConfig.from_pretrained(resolve_model_path(model), local_files_only=True)
    except OSError as exc:
        known = ", ".join(sorted(SHIPPED))
        raise FileNotFoundError(f"{model}: no local config.json and no shipped config (shipped: {known})") from exc


def empty_model(config: RunConfig) -> torch.nn.Module:
    """The run's model on the meta device (no memory), with LoRA attached as training attaches it."""
    from peft import get_peft_model

    from tvcall.training.train import lora_config

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(load_model_config(config.model))
    model.tie_weights()  # from_config leaves them untied on the meta device
    if config.method == "full":
        return model
    with init_empty_weights():  # adapters on the meta device too (no memory, no initialisation)
        return get_peft_model(model, lora_config(config, model))


def quant_4bit_bytes(numel: int, double_quant: bool) -> tuple[int, int]:
    """(packed weight bytes, quantisation-constant bytes) of one linear weight in bitsandbytes 4-bit."""
    blocks = math.ceil(numel / NF4_BLOCK)
    fixed = 16 * 4 + QUANT_STATE_JSON  # the 16-value NF4/FP4 code book in fp32, the packed quant-state record
    if double_quant:  # uint8 absmax per block, fp32 absmax per 256 blocks, the 256-value fp32 code of the absmax
        return math.ceil(numel / 2), blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 256 * 4 + fixed
    return math.ceil(numel / 2), 4 * blocks + fixed


def optimizer_state_bytes(numel: int, param_bytes: int, optim: str | None, master_copy: bool) -> int:
    """AdamW's two moments (plus an fp32 master copy of 16-bit weights under mixed precision)."""
    if optim and "8bit" in optim:
        if numel < MIN_8BIT_SIZE:
            return 2 * 4 * numel
        return 2 * (numel + 4 * math.ceil(numel / OPTIM_8BIT_BLOCK))
    if master_copy:
        return 4 * numel + 2 * 4 * numel
    return 2 * param_bytes * numel


def activation_bytes(config: PretrainedConfig, batch: int, seq_len: int, checkpointing: bool) -> int:
    """Estimate of what autograd keeps for one micro-batch, with SDPA/FlashAttention (no seq × seq scores).

    Per token and decoder layer: the two RMSNorm inputs in fp32 and their bf16 outputs, q/k/v before and after
    RoPE, the attention output, and the MLP's gate, up, SiLU(gate) and product (18h + 6·kv + 8i bytes).
    Checkpointing keeps each layer's bf16 input and recomputes one layer at a time. The loss keeps the logits
    in bf16 and fp32 and the fp32 log-softmax (10 bytes per vocabulary entry per token).
    """
    h, i = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = 18 * h + 6 * kv + 8 * i
    layers = config.num_hidden_layers
    tokens = batch * seq_len
    kept = tokens * (layers * 2 * h + per_layer) if checkpointing else tokens * layers * per_layer
    return kept + tokens * config.vocab_size * 10


def zero_stage(deepspeed: str | None) -> int | None:
    path = deepspeed_path(deepspeed)
    return json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage") if path else None


def plan(config: RunConfig, batch_size: int | None = None, seq_len: int = DEFAULT_SEQ_LEN) -> Plan:
    model = empty_model(config)
    dtype_bytes = torch.empty(0, dtype=torch_dtype(config.dtype)).element_size()
    deepspeed, checkpointing = config.training_setting("deepspeed"), config.training_setting("gradient_checkpointing")
    zero3 = zero_stage(deepspeed) == 3
    master_copy = config.method == "full" and dtype_bytes == 2 and bool(deepspeed)
    trainable_bytes = {"qlora": 2, "lora": dtype_bytes if zero3 else 4, "full": dtype_bytes}[config.method]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm_head = base.get_output_embeddings()
    weights: dict[str, int] = {}
    params: dict[str, int] = {}
    grads = optimizer = 0

    def add(kind: str, count: int, size: int) -> None:
        weights[kind] = weights.get(kind, 0) + size
        params[kind] = params.get(kind, 0) + count

    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights
                continue
            seen.add(id(param))
            n = param.numel()
            if param.requires_grad:
                add("trainable", n, n * trainable_bytes)
                grads += n * trainable_bytes
                optimizer += optimizer_state_bytes(n, trainable_bytes, config.training_setting("optim"), master_copy)
            elif config.method == "qlora" and isinstance(module, torch.nn.Linear) and module is not lm_head and name == "weight":
                packed, constants = quant_4bit_bytes(n, config.bnb_4bit_use_double_quant)
                add("quantized", n, packed)
                add("quant_constants", 0, constants)
            else:
                add("unquantized" if config.method == "qlora" else "frozen", n, n * (4 if config.method == "qlora" else dtype_bytes))
    batch = batch_size or config.training_setting("per_device_train_batch_size")
    model_config = base.config
    return Plan(
        model=config.model, method=config.method, params_total=sum(params.values()), params_trainable=params.get("trainable", 0),
        weights_bytes=sum(weights.values()), grads_bytes=grads, optimizer_bytes=optimizer,
        activations_bytes=activation_bytes(model_config, batch, seq_len, checkpointing),
        batch_size=batch, seq_len=seq_len, gradient_checkpointing=checkpointing,
        adapter=lora_description(config), lora_r=config.lora["r"] if config.method != "full" else 0,
        weights_by_kind=weights, params_by_kind=params,
    )


def lora_description(config: RunConfig) -> str:
    if config.method == "full":
        return ""
    targets = config.lora["target_modules"]
    layers = f", last {config.lora_top_layers} layers" if config.lora_top_layers else ""
    return f"r={config.lora['r']} on {targets if isinstance(targets, str) else ', '.join(targets)}{layers}"


def method_config(model: str, method: str) -> RunConfig:
    """The Qwen2.5-7B preset of `method` with its model replaced."""
    return load_config(METHOD_PRESETS[method], [f"model={model}"])


# --- report ----------------------------------------------------------------------------------------
def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def table(plans: list[Plan]) -> str:
    seed = any(p.params_total > 5e9 for p in plans)
    head = (f"{'model':<26} {'method':<6} {'params':>7} {'trainable':>17} {'weights':>8} {'grads':>7} {'optim':>7} "
            f"{'static':>8} {'activ.':>7} {'total':>8}" + ("   seed static (7B)" if seed else ""))
    lines = [head]
    for p in plans:
        share = 100 * p.params_trainable / p.params_total
        line = (f"{p.model:<26} {p.method:<6} {_count(p.params_total):>7} {_count(p.params_trainable) + f' ({share:.3f}%)':>17} "
                f"{gb(p.weights_bytes):>8.2f} {gb(p.grads_bytes):>7.2f} {gb(p.optimizer_bytes):>7.2f} {gb(p.static_bytes):>8.2f} "
                f"{gb(p.activations_bytes):>7.2f} {gb(p.total_bytes):>8.2f}")
        if seed:
            ref = SEED_STATIC_GB[p.method]
            line += f"   {ref:>6.1f} ({100 * (gb(p.static_bytes) / ref - 1):+.0f}%)"
        lines.append(line)
    return "\n".join(lines)


def qlora_note(p: Plan) -> str:
    """Why QLoRA's static memory is not 4 bits × the parameters (the seed's 4.5 GB for 7B)."""
    w, n = p.weights_by_kind, p.params_by_kind
    unq = w.get("unquantized", 0)
    return (
        f"QLoRA {p.model}: {gb(p.static_bytes):.2f} GB static, not the seed's {SEED_STATIC_GB['qlora']} GB. "
        f"4-bit covers only the decoder's linear weights ({_count(n.get('quantized', 0))}: {gb(w.get('quantized', 0)):.2f} GB) "
        f"plus their quantisation constants ({gb(w.get('quant_constants', 0)):.2f} GB, double-quantised absmax). "
        f"{_count(n.get('unquantized', 0))} parameters are never quantised: embeddings and lm_head, RMSNorm weights and "
        f"q/k/v biases; peft's prepare_model_for_kbit_training upcasts them to fp32: {gb(unq):.2f} GB "
        f"({gb(unq // 2):.2f} GB had they stayed 16-bit). The LoRA adapters ({_count(p.params_trainable)}, bf16) with their "
        f"gradients and paged 8-bit AdamW states add {gb(w.get('trainable', 0) + p.grads_bytes + p.optimizer_bytes):.2f} GB."
    )


def lora_note(p: Plan) -> str:
    share = 100 * p.params_trainable / p.params_total
    return (
        f"LoRA {p.model}: {share:.3f}% trainable ({p.adapter}); the seed's ~0.3% would be about r={round(p.lora_r * 0.3 / share)} "
        f"on the same modules. Either way the static memory is the frozen 16-bit base ({gb(p.weights_by_kind.get('frozen', 0)):.2f} GB) "
        f"plus {gb(p.weights_by_kind.get('trainable', 0) + p.grads_bytes + p.optimizer_bytes):.2f} GB for fp32 adapters, gradients and AdamW states."
    )


def report(plans: list[Plan]) -> str:
    first = plans[0]
    out = [
        f"GPU memory plan, GB = 1e9 bytes. static = weights + gradients + optimizer states; activations (estimate) for "
        f"batch {first.batch_size} x {first.seq_len} tokens, with the preset's gradient checkpointing; CUDA context not counted.",
        table(plans),
    ]
    if any(p.params_total > 5e9 for p in plans):  # the seed's 7B figures are in the table
        out += [lora_note(p) for p in plans if p.method == "lora"] + [qlora_note(p) for p in plans if p.method == "qlora"]
    return "\n".join(out)
