"""A registry that grows without retraining the model. New functions (in a catalog folder the run was not trained
on) get what is cheap to fit: columns of the retriever's function classifier, one per new function, fitted on the
run's training split plus utterances synthesised from the new functions' own training templates, as many per
function as the split has on average; the run's own columns stay as they are. Every fifth utterance of a function is
held back from the fit: the engine chooses on them how much the new names' prior is raised against the model's
preference for the names it was trained on (`unseen_boost`). The model is untouched; the decoder builds its name
trie from whatever registry it is given. The grown classifier and the boost are kept in the run folder, keyed by
the new functions, so a restart loads them."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvcall.data.record import Record, write_atomic
from tvcall.data.splits import read_split
from tvcall.data.synth import SynthConfig, synthesize
from tvcall.errors import InputError
from tvcall.functions.registry import Registry
from tvcall.functions.retrieve import FunctionClassifier, load_classifier
from tvcall.run import RunDir

GROWN_FORMAT = 3  # in the file's key: a classifier grown, or its boost chosen, by an earlier method is not reused
                  # (1: refitted whole; 2: a new object's functions scored by their own columns)
HELD_BACK_EVERY = 5  # every fifth utterance of a function chooses the boost instead of fitting the classifier


@dataclass
class Refresh:
    classifier: FunctionClassifier | None
    new_functions: list[str]
    synthesised: int  # utterances made for the new functions (0 when loaded from the run folder or nothing is new)
    seconds: float
    path: Path | None  # where the grown classifier is kept
    unseen_boost: float | None = None  # None: not chosen yet (`choose_unseen_boost`)
    unfitted: list[Record] = field(default_factory=list)  # synthesised, held back from the fit (empty when loaded)


def new_functions(registry: Registry, run: RunDir) -> list[str]:
    """The registry's functions the run was not trained over."""
    known = set(run.registry().names)
    return [name for name in registry.names if name not in known]


def grown_classifier_file(run: RunDir, registry: Registry, names: list[str]) -> Path:
    """The refitted classifier's file: keyed by the new functions' full specs, so an edited template refits."""
    specs = json.dumps([GROWN_FORMAT, *[registry[name].model_dump(mode="json") for name in names]], sort_keys=True,
                       ensure_ascii=False)
    return run.path / f"classifier-grown-{hashlib.sha1(specs.encode()).hexdigest()[:12]}.joblib"


def boost_file(classifier_file: Path) -> Path:
    return classifier_file.with_suffix(".boost.json")


def read_unseen_boost(classifier_file: Path) -> float | None:
    path = boost_file(classifier_file)
    return float(json.loads(path.read_text())["unseen_boost"]) if path.exists() else None


def save_unseen_boost(classifier_file: Path, boost: float, accuracy: dict[str, Any]) -> None:
    """The boost chosen, with the held-back and dev accuracy of each boost tried."""
    write_atomic(boost_file(classifier_file), json.dumps({"unseen_boost": boost, "accuracy": accuracy}, indent=1) + "\n")


def grown_utterances(run: RunDir, registry: Registry, names: list[str], seed: int = 0) -> tuple[list[Record], list[Record]]:
    """The run's training split and the utterances synthesised for the new functions (deterministic by seed)."""
    data_dir = run.data_dir_at_hand()
    if data_dir is None:
        raise InputError(run.config_file, None, "data_dir", f"{len(names)} functions are new to the run, and refitting its "
                         f"classifier needs its training split, which is not here ({run.data_dir()})")
    train = read_split(data_dir, "train")
    labelled = [record.function for record in train if record.function]
    per_function = max(1, round(len(labelled) / max(1, len(set(labelled)))))
    grown = Registry({name: registry[name] for name in names}, lexicon_dir=registry.lexicon_dir)
    made = synthesize(grown, "train", per_function * len(names), SynthConfig(seed=seed, oos_share=0.0),
                      exclude={record.text for record in train}, in_turn=True)
    return train, made


def is_held_back(made: list[Record]) -> list[bool]:
    """Each function's fifth, tenth … utterance: a function keeps at least four for the fit."""
    seen: dict[str | None, int] = {}
    marks = []
    for record in made:
        seen[record.function] = seen.get(record.function, 0) + 1
        marks.append(seen[record.function] % HELD_BACK_EVERY == 0)
    return marks


def held_back(made: list[Record]) -> list[Record]:
    return [record for record, held in zip(made, is_held_back(made), strict=True) if held]


def refresh(run: RunDir, registry: Registry, seed: int = 0, log: Callable[[str], None] = lambda _: None) -> Refresh:
    """The run's classifier for `registry`: its own where the registry holds nothing new, else one refitted (or
    loaded, when refitted before) with the new functions."""
    started = time.perf_counter()
    trained = load_classifier(run.classifier_file)
    if trained is None:
        return Refresh(None, [], 0, 0.0, None)
    names = new_functions(registry, run)
    if not names:
        return Refresh(trained, [], 0, time.perf_counter() - started, None)
    path = grown_classifier_file(run, registry, names)
    if path.exists():
        return Refresh(FunctionClassifier.load(path), names, 0, time.perf_counter() - started, path, read_unseen_boost(path))
    train, made = grown_utterances(run, registry, names, seed)
    log(f"fitting the function classifier's columns of {len(names)} new functions on {len(made)} synthesised utterances")
    fitted = [record for record, held in zip(made, is_held_back(made), strict=True) if not held]
    examples = [*train, *fitted]
    classifier = trained.extended([r.text for r in examples], [r.function or "" for r in examples], names, seed)
    classifier.save(path)
    return Refresh(classifier, names, len(made), time.perf_counter() - started, path, unfitted=held_back(made))
