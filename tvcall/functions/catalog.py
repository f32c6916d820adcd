"""Expand catalog files (product tables of a domain) into function specs.

Format: docs/registry-format.md. Every error names the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tvcall.errors import InputError
from tvcall.functions.spec import IDENT_RE, LANGS, FunctionSpec, Surface
from tvcall.yamlio import line_of, load_yaml

CATALOG_DIR = Path(__file__).parent / "catalog"
EXTRA_CATALOG_DIR = Path(__file__).parent / "catalog_extra"  # the full registry's further 1,828 functions


def file_domain(path: Path) -> str:
    """The domain a catalog file holds: its name up to the first dot (`picture.yaml`, `picture.extra.yaml`)."""
    return path.name.split(".")[0]

# kind → verbs it expands into; the verb is the function's action (suffixed by the attribute, if any).
KIND_VERBS: dict[str, tuple[str, ...]] = {
    "level": ("get", "set", "increase", "decrease", "reset"),
    "choice": ("get", "set", "reset", "list_options"),
    "toggle": ("get_status", "turn_on", "turn_off"),
}
_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "get": ("查询{obj}", "Get the current {obj}"),
    "set": ("设置{obj}", "Set the {obj}"),
    "increase": ("调高{obj}", "Increase the {obj}"),
    "decrease": ("调低{obj}", "Decrease the {obj}"),
    "reset": ("将{obj}恢复默认", "Reset the {obj} to its default"),
    "list_options": ("列出{obj}的可选项", "List the available {obj} options"),
    "get_status": ("查询{obj}是否开启", "Check whether {obj} is on"),
    "turn_on": ("开启{obj}", "Turn on {obj}"),
    "turn_off": ("关闭{obj}", "Turn off {obj}"),
}


class _Ctx:
    """Where we are in a file, for error messages."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, node: Any, field: str, message: str) -> InputError:
        return InputError(self.path, line_of(node), field, message)

    def get(self, node: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if key not in node:
            raise self.fail(node, f"{where}.{key}", "missing")
        value = node[key]
        if not isinstance(value, kind):
            raise self.fail(node, f"{where}.{key}", f"expected {_type_name(kind)}, got {value!r}")
        return value

    def ident(self, node: dict[str, Any], key: str, where: str) -> str:
        value = self.get(node, key, str, where)
        if not IDENT_RE.match(value):
            raise self.fail(node, f"{where}.{key}", f"{value!r} is not an identifier [a-z][a-z0-9_]*")
        return value

    def surface(self, node: dict[str, Any], where: str, zh_key: str = "zh", en_key: str = "en") -> Surface:
        forms: dict[str, list[str]] = {}
        for lang, key in zip(LANGS, (zh_key, en_key), strict=True):
            value = node.get(key)
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise self.fail(node, f"{where}.{key}", "expected a non-empty list of strings")
            forms[lang] = value
        return Surface(**forms)


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def compile_param(ctx: _Ctx, node: Any, where: str) -> tuple[str, dict[str, Any], bool]:
    """A catalog param → (name, JSON schema, required)."""
    if not isinstance(node, dict):
        raise ctx.fail(node, where, f"expected a mapping, got {node!r}")
    name = ctx.ident(node, "name", where)
    where = f"{where}[{name}]"
    ptype = ctx.get(node, "type", str, where)
    schema: dict[str, Any]
    if ptype == "integer":
        low, high = ctx.get(node, "min", int, where), ctx.get(node, "max", int, where)
        if low >= high:
            raise ctx.fail(node, f"{where}.max", f"max {high} must exceed min {low}")
        schema = {"type": "integer", "minimum": low, "maximum": high}
    elif ptype in ("enum", "boolean"):
        options = ctx.get(node, "options", list, where)
        values: list[Any] = []
        surfaces: dict[str, dict[str, list[str]]] = {}
        for option in options:
            value = ctx.get(option, "value", bool if ptype == "boolean" else str, f"{where}.options")
            surface = ctx.surface(option, f"{where}.options[{value}]")
            values.append(value)
            surfaces[str(value).lower() if ptype == "boolean" else value] = surface.model_dump()
        if len(set(values)) != len(values):
            raise ctx.fail(node, f"{where}.options", "duplicate option values")
        schema = {"type": "string", "enum": values} if ptype == "enum" else {"type": "boolean"}
        schema["x-surface"] = surfaces
    elif ptype == "string":
        schema = {"type": "string", "x-lexicon": ctx.ident(node, "lexicon", where)}
    else:
        raise ctx.fail(node, f"{where}.type", f"unknown type {ptype!r} (enum, integer, string, boolean)")
    if isinstance(node.get("zh"), str) and isinstance(node.get("en"), str):
        schema["description"] = node["en"]
    return name, schema, bool(node.get("required", False))


def object_schema(params: list[tuple[str, dict[str, Any], bool]]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: schema for name, schema, _ in params},
        "required": [name for name, _, required in params if required],
        "additionalProperties": False,
    }


