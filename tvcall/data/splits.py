"""Write and read the train/dev/test splits with a manifest whose hash is the data version."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from tvcall.data.compound import CompoundRecord, read_compound, synthesize_compound, write_compound
from tvcall.data.followups import followup_kind, synthesize_followups
from tvcall.data.record import Record, read_jsonl, write_atomic, write_jsonl
from tvcall.data.split_names import ALL_SPLITS, COMPOUND_SPLITS, FOLLOWUP_SPLITS, RECORD_SPLITS, split_file
from tvcall.data.synth import SynthConfig, build_splits
from tvcall.errors import InputError
from tvcall.functions.catalog import CATALOG_DIR
from tvcall.functions.registry import DATA_CATALOG_DIR, DATA_LEXICON_DIR, LEXICON_DIR, REGISTRIES, Registry

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_splits(registry: Registry, config: SynthConfig, out_dir: Path, registry_name: str = "core") -> dict[str, Any]:
    """The splits of `registry` (`registry_name` in `REGISTRIES`); any registry but the core one is written into the
    folder with them."""
    singles = build_splits(registry, config)
    splits = with_followups(registry, singles, config)
    if registry_name != "core":
        copy_catalog(registry_name, out_dir)
    files: dict[str, Any] = {}
    sizes = config.compound_sizes()
    for split, name in COMPOUND_SPLITS.items():
        path = split_file(out_dir, name)
        compounds = synthesize_compound(singles[split], split, sizes[split], config.seed)
        files[name] = {"records": write_compound(path, compounds), "sha256": _sha256(path),
                       "calls": {str(n): sum(len(r.calls) == n for r in compounds) for n in (2, 3)}}
    for split, records in splits.items():
        path = split_file(out_dir, split)
        write_jsonl(path, records)
        files[split] = {"records": len(records), "followups": sum(followup_kind(r) is not None for r in records),
                        "out_of_scope": sum(r.function is None for r in records),
                        "functions": len({r.function for r in records if r.function}), "sha256": _sha256(path)}
    manifest = {"synth": dataclasses.asdict(config), "registry": registry.stats()["functions"], "files": files}
    if registry_name != "core":  # (core data keeps the version it had before registries had names)
        manifest["registry_name"] = registry_name
    manifest["version"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    write_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def with_followups(registry: Registry, splits: dict[str, list[Record]], config: SynthConfig) -> dict[str, list[Record]]:
    """The single-command splits, with follow-ups added to train and in files of their own for dev and test."""
    sizes = config.followup_sizes()
    seen = {r.text for records in splits.values() for r in records}
    made: dict[str, list[Record]] = {}
    for split, size in sizes.items():
        made[split] = synthesize_followups(registry, split, size, splits[split], config.seed, exclude=seen)
        seen |= {r.text for r in made[split]}
    return {**splits, "train": splits["train"] + made["train"],
            **{FOLLOWUP_SPLITS[split]: made[split] for split in FOLLOWUP_SPLITS}}


def copy_catalog(name: str, data_dir: Path) -> None:
    """Write registry `name` into a data folder (`DIR/catalog`, `DIR/lexicons`), which then carries it:
    training, eval and serving of that data load it through `registry_for_data`."""
    catalog, lexicons = Path(data_dir) / DATA_CATALOG_DIR, Path(data_dir) / DATA_LEXICON_DIR
    for folder in (catalog, lexicons):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in REGISTRIES[name]:
        suffix = "" if folder == CATALOG_DIR else f".{folder.name.removeprefix('catalog_')}"
        for path in sorted(folder.glob("*.yaml")):
            write_atomic(catalog / f"{path.stem}{suffix}.yaml", path.read_text())
    for path in sorted(LEXICON_DIR.glob("*.yaml")):
        write_atomic(lexicons / path.name, path.read_text())


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / MANIFEST
    if not path.exists():
        raise InputError(path, None, "manifest", "no dataset here: run `tvcall data synth` first")
    return json.loads(path.read_text())


def read_compound_split(data_dir: Path, split: str) -> list[CompoundRecord]:
    path = split_file(data_dir, split)
    if split not in COMPOUND_SPLITS.values():
        raise ValueError(f"unknown compound split {split!r} ({', '.join(COMPOUND_SPLITS.values())})")
    if not path.exists():
        raise InputError(path, None, "split", "missing: it has no compound commands: synthesise the data again")
    return list(read_compound(path))


def read_split(data_dir: Path, split: str) -> list[Record]:
    if split not in RECORD_SPLITS:
        raise ValueError(f"unknown split {split!r} ({', '.join(ALL_SPLITS)}; compound ones: `read_compound_split`)")
    path = split_file(data_dir, split)
    if not path.exists():
        hint = "it has no follow-ups: synthesise the data again" if split in FOLLOWUP_SPLITS.values() else "run `tvcall data synth` first"
        raise InputError(path, None, "split", f"missing: {hint}")
    return list(read_jsonl(path))
