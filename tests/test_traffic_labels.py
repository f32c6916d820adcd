"""Labels for logged traffic: a teacher behind a real OpenAI-compatible server, the review queue and its terminal,
and the export as a dataset folder."""

import io
import json
import sqlite3

import pytest
import torch
from safetensors.torch import load_file

from tests.test_traffic import rows, traffic_client
from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.app.serve.router import create_app
from tvcall.app.serve.server import running_server
from tvcall.cli import main
from tvcall.data.record import Span
from tvcall.data.review import review_terminal
from tvcall.data.splits import read_manifest, read_split
from tvcall.data.teacher import Teacher, label_traffic
from tvcall.data.traffic import Logged, connect, logged, review_queue, save_label, typicality
from tvcall.errors import InputError
from tvcall.functions.validate import call_errors


@pytest.fixture
def log(registry, tmp_path):
    """A traffic log of four answered requests, one with a client's 'wrong'."""
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        ids = [client.post("/v1/route", json={"text": text}).json()["id"]
               for text in ("volume 30", "bedroom light on", "把音量调到二十", "what a nice day")]
        client.post("/v1/feedback", json={"id": ids[1], "correct": False})
    return path, ids


def test_a_teacher_behind_a_real_server_labels_every_logged_utterance(registry, base_model, tokenizer, log):
    path, ids = log
    teacher_app = create_app(TransformersEngine(base_model, tokenizer, registry))  # another tvcall serve, over HTTP
    with running_server(teacher_app) as url:
        report = label_traffic(path, Teacher(f"{url}/v1", "teacher-model"), registry)
    assert report.labelled + report.rejected == len(ids) and report.labelled >= 1
    labels = rows(path, "labels")
    assert {label["source"] for label in labels} == {"teacher"} and {label["labeller"] for label in labels} == {"teacher-model"}
    for label in labels:
        assert call_errors(registry, label["name"], json.loads(label["arguments"])) == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM requests").fetchone()[0] == len(ids)  # the log itself untouched


def test_the_review_queue_puts_complaints_then_disagreements_then_doubt_first(registry, log):
    path, ids = log
    with connect(path) as connection:
        connection.execute("UPDATE requests SET confidence = 0.2 WHERE id = ?", (ids[3],))
        save_label(connection, registry, ids[2], "teacher", "sound.volume.set", {"value": 20})  # the router said none
        save_label(connection, registry, ids[0], "review", "sound.volume.set", {"value": 30})
        queue = [item.id for item in review_queue(logged(connection))]
    assert queue == [ids[1], ids[2], ids[3]]  # wrong, teacher disagrees, least confident; the reviewed one is done


def test_doubtful_answers_are_reviewed_in_turn_across_functions():
    def item(i, name, confidence):
        return Logged(f"r{i}", float(i), "t", "en", name, {}, confidence, False, None, None)

    long_calls = [item(i, "a.b.many_slots", 0.1 + i / 100) for i in range(4)]  # many slots: doubtful by construction
    others = [item(10, "a.b.short", 0.6), item(11, "a.b.short", 0.5), item(12, None, 0.7)]
    order = [i.id for i in review_queue(long_calls + others)]
    assert order[:3] == ["r0", "r11", "r12"] and order[3:5] == ["r1", "r10"] and order[5:] == ["r2", "r3"]


def test_equally_doubtful_answers_put_the_common_command_before_the_outlier():
    def item(i, text, confidence):
        return Logged(f"r{i}", float(i), text, "en", "a.b.play", {}, confidence, False, None, None)

    common = [item(i, f"play some jazz by artist {i}", 0.9) for i in range(8)]
    outlier = item(20, "qzx vvk plorp", 0.4)
    doubtful_common = item(21, "play some jazz by artist 99", 0.4)
    order = [i.id for i in review_queue([outlier, *common, doubtful_common])]
    assert order[0] == "r21" and order.index("r21") < order.index("r20")


