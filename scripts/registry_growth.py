"""New functions without retraining, measured: hold `--hold-out` functions of the shipped registry out of training
entirely, train, then serve the whole registry (`--registry`), which grows only the function classifier (and
chooses the new names' boost), and evaluate the held-out functions' test utterances.

1. Choose the held-out functions: whole catalog entries (a family of functions, or a one-off function) in a seeded
   order across every domain, until `--hold-out` functions.
2. A data folder without them (`grown-data`): the registry's catalog less those entries as its own catalog, and the
   synthetic splits less their utterances. A second folder (`new-functions`) holds `--new-test` test utterances of
   the held-out functions, on held-out phrasings and values, like the synthetic test split.
3. Train on `grown-data` (`tvcall train`, the CPU default's budget) and evaluate it on its own test split.
4. `tvcall registry refresh` with the whole registry (timed), then evaluate with `--registry` on the other functions'
   test split and on `new-functions`; with `--upper-bound RUN` (a run trained on every function) that run too.

Every stage is skipped when its output exists, so an interrupted run resumes where it stopped.

    .venv/bin/python scripts/registry_growth.py --upper-bound runs/cpu-default
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml
from tvcall_steps import tvcall

from tvcall.data.record import write_jsonl
from tvcall.data.splits import read_split
from tvcall.data.synth import SynthConfig, synthesize
from tvcall.functions.catalog import CATALOG_DIR, load_catalog_file
from tvcall.functions.registry import DATA_CATALOG_DIR, DATA_LEXICON_DIR, LEXICON_DIR, Registry, default_registry
from tvcall.run import RunDir
from tvcall.yamlio import line_of, load_yaml, strip_lines


def catalog_entries() -> list[tuple[Path, str, int, list[str]]]:
    """Every catalog entry: (file, `families` or `functions`, its line, the functions it defines)."""
    entries = []
    for path in sorted(CATALOG_DIR.glob("*.yaml")):
        specs, lines = load_catalog_file(path)
        by_line: dict[int | None, list[str]] = defaultdict(list)
        for spec in specs:
            by_line[lines[spec.name]].append(spec.name)
        doc = load_yaml(path)
        entries += [(path, kind, line_of(node), by_line[line_of(node)]) for kind in ("families", "functions")
                    for node in doc.get(kind) or []]
    return entries


def hold_out(count: int, seed: int) -> list[tuple[Path, str, int, list[str]]]:
    """Whole entries in a seeded order until `count` functions (an entry that would overshoot is passed over)."""
    entries = catalog_entries()
    random.Random(seed).shuffle(entries)
    chosen, total = [], 0
    for entry in entries:
        if total + len(entry[3]) <= count:
            chosen.append(entry)
            total += len(entry[3])
    return chosen


def write_catalog_without(held: list[tuple[Path, str, int, list[str]]], out: Path) -> None:
    out.mkdir(parents=True)
    dropped = {(path, line) for path, _, line, _ in held}
    for path in sorted(CATALOG_DIR.glob("*.yaml")):
        doc = load_yaml(path)
        for kind in ("families", "functions"):
            if doc.get(kind):
                doc[kind] = [node for node in doc[kind] if (path, line_of(node)) not in dropped]
        (out / path.name).write_text(yaml.safe_dump(strip_lines(doc), allow_unicode=True, sort_keys=False, width=200))


def write_folder(out: Path, manifest: dict, splits: dict[str, list]) -> None:
    for split, records in splits.items():
        write_jsonl(out / f"{split}.jsonl", records)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/data"), help="the synthetic splits (`make data`)")
    parser.add_argument("--out", type=Path, default=Path("runs/registry-growth"))
    parser.add_argument("--hold-out", type=int, default=100)
    parser.add_argument("--new-test", type=int, default=500, help="test utterances of the held-out functions")
    parser.add_argument("--upper-bound", type=Path, help="a run trained on every function, evaluated the same way")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE", help="passed to tvcall train --set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out, registry = args.out, default_registry()
    grown_data, new_data, run = out / "grown-data", out / "new-functions", out / "run"
    held = hold_out(args.hold_out, args.seed)
    held_names = [name for entry in held for name in entry[3]]
    kinds = {kind: sum(entry[1] == kind for entry in held) for kind in ("families", "functions")}
    print(f"held out {len(held_names)} functions of {len(registry)}: {kinds['families']} families and "
          f"{kinds['functions']} one-off functions from {len({entry[0].stem for entry in held})} domains")
    manifest = json.loads((args.data / "manifest.json").read_text())
    if not (grown_data / "manifest.json").exists():
        write_catalog_without(held, grown_data / DATA_CATALOG_DIR)
        shutil.copytree(LEXICON_DIR, grown_data / DATA_LEXICON_DIR)
        splits = {split: [r for r in read_split(args.data, split) if r.function not in set(held_names)]
                  for split in ("train", "dev", "test")}
        write_folder(grown_data, manifest | {"version": f"{manifest['version']}-without{len(held_names)}",
                                             "held_out": held_names}, splits)
    if not (new_data / "manifest.json").exists():
        train_texts = {r.text for r in read_split(args.data, "train")}
        new = Registry({name: registry[name] for name in held_names})
        records = synthesize(new, "test", args.new_test, SynthConfig(seed=args.seed, oos_share=0.0), exclude=train_texts)
        write_folder(new_data, {"version": f"new-functions-{manifest['version']}-{len(held_names)}"}, {"test": records})

    if not RunDir(run).has_adapter:
        tvcall("train", "--config", "cpu-default", "--data", str(grown_data), "--out", str(run),
               *[arg for pair in args.train_set for arg in ("--set", pair)])
    whole = str(CATALOG_DIR)
    if not RunDir(run).eval_dir("test").exists():
        tvcall("eval", "--run", str(run))
    started = time.perf_counter()
    print(tvcall("registry", "refresh", "--run", str(run), "--registry", whole).strip())
    print(f"refresh took {time.perf_counter() - started:.1f} s wall, process start included")
    tvcall("eval", "--run", str(run), "--registry", whole)
    tvcall("eval", "--run", str(run), "--registry", whole, "--data", str(new_data))
    if args.upper_bound:
        tvcall("eval", "--run", str(args.upper_bound), "--data", str(grown_data))
        tvcall("eval", "--run", str(args.upper_bound), "--data", str(new_data))
    print("\n## the other functions: the run's own registry against the grown one\n"
          + tvcall("eval", "compare", str(run), str(RunDir(run).eval_dir("test", "registry-catalog")), "--split", "test"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
