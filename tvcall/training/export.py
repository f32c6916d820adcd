"""Merge a run's LoRA adapter into its base model and save a model folder: safetensors in the run's dtype
(what vLLM serves), or a bitsandbytes variant (LLM.int8 or NF4) so that `tvcall eval` puts a number on
what quantisation costs.

The adapter merges into the 16-bit base (a QLoRA adapter too: it was trained against the NF4 weights, the
usual small mismatch). The folder also gets config.yaml (the run's config and where the export came from),
so `tvcall eval --run OUT` and `tvcall route --run OUT` load it as a run whose model is the folder itself.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tvcall.model.build import bnb_4bit_config, bnb_8bit_config, quantized_device_map, torch_dtype
from tvcall.model.load import load_model, load_run_model
from tvcall.run import RunConfig, RunDir

QUANTIZE = ("none", "int8", "nf4")


def merged_model(run_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, RunConfig]:
    """The run's base model in the run's dtype with its LoRA adapter (if any) merged in."""
    config = RunDir(run_dir).config()
    model, tokenizer = load_run_model(run_dir, torch_dtype(config.dtype))
    return model, tokenizer, config


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
        summary = dataclasses.replace(RunDir(run_dir).summary(), quantize=quantize,
                                      exported_from={"run": str(run_dir), "model": config.model})
        RunDir(tmp).write(dataclasses.replace(config, model=str(out.resolve())), summary)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