def test_typicality_is_highest_for_repeated_commands_and_lowest_for_unrelated_text():
    texts = ["turn up the volume", "turn up the volume", "turn the volume down", "xq"]
    typical = typicality(texts, neighbours=1)
    assert typical["turn up the volume"] == pytest.approx(1.0)
    assert typical["turn up the volume"] > typical["turn the volume down"] > typical["xq"]


def test_terminal_review_saves_only_calls_that_validate(registry, log):
    path, ids = log
    out = io.StringIO()
    answers = ['c sound.volume.set {"value": "loud"}', "c no.such.fn {}", "c sound.volume.set [1]", "x",
               "a",  # the first request (the complaint: bedroom light on): the router's call after all
               "s",  # skip the next (volume 30)
               "n",  # 把音量调到二十: no function
               "q"]
    with connect(path) as connection:
        saved = review_terminal(connection, registry, answers, out, reviewer="ana")
    assert saved == 2
    text = out.getvalue()
    assert text.count("not saved") == 4 and "unknown function 'no.such.fn'" in text and "value: 'loud'" in text
    labels = {label["request_id"]: label for label in rows(path, "labels")}
    assert set(labels) == {ids[1], ids[2]} and labels[ids[2]]["name"] is None
    assert all(label["source"] == "review" and label["labeller"] == "ana" for label in labels.values())


def test_a_label_with_a_span_outside_the_text_or_a_bad_call_is_refused_and_nothing_written(registry, log):
    path, ids = log
    with connect(path) as connection:
        with pytest.raises(InputError, match="spans: span room"):
            save_label(connection, registry, ids[1], "review", "smarthome.light.turn_on", {"room": "bedroom"},
                       [Span(slot="room", start=10, end=99)])
        with pytest.raises(InputError, match="call: "):
            save_label(connection, registry, ids[0], "review", "sound.volume.set", {"value": 1000})
        with pytest.raises(InputError, match="id: no logged request"):
            save_label(connection, registry, "req-" + "0" * 32, "review", None, {})
    assert rows(path, "labels") == []


