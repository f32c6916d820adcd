"""The Qwen2.5-7B presets: what each one asks for, and that it resolves on a tiny Qwen2 stand-in."""

import json

import pytest
import torch
from peft import get_peft_model
from trl import SFTConfig

from tvcall.model.build import attn_implementation, run_bnb_config
from tvcall.model.load import load_model
from tvcall.run import RunDir
from tvcall.training.config import deepspeed_path, load_config
from tvcall.training.train import lora_config, on_this_machine, training_args

PRESETS = ["qwen2.5-7b-lora", "qwen2.5-7b-lora-all", "qwen2.5-7b-qlora", "qwen2.5-7b-full"]


@pytest.mark.parametrize("preset", PRESETS)
def test_qwen_presets_load_and_name_the_hub_model(preset):
    config = load_config(preset)
    assert config.model == "Qwen/Qwen2.5-7B-Instruct" and config.dtype == "bfloat16" and config.trainer["bf16"]
    assert config.attn_implementation == "auto"
    assert config.prompt_options is False  # bare prompts, as the CPU default measured best (the shared base says why)


def test_qwen_presets_share_one_base_and_differ_only_where_they_say():
    base = load_config("qwen2.5-7b")
    for preset in PRESETS:
        config = load_config(preset)
        assert (config.model, config.dtype, config.retrieval_top_objects, config.num_train_examples) == (
            base.model, base.dtype, base.retrieval_top_objects, base.num_train_examples)
        assert config.trainer["lr_scheduler_type"] == base.trainer["lr_scheduler_type"] == "cosine"


def test_each_preset_asks_for_its_method():
    lora, lora_all, qlora, full = (load_config(p) for p in PRESETS)
    assert lora.method == "lora" and lora.lora["target_modules"] == ["q_proj", "v_proj"]
    assert lora_all.method == "lora" and lora_all.lora["target_modules"] == "all-linear" and lora_all.lora["r"] > lora.lora["r"]
    assert qlora.method == "qlora" and qlora.trainer["optim"] == "paged_adamw_8bit"
    assert (qlora.bnb_4bit_quant_type, qlora.bnb_4bit_use_double_quant, qlora.bnb_4bit_compute_dtype) == ("nf4", True, "bfloat16")
    assert full.method == "full" and full.trainer["gradient_checkpointing"]
    zero = json.loads(open(deepspeed_path(full.trainer["deepspeed"])).read())
    assert zero["zero_optimization"]["stage"] == 3 and zero["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_cpu_default_keeps_the_trainer_defaults_but_its_measured_speed_settings():
    """eager attention, bf16 frozen weights and bare prompts: each measured faster per example on 2 cores."""
    config = load_config("cpu-default")
    assert (config.dtype, config.attn_implementation) == ("bfloat16", "eager")
    assert "optim" not in config.trainer and "deepspeed" not in config.trainer
    assert config.prompt_options is False and config.retrieval_top_objects == 4
    trainer_default = SFTConfig(output_dir="/tmp/unused", use_cpu=True).optim
    assert training_args(on_this_machine(config), RunDir("/tmp/unused")).optim == trainer_default


def test_optimizer_and_deepspeed_pass_through_to_sft_config(tmp_path):
    qlora = load_config("qwen2.5-7b-qlora")
    assert training_args(qlora, RunDir(tmp_path)).optim == "paged_adamw_8bit"
    assert load_config("qwen2.5-7b-full").trainer["deepspeed"] == "ds_zero3.json"  # resolved by training_args


def test_qlora_builds_nf4_double_quant_bf16_compute():
    bnb = run_bnb_config(load_config("qwen2.5-7b-qlora"))
    assert bnb.load_in_4bit and not bnb.load_in_8bit
    assert bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16


def test_attention_auto_is_sdpa_without_a_gpu():
    if not torch.cuda.is_available():
        assert attn_implementation("auto") == "sdpa"
    assert attn_implementation(None) is None and attn_implementation("eager") == "eager"


def _lora_modules(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A}


def test_lora_targets_resolve_on_a_tiny_qwen2(qwen_dir):
    config = load_config("qwen2.5-7b-lora", [f"model={qwen_dir}"])
    model = load_model(config.model)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA, as in Qwen2.5-7B
    peft_model = get_peft_model(model, lora_config(config))
    assert _lora_modules(peft_model) == {"q_proj", "v_proj"}
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and m.lora_A]
    assert len(wrapped) == 2 * model.config.num_hidden_layers


def test_all_linear_targets_every_decoder_linear_but_not_lm_head(qwen_dir):
    config = load_config("qwen2.5-7b-lora-all", [f"model={qwen_dir}"])
    peft_model = get_peft_model(load_model(config.model), lora_config(config))
    assert _lora_modules(peft_model) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_top_layers_adapt_only_the_last_layers(qwen_dir):
    config = load_config("qwen2.5-7b-lora-all", [f"model={qwen_dir}", "lora_top_layers=1"])
    model = load_model(config.model)
    peft_model = get_peft_model(model, lora_config(config, model))
    last = model.config.num_hidden_layers - 1
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and m.lora_A]
    assert wrapped and all(f".layers.{last}." in n for n in wrapped)
    assert _lora_modules(peft_model) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
