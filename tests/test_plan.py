"""The memory planner: the seed's 7B figures, and agreement with models actually loaded here."""

import json

import bitsandbytes as bnb
import pytest
from peft import get_peft_model

from tvcall.cli import main
from tvcall.model.build import build_model, state_bytes
from tvcall.training.config import load_config, with_settings
from tvcall.training.plan import SEED_STATIC_GB, method_config, plan
from tvcall.training.train import lora_config

QWEN15_PARAMS = 7_721_324_544  # 15,442,649,088 bytes in bf16 in the published checkpoint
QWEN25_PARAMS = 7_615_616_512


@pytest.fixture(scope="module")
def qwen15() -> dict:
    return {method: plan(method_config("qwen1.5-7b", method), 1, 512) for method in ("full", "lora", "qlora")}


def test_parameter_counts_match_the_published_checkpoints(qwen15):
    assert qwen15["full"].params_total == QWEN15_PARAMS
    assert plan(method_config("qwen2.5-7b", "full"), 1, 512).params_total == QWEN25_PARAMS


def test_full_fine_tuning_is_16_bytes_per_parameter_within_15_percent_of_the_seed(qwen15):
    full = qwen15["full"]
    assert full.static_bytes == 16 * QWEN15_PARAMS  # bf16 weights + bf16 grads + fp32 master, m and v
    assert abs(full.static_bytes / 1e9 / SEED_STATIC_GB["full"] - 1) < 0.15


def test_lora_on_q_and_v_is_within_15_percent_of_the_seed(qwen15):
    lora = qwen15["lora"]
    assert abs(lora.static_bytes / 1e9 / SEED_STATIC_GB["lora"] - 1) < 0.15
    assert lora.params_trainable == 32 * 2 * 16 * (4096 + 4096)  # r=16 on q_proj and v_proj, 32 layers
    assert lora.params_trainable / lora.params_total < 0.003


def test_qlora_quantises_only_the_decoder_linears(qwen15):
    qlora = qwen15["qlora"]
    w, n = qlora.weights_by_kind, qlora.params_by_kind
    assert n["unquantized"] == 2 * 151936 * 4096 + (2 * 32 + 1) * 4096 + 32 * 3 * 4096  # embeddings, lm_head, norms, q/k/v biases
    assert w["unquantized"] == 4 * n["unquantized"]  # fp32 after prepare_model_for_kbit_training
    assert w["quantized"] == n["quantized"] // 2 and 0 < w["quant_constants"] < 0.04 * w["quantized"]
    assert qlora.static_bytes < qwen15["lora"].static_bytes


def test_plan_cli_prints_the_seed_figures_and_qwen25_beside(capsys):
    assert main(["plan", "--model", "qwen1.5-7b"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-7b" in out and "112.0" in out and "14.3" in out and "4.5" in out
    assert "QLoRA qwen1.5-7b" in out and "embeddings and lm_head" in out


def test_plan_json_has_the_documented_keys(capsys):
    assert main(["plan", "--model", "qwen2.5-7b", "--method", "lora", "--json", "--batch-size", "2", "--seq-len", "256"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert list(row) == ["method", "params_total", "params_trainable", "weights_gb", "grads_gb", "optimizer_gb", "activations_gb", "total_gb"]
    assert row["method"] == "lora" and row["params_total"] > QWEN25_PARAMS
    assert row["total_gb"] == pytest.approx(row["weights_gb"] + row["grads_gb"] + row["optimizer_gb"] + row["activations_gb"], abs=0.005)


def test_activations_grow_with_batch_and_shrink_with_checkpointing():
    config = method_config("qwen2.5-7b", "lora")
    one, four = plan(config, 1, 512), plan(config, 4, 512)
    assert four.activations_bytes == 4 * one.activations_bytes
    config = with_settings(config, gradient_checkpointing=True)
    assert plan(config, 1, 512).activations_bytes < one.activations_bytes / 2


@pytest.mark.parametrize("preset", ["qwen2.5-7b-lora", "qwen2.5-7b-lora-all", "qwen2.5-7b-qlora", "qwen2.5-7b-full"])
def test_plan_matches_the_tiny_model_as_loaded(preset, qwen_dir):
    """Trainable parameters exactly as peft counts them; parameter bytes within 1% of the loaded model's state."""
    config = load_config(preset, [f"model={qwen_dir}", "deepspeed=null"])
    planned = plan(config)
    model = build_model(config)
    if config.method != "full":
        model = get_peft_model(model, lora_config(config))
        trainable, _ = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if config.method == "qlora":  # trl keeps QLoRA adapters in bf16
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.bfloat16()
    assert planned.params_trainable == trainable
    assert abs(planned.weights_bytes / state_bytes(model) - 1) < 0.01
    if config.method == "qlora":  # the 4-bit layers alone, constants included, within 1% too
        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        measured = sum(state_bytes(m) - (m.bias.numel() * m.bias.element_size() if m.bias is not None else 0) for m in layers)
        assert abs((planned.weights_by_kind["quantized"] + planned.weights_by_kind["quant_constants"]) / measured - 1) < 0.01


def test_plan_of_the_cpu_default_preset():
    planned = plan(load_config("cpu-default"))
    assert planned.method == "lora" and 134e6 < planned.params_total - planned.params_trainable < 135e6
    frozen = planned.params_total - planned.params_trainable
    assert planned.weights_bytes == pytest.approx(2 * frozen + 4 * planned.params_trainable, rel=0.001)  # bf16 base, fp32 adapters
