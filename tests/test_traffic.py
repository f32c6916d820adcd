"""The traffic log behind `tvcall serve`: every answered request kept in SQLite, feedback on it validated.

The router's logic runs on `ScriptedEngine` (fixed calls per text) so that each test knows the call it logs.
"""

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from tests.test_router import SCRIPT, ScriptedEngine
from tvcall.app.serve.router import RouterConfig, create_app


def traffic_client(registry, path, **config):
    return TestClient(create_app(ScriptedEngine(registry, SCRIPT), RouterConfig(traffic=str(path), run="runs/x", data_version="v1",
                                                                               **config)))


def rows(path, table="requests"):
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(f"SELECT * FROM {table}")]


def test_every_answered_route_is_logged_under_the_id_it_returns(registry, tmp_path):
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        first = client.post("/v1/route", json={"text": "volume 30"}).json()
        second = client.post("/v1/route", json={"text": "把灯关掉吧", "execute": True}).json()
    logged = {row["id"]: row for row in rows(path)}
    assert set(logged) == {first["id"], second["id"]} and first["id"].startswith("req-")
    row = logged[first["id"]]
    assert (row["text"], row["name"], json.loads(row["arguments"]), row["endpoint"]) == ("volume 30", "sound.volume.set", {"value": 30}, "/v1/route")
    assert (row["run"], row["data_version"], row["lang"], row["executed"]) == ("runs/x", "v1", "en", 0)
    assert row["latency_ms"] == first["latency_ms"] and row["confidence"] == first["confidence"]
    none = logged[second["id"]]
    assert none["name"] is None and json.loads(none["arguments"]) == {} and none["lang"] == "zh"


def test_a_risky_call_is_logged_held_and_then_confirmed(registry, tmp_path):
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        held = client.post("/v1/route", json={"text": "reset everything", "execute": True}).json()
        assert rows(path)[0]["confirmation"] == "held" and rows(path)[0]["executed"] == 0
        assert client.post("/v1/confirm", json={"token": held["confirmation_token"]}).status_code == 200
    row = rows(path)[0]
    assert (row["id"], row["confirmation"], row["executed"]) == (held["id"], "confirmed", 1)


def test_executed_calls_are_marked_executed(registry, tmp_path):
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        client.post("/v1/route", json={"text": "bedroom light on", "execute": True})
    assert rows(path)[0]["executed"] == 1 and rows(path)[0]["confirmation"] is None


def test_chat_completions_are_logged_and_take_feedback(registry, tmp_path):
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "volume 30"}]}).json()
        assert answer["id"].startswith("chatcmpl-")
        assert client.post("/v1/feedback", json={"id": answer["id"], "correct": True}).status_code == 200
    assert rows(path)[0]["endpoint"] == "/v1/chat/completions" and rows(path)[0]["name"] == "sound.volume.set"
    assert rows(path, "feedback")[0]["correct"] == 1


def test_feedback_with_the_right_call_is_kept(registry, tmp_path):
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        answer = client.post("/v1/route", json={"text": "volume 30"}).json()
        right = {"name": "sound.volume.set", "arguments": {"value": 35}}
        response = client.post("/v1/feedback", json={"id": answer["id"], "correct": False, "call": right})
        assert response.status_code == 200 and response.json() == {"id": answer["id"], "recorded": True}
        assert client.post("/v1/feedback", json={"id": answer["id"], "correct": False}).status_code == 200  # just "wrong"
    kept = rows(path, "feedback")
    assert [(f["request_id"], f["correct"], f["name"]) for f in kept] == [(answer["id"], 0, "sound.volume.set"), (answer["id"], 0, None)]
    assert json.loads(kept[0]["arguments"]) == {"value": 35}


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"id": "req-" + "0" * 32, "correct": False}, 404, "id: no answered request"),
    ({"id": "not-an-id", "correct": False}, 422, "id"),
    ({"correct": False}, 422, "id"),
    ({"id": "ANSWER", "correct": "no"}, 422, "correct"),
    ({"id": "ANSWER", "correct": False, "call": {"name": "sound.volume.set", "arguments": {"value": "loud"}}}, 422, "call: "),
    ({"id": "ANSWER", "correct": False, "call": {"name": "no.such.function", "arguments": {}}}, 422, "call: "),
    ({"id": "ANSWER", "correct": True, "call": {"name": "sound.volume.set", "arguments": {"value": 30}}}, 422, "call: give a call only"),
    ({"id": "ANSWER", "correct": False, "extra": 1}, 422, "extra"),
])
def test_bad_feedback_is_refused_naming_the_field_and_nothing_is_written(registry, tmp_path, body, status, message):
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        answer = client.post("/v1/route", json={"text": "volume 30"}).json()
        body = {key: answer["id"] if value == "ANSWER" else value for key, value in body.items()}
        response = client.post("/v1/feedback", json=body)
    assert response.status_code == status and message in response.json()["error"]["message"]
    assert rows(path, "feedback") == []


def test_without_a_traffic_log_feedback_is_a_conflict(registry):
    with TestClient(create_app(ScriptedEngine(registry, SCRIPT), RouterConfig())) as client:
        answer = client.post("/v1/route", json={"text": "volume 30"}).json()
        response = client.post("/v1/feedback", json={"id": answer["id"], "correct": False})
    assert response.status_code == 409 and "--no-traffic" in response.json()["error"]["message"]


def test_a_locked_log_never_fails_a_request_it_counts_the_failed_write(registry, tmp_path):
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        client.post("/v1/route", json={"text": "volume 30"})
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file
        try:
            response = client.post("/v1/route", json={"text": "bedroom light on"})
            metrics = client.get("/metrics").text
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 200 and response.json()["name"] == "smarthome.light.turn_on"
        assert 'tvcall_errors_total{kind="traffic_log"} 1.0' in metrics
        client.post("/v1/route", json={"text": "volume 30"})  # the log works again once the file is free
    assert len(rows(path)) == 2
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
