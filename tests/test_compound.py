"""Compound commands: split at connectives only where every part asks for a call, answered as a list in order through
/v1/route and the chat endpoint, executed in order, and held whole when one of them is risky."""

import asyncio

from fastapi.testclient import TestClient

from tests.test_router import ScriptedEngine, tv_of
from tests.test_traffic import rows
from tvcall.app.demo.page import Demo
from tvcall.app.engine.base import RouteResult
from tvcall.app.engine.compound import route_compound, segmentations
from tvcall.app.serve.router import RouterConfig, create_app
from tvcall.app.serve.sessions import CONFIRM, UNDO
from tvcall.data.compound import connectives, synthesize_compound
from tvcall.data.split_names import COMPOUND_SPLITS
from tvcall.data.synth import SynthConfig, build_splits
from tvcall.eval.compound import compound_metrics


def test_a_text_is_cut_only_at_connectives_into_non_empty_parts():
    assert segmentations("把音量调到20然后切到HDMI2") == [["把音量调到20", "切到HDMI2"]]
    assert segmentations("再大一点") == [] and segmentations("open android settings") == []
    assert segmentations("and then mute") == []  # an empty first part
    options = segmentations("pause, then turn on subtitles and lower the volume")
    assert ["pause", "turn on subtitles", "lower the volume"] in options
    assert ["pause", "turn on subtitles and lower the volume"] in options


def result(name, confidence=0.9):
    return RouteResult(name, {}, confidence, 0.0, raw="")


def scripted(answers):
    return lambda texts: [result(answers.get(t)) for t in texts]


def test_the_most_parts_that_all_ask_for_a_call_win():
    answers = {"a": "x.y.a", "b": "x.y.b", "b and c": "x.y.bc", "a and b": "x.y.ab"}
    assert [r.name for r in route_compound(scripted(answers), "a and b and c")] == ["x.y.a", "x.y.bc"]
    assert [r.name for r in route_compound(scripted(answers), "a and b")] == ["x.y.a", "x.y.b"]
    assert [r.name for r in route_compound(scripted(answers), "a and b", alone={"x.y.b"})] == ["x.y.ab"]


def test_each_part_follows_the_call_before_it():
    def in_context(text, previous):
        return f"after {previous[0]}: {text}" if previous else text

    answers = {"volume 30": "sound.volume.set", "after sound.volume.set: 再大一点": "sound.volume.increase"}
    routed = route_compound(scripted(answers), "volume 30 and then 再大一点", in_context=in_context)
    assert [r.name for r in routed] == ["sound.volume.set", "sound.volume.increase"]
    assert route_compound(scripted(answers), "volume 30 and then 再大一点")[0].name is None  # nothing to follow: one command


def test_route_compound_falls_back_to_the_whole_text():
    answers = {"search for Tom": "search.movie.by_title", "Jerry": None, "search for Tom and Jerry": "search.movie.by_title"}
    routed = route_compound(lambda texts: [result(answers.get(t)) for t in texts], "search for Tom and Jerry")
    assert len(routed) == 1


def test_compound_splits_join_the_splits_commands_with_held_out_connectives(registry):
    for lang in ("zh", "en"):
        assert not set(connectives()["dev"][lang]) & set(connectives()["test"][lang])
    singles = build_splits(registry, SynthConfig(seed=4, train_size=10, dev_size=5, test_size=300))["test"]
    records = synthesize_compound(singles, "test", 120, seed=4)
    by_text = {r.text: r for r in singles}
    assert {len(r.calls) for r in records} == {2, 3} and all(r.id.startswith(COMPOUND_SPLITS["test"]) for r in records)
    for record in records:
        assert [by_text[p].function for p in record.parts] == [c.name for c in record.calls]
        assert len({c.name.rsplit(".", 1)[0] for c in record.calls}) == len(record.calls)
        assert record.text.startswith(record.parts[0]) and record.text.endswith(record.parts[-1])


def test_the_whole_list_must_match_in_order(registry):
    singles = build_splits(registry, SynthConfig(seed=4, train_size=10, dev_size=5, test_size=100))["test"]
    records = synthesize_compound(singles, "test", 10, seed=4)
    gold = [[c.model_dump() for c in r.calls] for r in records]
    assert compound_metrics(records, gold)["exact_match"] == 1.0
    swapped = [list(reversed(g)) for g in gold]
    shortened = [g[:1] for g in gold]
    assert compound_metrics(records, swapped)["exact_match"] == 0.0
    assert compound_metrics(records, shortened)["call_count_accuracy"] == 0.0


COMPOUND_SCRIPT = {
    "volume 30": ("sound.volume.set", {"value": 30}),
    "bedroom light on": ("smarthome.light.turn_on", {"room": "bedroom"}),
    "reset everything": ("system.device.factory_reset", {}),
    "search for Tom": ("search.movie.by_title", {"title": "Tom"}),
    "search for Tom and Jerry": ("search.movie.by_title", {"title": "Tom and Jerry"}),
    "撤销": (UNDO, {}),
    "确定": (CONFIRM, {}),
}


def client_for(registry):
    return TestClient(create_app(ScriptedEngine(registry, COMPOUND_SCRIPT), RouterConfig()))


def test_route_answers_every_call_in_order_and_executes_them(registry):
    with client_for(registry) as client:
        body = client.post("/v1/route", json={"text": "volume 30 and then bedroom light on", "execute": True}).json()
        assert [c["name"] for c in body["calls"]] == ["sound.volume.set", "smarthome.light.turn_on"]
        assert body["name"] == "sound.volume.set" and all(c["result"]["ok"] for c in body["calls"])
        assert tv_of(client).volume == 30
        alone = client.post("/v1/route", json={"text": "search for Tom and Jerry"}).json()
        assert [c["arguments"] for c in alone["calls"]] == [{"title": "Tom and Jerry"}]
        nothing = client.post("/v1/route", json={"text": "write me a poem"}).json()
        assert nothing["calls"] == [] and nothing["name"] is None


