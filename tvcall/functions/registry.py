"""The registry: every function of every catalog file, validated on load.

`python -m tvcall.functions.registry` loads and validates the shipped catalog and prints its stats.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from tvcall.errors import InputError
from tvcall.functions.catalog import CATALOG_DIR, EXTRA_CATALOG_DIR, load_catalog_file
from tvcall.functions.spec import LANGS, NAME_RE, FunctionSpec

LEXICON_DIR = Path(__file__).parents[1] / "data" / "lexicons"
DATA_CATALOG_DIR = "catalog"  # a data folder's own registry (an imported benchmark): DIR/catalog/*.yaml
DATA_LEXICON_DIR = "lexicons"  # and the lexicons it names: DIR/lexicons/*.yaml
PLACEHOLDER_RE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass
class Registry:
    functions: dict[str, FunctionSpec]
    domains: dict[str, list[str]] = field(default_factory=dict)
    lexicon_dir: Path = LEXICON_DIR  # where the lexicons its string parameters name live

    def __post_init__(self) -> None:
        if not self.domains:
            for spec in self.functions.values():
                self.domains.setdefault(spec.domain, []).append(spec.name)

    def __len__(self) -> int:
        return len(self.functions)

    def __contains__(self, name: object) -> bool:
        return name in self.functions

    def __getitem__(self, name: str) -> FunctionSpec:
        return self.functions[name]

    @property
    def names(self) -> list[str]:
        return list(self.functions)

    def stats(self) -> dict[str, Any]:
        return {"functions": len(self), "domains": {d: len(names) for d, names in sorted(self.domains.items())}}

    def openai_tools(self, lang: str = "en", domain: str | None = None) -> list[dict[str, Any]]:
        return [s.openai_tool(lang) for s in self.functions.values() if domain in (None, s.domain)]

    def risk_counts(self) -> dict[str, int]:
        return dict(Counter(s.risk for s in self.functions.values()))


@lru_cache(maxsize=4096)
def _schema_error(parameters: str) -> str | None:
    """What JSON Schema's meta-schema finds wrong in a parameters schema (as JSON), else None; a family's functions
    share their schemas, so most are checked once."""
    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(parameters))
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


def _check_schema(spec: FunctionSpec, path: Path, line: int | None, lexicon_dir: Path) -> None:
    if error := _schema_error(json.dumps(spec.parameters, sort_keys=True)):
        raise InputError(path, line, f"{spec.name}.parameters", error)
    for pname, schema in spec.properties.items():
        lexicon = schema.get("x-lexicon")
        if lexicon and not (lexicon_dir / f"{lexicon}.yaml").exists():
            raise InputError(path, line, f"{spec.name}.parameters.{pname}.lexicon",
                             f"no lexicon file {lexicon_dir / (lexicon + '.yaml')}")


def template_fault(spec: FunctionSpec, template: str) -> str | None:
    """What is wrong with one of `spec`'s templates: placeholders it has no parameter for, required ones it lacks."""
    used = set(PLACEHOLDER_RE.findall(template))
    unknown, missing = used - set(spec.properties), set(spec.required) - used
    faults = ([f"names unknown params {sorted(unknown)}"] if unknown else []) + ([f"lacks required params {sorted(missing)}"] if missing else [])
    return f"{template!r} " + "; ".join(faults) if faults else None


def _check_templates(spec: FunctionSpec, path: Path, line: int | None) -> None:
    if spec.templates is None:
        return
    for lang in LANGS:
        templates = spec.templates.forms(lang)
        if len(templates) < 3:
            raise InputError(path, line, f"{spec.name}.templates.{lang}", "needs at least 3 templates (one is held out for test)")
        for template in templates:
            fault = template_fault(spec, template)
            if fault:
                raise InputError(path, line, f"{spec.name}.templates.{lang}", fault)


REGISTRIES = {"core": (CATALOG_DIR,), "full": (CATALOG_DIR, EXTRA_CATALOG_DIR)}


def load_registry(catalog_dir: Path | tuple[Path, ...] = CATALOG_DIR, lexicon_dir: Path | None = None) -> Registry:
    """Every function of `catalog_dir/*.yaml` (of each folder, when several), validated; string parameters name
    lexicons in `lexicon_dir` (default: the package's `LEXICON_DIR`)."""
    lexicon_dir = LEXICON_DIR if lexicon_dir is None else lexicon_dir
    folders = catalog_dir if isinstance(catalog_dir, tuple) else (catalog_dir,)
    # `<domain>.yaml` before `<domain>.extra.yaml` (a data folder's copy of the full registry): the same order as the
    # package's catalog folder then its extension, so the functions come in one order wherever they are loaded from
    files = [path for folder in folders for path in sorted(folder.glob("*.yaml"), key=lambda p: (p.name.count("."), p.name))]
    if not files:
        raise InputError(folders[0], None, "catalog", "no *.yaml catalog files")
    functions: dict[str, FunctionSpec] = {}
    origin: dict[str, tuple[Path, int | None]] = {}
    for path in files:
        specs, lines = load_catalog_file(path)
        for spec in specs:
            line = lines.get(spec.name)
            if not NAME_RE.match(spec.name) or spec.name.split(".")[0] != spec.domain:
                raise InputError(path, line, f"{spec.name}.name", f"must be {spec.domain}.<object>.<action> with identifiers")
            if spec.name in functions:
                first_path, first_line = origin[spec.name]
                raise InputError(path, line, f"{spec.name}.name", f"duplicate function name (first defined at {first_path}:{first_line})")
            _check_schema(spec, path, line, lexicon_dir)
            _check_templates(spec, path, line)
            functions[spec.name] = spec
            origin[spec.name] = (path, line)
    return Registry(functions, lexicon_dir=lexicon_dir)


@cache
def default_registry() -> Registry:
    return load_registry()


@cache
def named_registry(name: str) -> Registry:
    """`core`: the shipped catalog (the CPU default's registry); `full`: with catalog_extra, over 3,000 functions."""
    if name not in REGISTRIES:
        raise ValueError(f"unknown registry {name!r} ({', '.join(REGISTRIES)})")
    return default_registry() if name == "core" else load_registry(REGISTRIES[name])


def resolve_registry(value: str) -> Registry:
    """`--registry`: a shipped registry's name (`core`, `full`) or a catalog folder of `*.yaml` files."""
    if value in REGISTRIES:
        return named_registry(value)
    if not Path(value).is_dir():
        raise InputError(Path(value), None, "registry", f"no such catalog folder, nor a shipped registry ({', '.join(REGISTRIES)})")
    return load_registry(Path(value))


def registry_qualifier(value: str) -> str:
    """How eval folders name a `--registry`: the shipped name, or `registry-FOLDER` for a catalog folder."""
    return value if value in REGISTRIES else f"registry-{Path(value).resolve().name}"


def registry_for_data(data_dir: Path) -> Registry:
    """The registry a data folder is labelled with: its own when it has one (an imported benchmark:
    `DIR/catalog/*.yaml` with `DIR/lexicons/`, docs/benchmarks.md), else the shipped `default_registry()`."""
    data_dir = Path(data_dir)
    if (data_dir / DATA_CATALOG_DIR).exists():
        return load_registry(data_dir / DATA_CATALOG_DIR, data_dir / DATA_LEXICON_DIR)
    return default_registry()


if __name__ == "__main__":
    print(json.dumps(default_registry().stats(), ensure_ascii=False, indent=1))