def _family_params(ctx: _Ctx, family: dict[str, Any], kind: str, verb: str, where: str) -> list[tuple[str, dict[str, Any], bool]]:
    params: list[tuple[str, dict[str, Any], bool]] = []
    if kind == "level" and verb in ("set", "increase", "decrease"):
        low, high = ctx.get(family, "min", int, where), ctx.get(family, "max", int, where)
        if low >= high:
            raise ctx.fail(family, f"{where}.max", f"max {high} must exceed min {low}")
        if verb == "set":
            params.append(("value", {"type": "integer", "minimum": low, "maximum": high}, True))
        else:
            params.append(("step", {"type": "integer", "minimum": 1, "maximum": high - low}, False))
    elif kind == "choice" and verb == "set":
        params.append(compile_param(ctx, {**family, "name": "value", "type": "enum"}, where))
    for extra in family.get("extra_params", []) or []:
        name, schema, _ = compile_param(ctx, extra, f"{where}.extra_params")
        params.append((name, schema, False))
    return params


def expand_family(ctx: _Ctx, domain: str, family: Any, index: int) -> list[FunctionSpec]:
    where = f"families[{index}]"
    if not isinstance(family, dict):
        raise ctx.fail(family, where, "expected a mapping")
    kind = ctx.get(family, "kind", str, where)
    obj = ctx.ident(family, "object", where)
    where = f"families[{obj}]"
    phrases = ctx.surface(family, where)
    attribute = family.get("attribute")
    attr_phrases = None
    if attribute is not None:
        attribute = ctx.ident(family, "attribute", where)
        attr_phrases = ctx.surface(family, where, "attr_zh", "attr_en")
    risk = family.get("risk", "normal")
    common = {"domain": domain, "risk": risk, "source": ctx.path.name}
    specs: list[FunctionSpec] = []
    if kind == "query":
        param = ctx.get(family, "param", dict, where)
        pname, pschema, _ = compile_param(ctx, {**param, "type": "string"}, f"{where}.param")
        for attr in ctx.get(family, "attributes", list, where):
            action = ctx.ident(attr, "action", f"{where}.attributes")
            attr_surface = ctx.surface(attr, f"{where}.attributes[{action}]")
            params = [(pname, pschema, True)] + [
                (n, s, False) for n, s, _ in _family_params(ctx, family, kind, action, where)
            ]
            specs.append(FunctionSpec(
                name=f"{domain}.{obj}.{action}",
                description=Surface(
                    zh=[f"查询{phrases.zh[0]}的{attr_surface.zh[0]}"],
                    en=[f"Look up the {attr_surface.en[0]} of a {phrases.en[0]}"],
                ),
                parameters=object_schema(params), template_key="query",
                object_phrases=phrases, attribute_phrases=attr_surface, **common,
            ))
        return specs
    if kind not in KIND_VERBS:
        raise ctx.fail(family, f"{where}.kind", f"unknown kind {kind!r} ({', '.join([*KIND_VERBS, 'query'])})")
    verbs = family.get("actions") or KIND_VERBS[kind]
    for verb in verbs:
        if verb not in KIND_VERBS[kind]:
            raise ctx.fail(family, f"{where}.actions", f"{verb!r} is not an action of kind {kind}")
        action = f"{verb}_{attribute}" if attribute else verb
        zh_obj = phrases.zh[0] + (f"的{attr_phrases.zh[0]}" if attr_phrases else "")
        en_obj = phrases.en[0] + (f" {attr_phrases.en[0]}" if attr_phrases else "")
        zh_desc, en_desc = _DESCRIPTIONS[verb]
        specs.append(FunctionSpec(
            name=f"{domain}.{obj}.{action}",
            description=Surface(zh=[zh_desc.format(obj=zh_obj)], en=[en_desc.format(obj=en_obj)]),
            parameters=object_schema(_family_params(ctx, family, kind, verb, where)),
            template_key=f"{kind}.{verb}", object_phrases=phrases, attribute_phrases=attr_phrases, **common,
        ))
    return specs


def expand_function(ctx: _Ctx, domain: str, node: Any, index: int) -> FunctionSpec:
    where = f"functions[{index}]"
    if not isinstance(node, dict):
        raise ctx.fail(node, where, "expected a mapping")
    name = ctx.get(node, "name", str, where)
    where = f"functions[{name}]"
    params = [compile_param(ctx, p, f"{where}.params") for p in node.get("params", []) or []]
    templates = ctx.get(node, "templates", dict, where)
    return FunctionSpec(
        name=name, domain=domain, description=ctx.surface(node, where),
        parameters=object_schema(params), risk=node.get("risk", "normal"), source=ctx.path.name,
        templates=ctx.surface(templates, f"{where}.templates"),
    )


def load_catalog_file(path: Path) -> tuple[list[FunctionSpec], dict[str, int | None]]:
    """Specs of one catalog file, plus the line where each function (or its family) is defined."""
    ctx = _Ctx(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ctx.fail(doc, "file", "expected a mapping with domain, families, functions")
    domain = ctx.ident(doc, "domain", "file")
    if domain != file_domain(path):
        raise ctx.fail(doc, "domain", f"{domain!r} must equal the file name {file_domain(path)!r}")
    specs: list[FunctionSpec] = []
    lines: dict[str, int | None] = {}
    steps: list[tuple[str, Callable[..., Any]]] = [("families", expand_family), ("functions", expand_function)]
    for key, expand in steps:
        for index, node in enumerate(doc.get(key, []) or []):
            try:
                produced = expand(ctx, domain, node, index)
            except InputError:
                raise
            except (ValueError, TypeError) as exc:  # pydantic validation of a malformed entry
                raise ctx.fail(node, f"{key}[{index}]", str(exc)) from exc
            for spec in produced if isinstance(produced, list) else [produced]:
                specs.append(spec)
                lines[spec.name] = line_of(node)
    return specs, lines
