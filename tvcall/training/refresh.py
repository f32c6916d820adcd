"""A registry that grows without retraining the model. New functions (in a catalog folder the run was not trained
on) get what is cheap to refit: the retriever's function classifier, fitted again on the run's training split plus
utterances synthesised from the new functions' own training templates, as many per function as the split has on
average. The model is untouched; the decoder builds its name trie from whatever registry it is given. The refitted
classifier is kept in the run folder, keyed by the new functions, so a restart loads it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tvcall.data.splits import read_split
from tvcall.data.synth import SynthConfig, synthesize
from tvcall.errors import InputError
from tvcall.functions.registry import Registry
from tvcall.functions.retrieve import FunctionClassifier, fit_classifier, load_classifier
from tvcall.run import RunDir


@dataclass
class Refresh:
    classifier: FunctionClassifier | None
    new_functions: list[str]
    synthesised: int  # utterances made for the new functions (0 when loaded from the run folder or nothing is new)
    seconds: float
    path: Path | None  # where the refitted classifier is kept


def new_functions(registry: Registry, run: RunDir) -> list[str]:
    """The registry's functions the run was not trained over."""
    known = set(run.registry().names)
    return [name for name in registry.names if name not in known]


def grown_classifier_file(run: RunDir, registry: Registry, names: list[str]) -> Path:
    """The refitted classifier's file: keyed by the new functions' full specs, so an edited template refits."""
    specs = json.dumps([registry[name].model_dump(mode="json") for name in names], sort_keys=True, ensure_ascii=False)
    return run.path / f"classifier-grown-{hashlib.sha1(specs.encode()).hexdigest()[:12]}.joblib"


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
        return Refresh(FunctionClassifier.load(path), names, 0, time.perf_counter() - started, path)
    data_dir = run.data_dir_at_hand()
    if data_dir is None:
        raise InputError(run.config_file, None, "data_dir", f"{len(names)} functions are new to the run, and refitting its "
                         f"classifier needs its training split, which is not here ({run.data_dir()})")
    train = read_split(data_dir, "train")
    labelled = [record.function for record in train if record.function]
    per_function = max(1, round(len(labelled) / max(1, len(set(labelled)))))
    log(f"refitting the function classifier: {len(names)} new functions, {per_function} synthesised utterances each")
    grown = Registry({name: registry[name] for name in names}, lexicon_dir=registry.lexicon_dir)
    made = synthesize(grown, "train", per_function * len(names), SynthConfig(seed=seed, oos_share=0.0),
                      exclude={record.text for record in train}, in_turn=True)
    classifier = fit_classifier([(r.text, r.function) for r in [*train, *made]], seed)
    classifier.save(path)
    return Refresh(classifier, names, len(made), time.perf_counter() - started, path)
