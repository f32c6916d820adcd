"""Conversations through the router: undo takes the session's last call back on the simulated TV, a risky call
runs only on its confirmation in the same session within its expiry, and every call the TV runs knows its inverse."""

import time

import pytest
from fastapi.testclient import TestClient

from tests.test_router import SCRIPT, ScriptedEngine, tv_of
from tvcall.app.serve.router import RouterConfig, create_app
from tvcall.app.serve.sessions import CANCEL, CONFIRM, UNDO, Sessions
from tvcall.data.synth import SynthConfig, synthesize
from tvcall.functions.inverse import OPPOSITE_ACTIONS
from tvcall.functions.tv import SimulatedTV

DIALOG_SCRIPT = {
    **SCRIPT,
    "静音": ("sound.mute.turn_on", {}),
    "switch to HDMI 2": ("input.source.switch", {"source": "hdmi2"}),
    "what's the volume": ("sound.volume.get", {}),
    "确定": (CONFIRM, {}),
    "算了": (CANCEL, {}),
    "撤销": (UNDO, {}),
}


def dialog_client(registry, **config):
    return TestClient(create_app(ScriptedEngine(registry, DIALOG_SCRIPT), RouterConfig(**config)))


def say(client, text, session="living-room", **extra):
    response = client.post("/v1/route", json={"text": text, "execute": True, "session": session, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_undo_takes_back_the_sessions_calls_newest_first(registry):
    with dialog_client(registry) as client:
        tv = tv_of(client)
        say(client, "volume 30")
        say(client, "switch to HDMI 2")
        assert (tv.volume, tv.state.input) == (30, "hdmi2")
        undone = say(client, "撤销")["result"]
        assert undone["ok"] and undone["data"]["undone"]["name"] == "input.source.switch"
        assert (tv.volume, tv.state.input) == (30, "antenna")
        say(client, "撤销")
        assert tv.volume == 20
        nothing = say(client, "撤销", lang="en")["result"]
        assert not nothing["ok"] and nothing["message"] == "nothing to undo in this session"


def test_undo_is_per_session_and_needs_one(registry):
    with dialog_client(registry) as client:
        say(client, "volume 30", session="a")
        assert not say(client, "撤销", session="b")["result"]["ok"]
        no_session = client.post("/v1/route", json={"text": "撤销", "execute": True}).json()["result"]
        assert not no_session["ok"] and "session" in no_session["message"]
        assert tv_of(client).volume == 30


def test_a_call_that_changed_nothing_restorable_says_it_cannot_be_undone(registry):
    with dialog_client(registry) as client:
        say(client, "what's the volume")
        answer = say(client, "撤销", lang="en")["result"]
        assert not answer["ok"] and answer["message"] == "sound.volume.get cannot be undone"


def test_a_risky_call_runs_on_confirmation_in_its_own_session_only(registry):
    with dialog_client(registry, confirm_ttl_s=60) as client:
        tv = tv_of(client)
        held = say(client, "reset everything", session="a")
        assert held["needs_confirmation"] and tv.state.factory_resets == 0
        assert not say(client, "确定", session="b")["result"]["ok"] and tv.state.factory_resets == 0
        done = say(client, "确定", session="a")
        assert done["name"] == CONFIRM and done["result"]["name"] == "system.device.factory_reset"
        assert tv.state.factory_resets == 1
        assert not say(client, "确定", session="a")["result"]["ok"] and tv.state.factory_resets == 1  # once


def test_a_held_call_expires_and_a_cancelled_one_never_runs(registry):
    with dialog_client(registry, confirm_ttl_s=0.05) as client:
        say(client, "reset everything")
        time.sleep(0.1)
        assert not say(client, "确定")["result"]["ok"]
    with dialog_client(registry, confirm_ttl_s=60) as client:
        held = say(client, "reset everything")
        assert say(client, "算了", lang="en")["result"]["message"] == "cancelled: system.device.factory_reset"
        assert not say(client, "确定")["result"]["ok"]
        assert client.post("/v1/confirm", json={"token": held["confirmation_token"]}).status_code == 404
        assert tv_of(client).state.factory_resets == 0


@pytest.mark.parametrize("session", ["", "x" * 65, "has space", "含中文", "a/b", 7])
def test_a_malformed_session_id_is_refused_with_its_field(registry, session):
    with dialog_client(registry) as client:
        response = client.post("/v1/route", json={"text": "volume 30", "execute": True, "session": session})
        assert response.status_code == 422 and "session" in response.text
        assert tv_of(client).volume == 20


def test_sessions_are_bounded_in_number_and_age():
    sessions = Sessions(ttl_s=0.05, max_sessions=2, max_calls=2)
    first = sessions.get("a")
    assert sessions.get("a") is first
    sessions.get("b"), sessions.get("c")
    assert len(sessions) == 2 and sessions.get("a") is not first  # the least recently used made room
    time.sleep(0.1)
    sessions.get("d")
    assert len(sessions) == 1  # the idle ones expired
    assert sessions.get("d").calls.maxlen == 2


def test_every_synthesised_call_is_taken_back_by_its_inverse(registry):
    """Each call the TV runs reports the calls that undo it; running them restores the state it changed."""
    tv = SimulatedTV(registry)

    def state():  # a setting at its default reads the same whether stored or not
        snapshot = tv.snapshot()
        snapshot["settings"] = {k: v for k, v in snapshot["settings"].items() if v != tv.default(k.split("@")[0])}
        return snapshot

    records = synthesize(registry, "train", 3000, SynthConfig(seed=1, oos_share=0.0))
    undone = 0
    for record in records:
        before = state()
        result = tv.call(record.function, record.arguments)
        for call in result.undo:
            tv.call(call["name"], call["arguments"])
        after = state()
        if result.undo:
            undone += 1
            # the channel left by an undo becomes the last watched one, as any switch back would make it
            ignored = ("history", "power", "status", "previous_channel")
            changed = {k for k in before if k not in ignored and before[k] != after[k]}
            assert not changed, (record.function, record.arguments, result.undo, changed)
            for key, status in after["status"].items():  # an object never acted on ends in the opposite action
                assert status == before["status"].get(key, OPPOSITE_ACTIONS.get(record.function.split(".")[-1])), key
    assert undone > 1000


def test_a_chat_context_naming_an_unknown_function_is_refused_with_where(registry):
    def chat(name):
        earlier = {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                        "function": {"name": name, "arguments": "{}"}}]}
        return client.post("/v1/chat/completions", json={"messages": [
            {"role": "user", "content": "静音"}, earlier, {"role": "user", "content": "volume 30"}]})

    with dialog_client(registry) as client:
        assert chat("sound.mute.turn_on").status_code == 200
        refused = chat("sound.volume.explode")
        assert refused.status_code == 422
        assert "messages[1].tool_calls[0].function.name: unknown function 'sound.volume.explode'" in refused.text