def test_export_writes_reviewed_traffic_as_a_dataset_split_by_time(registry, log, tmp_path, capsys):
    path, ids = log
    with connect(path) as connection:
        for index, request_id in enumerate(ids):
            connection.execute("UPDATE requests SET time = ? WHERE id = ?", (1000.0 + index, request_id))
        save_label(connection, registry, ids[0], "review", "sound.volume.set", {"value": 30})
        save_label(connection, registry, ids[1], "review", "smarthome.light.turn_on", {"room": "bedroom"})
        save_label(connection, registry, ids[3], "review", None, {})
        save_label(connection, registry, ids[2], "teacher", "sound.volume.set", {"value": 20})
    out = tmp_path / "export"
    assert main(["traffic", "export", "--log", str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("manifest.json")
    train, dev, test = (read_split(out, split) for split in ("train", "dev", "test"))
    assert [r.id for r in train + dev + test] == [ids[0], ids[1], ids[3]]  # oldest first; the teacher-only one left out
    assert test[-1].id == ids[3] and all(r.source == "traffic:review" for r in train + dev + test)
    light = next(r for r in train + dev + test if r.id == ids[1])
    assert light.span_text("room") == "bedroom"
    assert read_manifest(out)["version"]
    with_teacher = tmp_path / "export-teacher"
    assert main(["traffic", "export", "--log", str(path), "--out", str(with_teacher), "--include-teacher"]) == 0
    everything = [r for split in ("train", "dev", "test") for r in read_split(with_teacher, split)]
    assert {r.id: r.source for r in everything}[ids[2]] == "traffic:teacher"
    all_train = tmp_path / "export-all-train"
    assert main(["traffic", "export", "--log", str(path), "--out", str(all_train), "--split-shares", "1,0,0"]) == 0
    assert [r.id for r in read_split(all_train, "train")] == [ids[0], ids[1], ids[3]]
    assert read_split(all_train, "dev") == read_split(all_train, "test") == []


@pytest.mark.parametrize("shares", ["0.5,0.5", "0.7,0.2,0.2", "1,-0.5,0.5", "a,b,c"])
def test_export_rejects_split_shares_that_are_not_three_shares_adding_up_to_one(log, tmp_path, capsys, shares):
    out = tmp_path / "export"
    assert main(["traffic", "export", "--log", str(log[0]), "--out", str(out), "--split-shares", shares]) == 2
    assert f"--split-shares: {shares}: needs three shares" in capsys.readouterr().err and not out.exists()


def test_traffic_commands_name_what_they_miss(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["traffic", "label", "--log", str(tmp_path / "t.sqlite")])
    assert "--teacher-url and --teacher-model" in capsys.readouterr().err
    assert main(["traffic", "stats", "--log", str(tmp_path / "none.sqlite")]) == 2
    assert "no traffic log here" in capsys.readouterr().err


def test_train_takes_the_exported_traffic_as_a_second_data_folder(registry, log, tmp_path, capsys):
    from tests.test_pipeline import _tvcall
    from tvcall.run import RunDir

    path, ids = log
    with connect(path) as connection:
        for request_id, text_value in zip(ids[:3], (30, None, 20), strict=True):
            if text_value is not None:
                save_label(connection, registry, request_id, "review", "sound.volume.set", {"value": text_value})
    exported, data, run = tmp_path / "export", tmp_path / "data", tmp_path / "run"
    assert main(["traffic", "export", "--log", str(path), "--out", str(exported)]) == 0
    extra = len(read_split(exported, "train"))
    _tvcall("data", "synth", "--out", str(data), "--train-size", "16", "--dev-size", "4", "--test-size", "4", cwd=tmp_path)
    _tvcall("train", "--data", str(data), "--data", str(exported), "--out", str(run), "--set", "num_train_examples=1000",
            "--set", "per_device_train_batch_size=8", cwd=tmp_path)
    summary = RunDir(run).summary()
    assert extra >= 1 and summary.train_examples == len(read_split(data, "train")) + extra  # single commands and follow-ups
    assert summary.data_version == f"{read_manifest(data)['version']}+{read_manifest(exported)['version']}"
    assert RunDir(run).config().extra_data_dirs == [str(exported)]

    # the served run trained further: it starts from the run's adapter (unchanged at learning rate 0), not a fresh one
    further = tmp_path / "run-further"
    _tvcall("train", "--data", str(data), "--data", str(exported), "--init-from", str(run), "--out", str(further),
            "--set", "num_train_examples=1000", "--set", "per_device_train_batch_size=8", "--set", "learning_rate=0",
            "--set", "lora_r=4", cwd=tmp_path)
    started, ended = (load_file(RunDir(r).adapter_dir / "adapter_model.safetensors") for r in (run, further))
    assert started.keys() == ended.keys() and all(torch.equal(started[k], ended[k]) for k in started)
    assert RunDir(further).config().lora == RunDir(run).config().lora and RunDir(further).config().init_adapter == str(run)
    assert main(["train", "--data", str(data), "--init-from", str(data), "--out", str(tmp_path / "run-no-adapter")]) == 2
    assert "init_adapter: needs a LoRA adapter to start from" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "dev", "test"):
        (bad / f"{split}.jsonl").write_text("")
    (bad / "train.jsonl").write_text(json.dumps({"id": "x", "text": "hi", "lang": "en", "function": "no.such.fn"}) + "\n")
    (bad / "manifest.json").write_text(json.dumps({"version": "bad", "files": {}}))
    assert main(["train", "--data", str(data), "--data", str(bad), "--out", str(tmp_path / "run-bad")]) == 2
    assert "train.jsonl:1: function: 'no.such.fn' is not in the registry" in capsys.readouterr().err
