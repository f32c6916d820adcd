"""Presets: one typed `RunConfig` loaded from a YAML file (and the preset its `base:` names), overridable with
`--set KEY=VALUE`.

A key is one of tvcall's own `RunConfig` fields, a peft `LoraConfig` field as `lora_<field>` (lora_r,
lora_target_modules; lora_alpha and lora_dropout by their own names), or any trl `SFTConfig` field by its name
(learning_rate, weight_decay, max_grad_norm, ...), passed through to the trainer unchanged. Anything else is an
error naming the file and line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from tvcall.errors import InputError
from tvcall.run import RunConfig
from tvcall.yamlio import key_line, load_yaml, strip_lines

CONFIG_DIR = Path(__file__).parent / "configs"
BASE_KEY = "base"
LORA_PREFIX = "lora_"
PASSED_THROUGH = ("lora", "trainer")  # RunConfig's dicts, filled from the keys they own


@cache
def _own_fields() -> dict[str, Any]:
    hints = get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in fields(RunConfig) if f.name not in PASSED_THROUGH}


@cache
def _lora_fields() -> dict[str, Any]:
    from peft import LoraConfig

    return {f.name: f.type for f in fields(LoraConfig)}


@cache
def _trainer_fields() -> dict[str, Any]:
    from trl import SFTConfig

    return {f.name: f.type for f in fields(SFTConfig)}


def route_key(key: str) -> tuple[str, str, Any] | None:
    """Where a preset key goes: (RunConfig field, name there, type hint); None for an unknown key. tvcall's own fields
    come first (`seed` is both: tvcall uses it and passes it on)."""
    if key in _own_fields():
        return key, key, _own_fields()[key]
    if key.startswith(LORA_PREFIX):
        name = key if key in _lora_fields() else key.removeprefix(LORA_PREFIX)
        if name in _lora_fields():
            return "lora", name, _lora_fields()[name]
    if key in _trainer_fields():
        return "trainer", key, _trainer_fields()[key]
    return None


def _coerce(name: str, value: Any, hint: Any, source: str | Path, line: int | None) -> Any:
    text = getattr(hint, "__name__", str(hint))
    if value is None and ("None" in text or "Optional" in text):
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
        if "float" in text and not isinstance(value, bool):  # float | None
            return float(value)
        if "list" in text and isinstance(value, str) and value.startswith("["):
            return yaml.safe_load(value)
        return value if not isinstance(value, str) or "list" in text else str(value)
    except (TypeError, ValueError) as exc:
        raise InputError(source, line, name, f"expected {text}, got {value!r}") from exc


def _unknown(key: str) -> str:
    own = ", ".join(sorted([BASE_KEY, *_own_fields()]))
    return f"unknown config key (tvcall's: {own}; LoraConfig fields as lora_<field>; any trl SFTConfig field)"


def _apply(values: dict[str, Any], key: str, value: Any, source: str | Path, line: int | None) -> None:
    routed = route_key(key)
    if routed is None:
        raise InputError(source, line, key, _unknown(key))
    where, name, hint = routed
    # a passed-through value keeps the type YAML gave it (10 stays an int where trl declares a float); a string is
    # read as the field's type, so that a bad value names its key here rather than deep in the trainer
    passed = where in PASSED_THROUGH and not isinstance(value, str)
    coerced = value if passed else _coerce(key, value, hint, source, line)
    if where in PASSED_THROUGH:
        values.setdefault(where, {})[name] = coerced
    else:
        values[name] = coerced


def preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise InputError(name_or_path, None, "preset", f"no such preset or file (presets: {known})")
    return candidate


def preset_values(path: Path, children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's settings, over those of the preset its `base:` names; unknown keys and bad values name file and line."""
    doc = load_yaml(path) or {}
    entries = strip_lines(doc)
    values: dict[str, Any] = {}
    if BASE_KEY in entries:
        base = preset_path(str(entries.pop(BASE_KEY)))
        if base.resolve() in (*children, path.resolve()):
            raise InputError(path, key_line(doc, BASE_KEY), BASE_KEY, f"{base} is already a preset this one is based on")
        values = preset_values(base, (*children, path.resolve()))
    for key, value in entries.items():
        _apply(values, key, value, path, key_line(doc, key))
    return values


def load_config(preset: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a preset (and the presets it is based on), then apply `key=value` overrides."""
    path = preset_path(preset)
    values = preset_values(path)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InputError("--set", None, key or item, "expected KEY=VALUE")
        _apply(values, key, yaml.safe_load(raw) if raw else raw, "--set", None)
    defaults = RunConfig()
    for where in PASSED_THROUGH:
        values[where] = {**getattr(defaults, where), **values.get(where, {})}
    return RunConfig(**values, preset=str(path))


def with_settings(config: RunConfig, **settings: Any) -> RunConfig:
    """A copy of `config` with preset keys changed as `--set` would change them (trainer and LoRA keys included)."""
    values: dict[str, Any] = {where: dict(getattr(config, where)) for where in PASSED_THROUGH}
    for key, value in settings.items():
        _apply(values, key, value, "settings", None)
    return dataclasses.replace(config, **values)


def deepspeed_path(name: str | None) -> str | None:
    """A DeepSpeed JSON file as given, or by bare name from the folder of presets (ds_zero3.json)."""
    if not name:
        return None
    path = Path(name)
    if not path.exists() and (CONFIG_DIR / name).exists():
        path = CONFIG_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"DeepSpeed config {name} not found (nor in {CONFIG_DIR})")
    return str(path)
