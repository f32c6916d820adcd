"""A few real training steps of a tiny Qwen2 through the project's train(), with the Qwen2.5-7B presets' settings."""

import math

import pytest
import yaml
from safetensors.torch import load_file

from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.run import ADAPTER_DIR, CONFIG_FILE
from tvcall.training.config import load_config
from tvcall.training.plan import plan
from tvcall.training.train import on_this_machine, train


def _config(preset, qwen_dir, qwen_data, out, *extra):
    return load_config(preset, [f"model={qwen_dir}", f"data_dir={qwen_data}", f"output_dir={out}", "num_train_examples=8",
                                "per_device_train_batch_size=4", "logging_steps=1", *extra])


def _summary(run):
    return yaml.safe_load((run / CONFIG_FILE).read_text())


@pytest.mark.parametrize("preset", ["qwen2.5-7b-lora", "qwen2.5-7b-qlora"])
def test_adapter_presets_train_and_match_the_plan(preset, qwen_dir, qwen_data, tmp_path):
    config = _config(preset, qwen_dir, qwen_data, tmp_path / "run")
    run = train(config)
    summary = _summary(run)
    assert summary["steps"] == 2 and math.isfinite(summary["train_loss"])
    adapter = load_file(run / ADAPTER_DIR / "adapter_model.safetensors")
    targets = {key.split(".lora_B")[0].rsplit(".", 1)[-1] for key in adapter if "lora_B" in key}
    expected = {"q_proj", "v_proj"} if preset.endswith("-lora") else {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert targets == expected
    # lora_B starts at zero: every one moved, so gradients reached every adapter (4-bit included)
    assert all(tensor.abs().max() > 0 for key, tensor in adapter.items() if "lora_B" in key)
    planned = plan(on_this_machine(config))  # a CPU without native bf16 trains (and stores) the weights in fp32
    assert summary["params_trainable"] == planned.params_trainable
    assert abs(summary["param_bytes"] / planned.weights_bytes - 1) < 0.01


def test_full_preset_trains_every_weight_and_saves_a_loadable_model(qwen_dir, qwen_data, tmp_path):
    config = _config("qwen2.5-7b-full", qwen_dir, qwen_data, tmp_path / "run", "deepspeed=null")  # DeepSpeed needs GPUs
    run = train(config)
    summary = _summary(run)
    assert summary["steps"] == 2 and summary["params_trainable"] == plan(config).params_total
    assert (run / "model.safetensors").exists() and not (run / ADAPTER_DIR).exists()
    engine = TransformersEngine.from_run(run)
    assert engine.backend == "hf" and engine.model.config.model_type == "qwen2"
    assert engine.route("把音量调到20").valid