def test_a_risky_call_holds_the_whole_list_until_confirmed(registry):
    with client_for(registry) as client:
        held = client.post("/v1/route", json={"text": "volume 30 and then reset everything", "execute": True}).json()
        assert held["needs_confirmation"] and tv_of(client).volume != 30
        done = client.post("/v1/confirm", json={"token": held["confirmation_token"]}).json()
        assert [c["name"] for c in done["calls"]] == ["sound.volume.set", "system.device.factory_reset"]


def test_a_confirmed_list_records_each_calls_outcome_in_the_traffic_log(registry, tmp_path):
    path = tmp_path / "traffic.sqlite"
    with TestClient(create_app(ScriptedEngine(registry, COMPOUND_SCRIPT), RouterConfig(traffic=str(path)))) as client:
        held = client.post("/v1/route", json={"text": "volume 30 and then reset everything", "execute": True}).json()
        assert {r["confirmation"] for r in rows(path)} == {"held"} and len(rows(path)) == 2
        client.post("/v1/confirm", json={"token": held["confirmation_token"]})
    assert {(r["name"], r["confirmation"], r["executed"]) for r in rows(path)} == {
        ("sound.volume.set", "confirmed", 1), ("system.device.factory_reset", "confirmed", 1)}


def test_a_webhook_failing_partway_reports_what_ran_and_runs_nothing_after(registry):
    dead = "http://127.0.0.1:9/hook"  # the discard port: nothing listens
    config = RouterConfig(webhooks={"smarthome": dead}, webhook_timeout_s=0.5)
    with TestClient(create_app(ScriptedEngine(registry, COMPOUND_SCRIPT), config)) as client:
        response = client.post("/v1/route", json={"text": "volume 30 and then bedroom light on and then search for Tom",
                                                  "execute": True})
        assert response.status_code == 200
        ran, failed, skipped = (c["result"] for c in response.json()["calls"])
        assert ran["ok"] and tv_of(client).volume == 30
        assert not failed["ok"] and "did not run" in failed["message"]
        assert not skipped["ok"] and "smarthome.light.turn_on before it failed" in skipped["message"]
        assert [c["name"] for c in tv_of(client).state.history] == ["sound.volume.set"]
        first_fails = client.post("/v1/route", json={"text": "bedroom light on and then volume 30", "execute": True})
        assert first_fails.status_code == 502 and tv_of(client).volume == 30  # nothing ran: the request's error


def test_the_demo_runs_a_compound_command_and_holds_a_risky_list_whole(registry):
    demo = Demo(ScriptedEngine(registry, COMPOUND_SCRIPT))
    outcome = asyncio.run(demo.run_text("volume 30 and then bedroom light on"))
    assert [c["name"] for c in outcome.call["calls"]] == ["sound.volume.set", "smarthome.light.turn_on"]
    assert demo.executed == 2 and outcome.status.startswith("Ran `sound.volume.set`")
    assert ("bedroom", "room") in outcome.highlights and ("30", "value") in outcome.highlights
    held = asyncio.run(demo.run_text("volume 30 and then reset everything"))
    assert held.pending and demo.state.tv.state.factory_resets == 0 and "whole command" in held.question
    assert "ran `system.device.factory_reset`" in asyncio.run(demo.confirm(held.pending))
    assert demo.state.tv.state.factory_resets == 1 and demo.executed == 4
    asyncio.run(demo.run_text("volume 30 and then reset everything"))
    said = asyncio.run(demo.run_text("确定"))  # confirmed by voice: every call of the list counts
    assert demo.state.tv.state.factory_resets == 2 and demo.executed == 6, said.status


def test_a_reply_to_the_conversation_is_never_part_of_a_list(registry):
    with client_for(registry) as client:
        body = client.post("/v1/route", json={"text": "volume 30 and 撤销", "session": "s"}).json()
        assert len(body["calls"]) <= 1


def test_the_chat_endpoint_answers_a_compound_command_with_several_tool_calls(registry):
    with client_for(registry) as client:
        response = client.post("/v1/chat/completions", json={"model": "tvcall", "messages": [
            {"role": "user", "content": "volume 30 and then bedroom light on"}]})
        calls = response.json()["choices"][0]["message"]["tool_calls"]
        assert [c["function"]["name"] for c in calls] == ["sound.volume.set", "smarthome.light.turn_on"]


def test_every_connective_of_the_data_is_one_the_splitter_knows():
    for split in ("dev", "test"):
        for lang, first, second in (("zh", "把音量调到20", "切到HDMI2"), ("en", "pause", "turn on subtitles")):
            for connective in connectives()[split][lang]:
                assert [first, second] in segmentations(first + connective + second), connective


def test_a_bad_compound_line_names_its_file_line_and_field(tmp_path):
    import pytest

    from tvcall.data.splits import read_compound_split
    from tvcall.errors import InputError

    good = '{"id": "c-0", "text": "a and b", "lang": "en", "calls": [{"name": "x.y.a"}, {"name": "x.y.b"}], "parts": ["a", "b"]}'
    (tmp_path / "compound-test.jsonl").write_text(good + "\n" + good.replace('"calls": [{"name": "x.y.a"}', '"calls": [{"nom": "x.y.a"}') + "\n")
    with pytest.raises(InputError) as error:
        read_compound_split(tmp_path, "compound-test")
    assert "compound-test.jsonl" in str(error.value) and ":2" in str(error.value) and "calls.0.name" in str(error.value)
