"""Merge a run's LoRA adapter into its base model and save a model folder: safetensors in the run's dtype
(what vLLM serves), or a bitsandbytes variant (LLM.int8 or NF4) so that `tvcall eval` puts a number on
what quantisation costs.

The adapter merges into the 16-bit base (a QLoRA adapter too: it was trained against the NF4 weights, the
usual small mismatch). The folder also gets config.yaml (the run's config and where the export came from),
so `tvcall eval --run OUT` and `tvcall route --run OUT` load it as a run whose model is the folder itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tvcall.data.record import write_atomic
from tvcall.training.loading import bnb_4bit_config, bnb_8bit_config, quantized_device_map, torch_dtype
from tvcall.training.model import load_model, load_tokenizer, model_source
from tvcall.training.train import ADAPTER_DIR, RUN_CONFIG

QUANTIZE = ("none", "int8", "nf4")


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: train first (`tvcall train`)")
    return yaml.safe_load(path.read_text())


def merged_model(run_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """The run's base model in the run's dtype with its LoRA adapter (if any) merged in."""
    from peft import PeftModel

    config = read_run_config(run_dir)
    source = model_source(run_dir, config)
    model = load_model(source, dtype=torch_dtype(config.get("dtype", "float32")))
    adapter = Path(run_dir) / ADAPTER_DIR
    if (adapter / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model, load_tokenizer(source), config


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    model.save_pretrained(folder)  # safetensors
    tokenizer.save_pretrained(folder)


def export(run_dir: Path, out: Path, quantize: str = "none") -> Path:
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    model, tokenizer, config = merged_model(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        if quantize == "none":
            _save(model, tokenizer, tmp)
        else:  # bitsandbytes quantises while loading: save the merged model, load it quantised, save that
            dtype = model.dtype
            _save(model, tokenizer, tmp / "merged")
            del model
            bnb = bnb_8bit_config() if quantize == "int8" else bnb_4bit_config()
            quantized = load_model(str(tmp / "merged"), dtype=dtype, quantization_config=bnb, device_map=quantized_device_map())
            _save(quantized, tokenizer, tmp)
            shutil.rmtree(tmp / "merged")
        exported = {**config, "model": str(out.resolve()), "quantize": quantize, "exported_from": {"run": str(run_dir), "model": config["model"]}}
        write_atomic(tmp / RUN_CONFIG, yaml.safe_dump(exported, sort_keys=False, allow_unicode=True))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
