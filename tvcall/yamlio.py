"""YAML loading that remembers the line of every mapping, so errors can point at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tvcall.errors import InputError

LINE_KEY = "__line__"
KEY_LINES = "__key_lines__"


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it: 4x faster
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[LINE_KEY] = node.start_mark.line + 1
    mapping[KEY_LINES] = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise InputError(path, line, "yaml", str(exc.problem)) from exc


def line_of(node: Any) -> int | None:
    return node.get(LINE_KEY) if isinstance(node, dict) else None


def key_line(node: Any, key: str) -> int | None:
    """The line of `key` inside a mapping, else the mapping's own line."""
    if isinstance(node, dict):
        return node.get(KEY_LINES, {}).get(key, node.get(LINE_KEY))
    return None


def strip_lines(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_lines(v) for k, v in node.items() if k not in (LINE_KEY, KEY_LINES)}
    if isinstance(node, list):
        return [strip_lines(v) for v in node]
    return node
