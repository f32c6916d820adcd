"""`tvcall export`: the merged model gives the unmerged adapter's logits; every variant loads as a run for eval."""

import json

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model

from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.cli import main
from tvcall.data.prompt import PROMPT_FORMAT, prompt_ids
from tvcall.model.load import load_model
from tvcall.run import ADAPTER_DIR, CONFIG_FILE, RunDir, TrainSummary
from tvcall.training.config import load_config
from tvcall.training.export import export, merged_model


@pytest.fixture(scope="module")
def lora_run(qwen_dir, qwen_tokenizer, qwen_data, tmp_path_factory):
    """A run folder as train() leaves it, with a non-zero random adapter on q_proj and v_proj (no training needed)."""
    run = tmp_path_factory.mktemp("qwen-lora-run")
    config = load_config("qwen2.5-7b-lora", [f"model={qwen_dir}", "dtype=float32", f"output_dir={run}", f"data_dir={qwen_data}"])
    torch.manual_seed(1)
    peft_model = get_peft_model(load_model(str(qwen_dir)), LoraConfig(
        **config.lora, init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(run / ADAPTER_DIR)
    qwen_tokenizer.save_pretrained(run / ADAPTER_DIR)
    RunDir(run).write(config, TrainSummary(prompt_format=PROMPT_FORMAT))
    return run


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_merge_gives_the_unmerged_adapters_logits(lora_run, qwen_dir, qwen_tokenizer):
    ids = prompt_ids(qwen_tokenizer, "把音量调到20")
    base = load_model(str(qwen_dir))
    base_logits = _logits(base, ids)
    unmerged = _logits(PeftModel.from_pretrained(base, lora_run / ADAPTER_DIR).eval(), ids)
    merged, _, _ = merged_model(lora_run)
    assert not torch.allclose(unmerged, base_logits, atol=1e-3)  # the adapter changes the model
    torch.testing.assert_close(_logits(merged, ids), unmerged, atol=1e-5, rtol=1e-4)


def test_export_writes_safetensors_that_load_with_the_same_logits(lora_run, qwen_tokenizer, tmp_path):
    out = export(lora_run, tmp_path / "merged")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["exported_from"]["run"] == str(lora_run)
    ids = prompt_ids(qwen_tokenizer, "switch to HDMI 2")
    merged, _, _ = merged_model(lora_run)
    torch.testing.assert_close(_logits(load_model(str(out)), ids), _logits(merged, ids), atol=1e-5, rtol=1e-4)
    with pytest.raises(FileExistsError):
        export(lora_run, out)


@pytest.mark.parametrize("quantize", ["int8", "nf4"])
def test_quantised_exports_route_through_transformers(quantize, lora_run, registry, tmp_path):
    out = export(lora_run, tmp_path / quantize, quantize)
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved["load_in_8bit" if quantize == "int8" else "load_in_4bit"]
    engine = TransformersEngine.from_run(out, registry)
    assert engine.backend == "hf" and engine.model.hf_quantizer is not None
    result = engine.route("把音量调到20")
    assert result.valid and (result.name is None or result.name in registry)


def test_tvcall_eval_runs_on_an_nf4_export(lora_run, qwen_data, tmp_path, capsys):
    out = tmp_path / "nf4"
    assert main(["export", "--run", str(lora_run), "--out", str(out), "--quantize", "nf4"]) == 0
    assert main(["eval", "--run", str(out), "--data", str(qwen_data), "--limit", "3"]) == 0
    metrics = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["json_valid_rate"] == 1.0
