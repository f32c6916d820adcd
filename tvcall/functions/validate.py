"""Check a call against the registry: the function exists and its arguments fit its parameter schema."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema

from tvcall.functions.registry import Registry
from tvcall.functions.spec import strip_private_keywords


@cache
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def call_errors(registry: Registry, name: str | None, arguments: dict[str, Any]) -> list[str]:
    """Empty when the call is valid; `name` None (no function) is valid with no arguments."""
    if name is None:
        return [] if not arguments else ["a 'no function' answer takes no arguments"]
    if name not in registry:
        return [f"unknown function {name!r}"]
    schema = json.dumps(strip_private_keywords(registry[name].parameters), sort_keys=True)
    return [f"{'.'.join(map(str, e.path)) or 'arguments'}: {e.message}" for e in _validator(schema).iter_errors(arguments)]
