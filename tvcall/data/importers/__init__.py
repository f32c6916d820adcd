"""Import public intent/slot sets (SNIPS, ATIS, CAIS, SMP2019, chat JSONL) as the project's splits and a benchmark
registry: `import_dataset` writes train/dev/test.jsonl, manifest.json, catalog/ and lexicons/ into one folder.
Decisions (multi-intent, UNK, repeated slots, the SMP2019 split): docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tvcall.data.importers.catalog import CATALOG_DIR, LEXICON_DIR, load_benchmark_registry, write_catalog
from tvcall.data.importers.convert import Converted, convert, identifier, stratified_split, unknown_function
from tvcall.data.importers.readers import Example, read_bio, read_chat, read_conll, read_smp2019
from tvcall.data.record import write_atomic, write_jsonl
from tvcall.data.split_names import SPLITS, split_file
from tvcall.data.splits import MANIFEST
from tvcall.errors import InputError

FORMATS = ("bio", "conll", "smp2019", "chat")
DEFAULT_LANG: dict[str, str | None] = {"bio": "en", "conll": "zh", "smp2019": "zh", "chat": None}  # chat: per utterance
SPLIT_FOLDERS = {"train": ("train",), "dev": ("dev", "valid"), "test": ("test",)}

__all__ = ["FORMATS", "import_dataset", "load_benchmark_registry", "read_splits"]


def split_path(root: Path, split: str, suffix: str = "") -> Path:
    """`root/<split><suffix>`, where dev may be spelled valid (JointBERT's dev/ renamed)."""
    for name in SPLIT_FOLDERS[split]:
        if (root / f"{name}{suffix}").exists():
            return root / f"{name}{suffix}"
    raise InputError(root, None, "split", f"no {' or '.join(n + suffix for n in SPLIT_FOLDERS[split])} here")


def conll_files(split_dir: Path) -> tuple[Path, Path]:
    """The one `<x>.intent` file of a split folder and its CoNLL file `<x>` (CAIS: ch.test, ch.test.intent)."""
    intents = sorted(split_dir.glob("*.intent"))
    if len(intents) != 1:
        raise InputError(split_dir, None, "split", f"expected one *.intent file beside its CoNLL file, found {len(intents)}")
    return intents[0].with_suffix(""), intents[0]


def read_splits(format: str, path: Path, lang: str | None, seed: int) -> dict[str, list[Example]]:
    """bio, conll: a folder with train/, dev/ or valid/, test/; smp2019: the JSON file (or its folder); chat: one JSONL
    file, or a folder with train/dev (or valid)/test.jsonl. A set without its own split is split by `stratified_split`."""
    sep = "" if lang == "zh" else " "  # Chinese is tagged by character, English by word
    if format == "bio":
        return {split: read_bio(split_path(path, split), sep) for split in SPLITS}
    if format == "conll":
        return {split: read_conll(*conll_files(split_path(path, split)), sep) for split in SPLITS}
    if format == "smp2019":
        return stratified_split(read_smp2019(path / "train.json" if path.is_dir() else path), seed)
    if format == "chat":
        if path.is_dir():
            return {split: read_chat(split_path(path, split, ".jsonl")) for split in SPLITS}
        return stratified_split(read_chat(path), seed)
    raise ValueError(f"unknown format {format!r} ({', '.join(FORMATS)})")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_splits(converted: Converted, out: Path) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for split in SPLITS:
        records = converted.records[split]
        path = split_file(out, split)
        write_jsonl(path, records)
        files[split] = {
            "records": len(records), "out_of_scope": sum(r.function is None for r in records),
            "functions": len({r.function for r in records if r.function}),
            "unseen_intent": sum(converted.unseen.get(split, {}).values()),
            "repeated_slot": sum(len(r.spans) > len({s.slot for s in r.spans}) for r in records),
            "sha256": _sha256(path),
        }
    return files


def import_dataset(format: str, path: Path, out: Path, lang: str | None = None, name: str | None = None, seed: int = 0) -> Path:
    """Import a public set into `out` (splits, manifest, benchmark registry); returns the manifest's path.
    `name` (default: the set's folder name) prefixes every function: `<name>.<group>.<intent>`."""
    path, out = Path(path), Path(out)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r} ({', '.join(FORMATS)})")
    name = name or identifier((path if path.is_dir() else path.parent).resolve().name, path, None, "name")
    if identifier(name, path, None, "name") != name:
        raise InputError(path, None, "name", f"{name!r} must be an identifier [a-z][a-z0-9_]*")
    lang = lang or DEFAULT_LANG[format]
    converted = convert(read_splits(format, path, lang, seed), name, lang)
    files = write_splits(converted, out)
    catalog = write_catalog(converted.records["train"], converted.labels, converted.slots, out, path)
    registry = load_benchmark_registry(out)
    settings = {"format": format, "name": name, "lang": lang, "seed": seed}
    manifest: dict[str, Any] = {
        "import": settings, "registry": len(registry),
        "catalog": [str(p.relative_to(out)) for p in catalog if p.parent.name == CATALOG_DIR],
        "lexicons": LEXICON_DIR, "unknown_function": unknown_function(name), "unseen": converted.unseen,
        "labels": converted.labels, "slots": converted.slots, "files": files,
    }
    manifest["version"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    manifest["import"]["source"] = str(path)  # provenance, kept out of the version: moving the data changes nothing
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return out / MANIFEST
