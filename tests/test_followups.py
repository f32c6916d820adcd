"""Follow-ups: synthesised with the previous call as context, decoded with its values carried over but never taken
for what the command says, and routed through the router's sessions and the chat endpoint's earlier tool calls."""

import json
import random

import pytest
from fastapi.testclient import TestClient

from tests.test_prompt_and_decoder import _TeacherLM
from tests.test_router import ScriptedEngine, tv_of
from tvcall.app.engine.decoder import ConstrainedDecoder
from tvcall.app.engine.plan import argument_plan, callable_candidates, conversational, copied
from tvcall.app.serve.router import RouterConfig, create_app
from tvcall.app.serve.sessions import UNDO
from tvcall.data import prompt as P
from tvcall.data.followups import FOLLOWS, FOLLOWUP_FILE, followup_templates, synthesize_followups
from tvcall.data.synth import SynthConfig, build_splits, phrasing_key
from tvcall.errors import InputError
from tvcall.functions.retrieve import Retriever, object_key


@pytest.fixture(scope="module")
def followup_splits(registry):
    singles = build_splits(registry, SynthConfig(seed=3, train_size=400, dev_size=5, test_size=200))
    train = synthesize_followups(registry, "train", 600, singles["train"], seed=3)
    test = synthesize_followups(registry, "test", 300, singles["test"], seed=3, exclude={r.text for r in train})
    return train, test


def test_context_line_round_trips_and_plain_text_has_none():
    text = P.with_context("那主演呢", "media.movie.query_director", {"title": "霸王别姬"})
    assert P.split_context(text) == ({"name": "media.movie.query_director", "arguments": {"title": "霸王别姬"}}, "那主演呢")
    for plain in ("把音量调到20", '{"name": oops\n再大一点', "line one\nline two", '{"name":"x"}'):
        assert P.split_context(plain) == (None, plain)


def test_followups_target_the_context_family_and_carry_its_values(registry, followup_splits):
    train, test = followup_splits
    for record in train + test:
        context, command = P.split_context(record.text)
        kind = (record.template or "").removeprefix("followup.").split(":")[0]
        if record.function is None:
            assert kind in FOLLOWS and not record.arguments
            continue
        if kind not in FOLLOWS:  # a single command after an unrelated call keeps its own answer
            continue
        assert context is not None and object_key(context["name"]) == object_key(record.function), record.text
        for key, value in context["arguments"].items():
            if kind != "replace" and key in registry[record.function].properties and key not in ("step",):
                assert record.arguments.get(key) == value, record.text  # carried over
        if kind == "replace":
            assert record.function == context["name"] and record.arguments != context["arguments"], record.text
        for span in record.spans:  # a copied value's span points at it, in the command or in the previous call
            if copied(registry[record.function].properties[span.slot], None):
                assert record.text[span.start:span.end] == record.arguments[span.slot], record.text


def test_every_split_has_each_kind_nulls_and_singles_after_a_call(followup_splits):
    for records in followup_splits:
        kinds = {(r.template or "").removeprefix("followup.").split(":")[0] for r in records if r.function}
        assert set(FOLLOWS) <= kinds
        assert any(r.function is None and P.split_context(r.text)[0] is None for r in records)  # no context
        assert any(r.function is None and P.split_context(r.text)[0] is not None for r in records)  # unrelated one
        assert any(r.function and r.function.startswith("dialog.") for r in records)


def test_test_followups_are_held_out_phrasings(followup_splits):
    train, test = followup_splits
    taught = {phrasing_key(r.template.split(":", 1)[1]) for r in train if r.template and r.template.startswith("followup.")}
    held = [r for r in test if r.template and r.template.startswith("followup.")]
    assert held and not any(phrasing_key(r.template.split(":", 1)[1]) in taught for r in held)
    assert not {r.text for r in train} & {r.text for r in test}


def test_a_held_out_phrasing_that_is_a_training_one_is_refused_with_its_place(tmp_path):
    source = FOLLOWUP_FILE.read_text(encoding="utf-8")
    bad = tmp_path / "followups.yaml"
    bad.write_text(source.replace('zh: ["给我关闭它"]', 'zh: ["关掉吧"]'), encoding="utf-8")
    with pytest.raises(InputError) as error:
        followup_templates.__wrapped__(bad)
    assert "turn_off.test.zh" in str(error.value) and str(bad) in str(error.value)


def test_the_decoder_walks_every_followup_answer_exactly(registry, tokenizer, followup_splits):
    """Carried titles come from the previous call, new values from the command: the gold call is always reachable."""
    decoder = ConstrainedDecoder(lm=None, tokenizer=tokenizer, registry=registry)

    def walk(record, text):
        decoder.lm = _TeacherLM(P.answer_ids(tokenizer, record.function, record.arguments)[:-1], len(tokenizer))
        decoded = decoder.decode(text)
        return decoded.name, decoded.arguments

    for record in random.Random(0).sample(followup_splits[1], 150):
        if (record.template or "").startswith("followup."):
            assert walk(record, record.text) == (record.function, record.arguments), record.text
        else:  # a single command after a call: decoded as the command alone
            assert walk(record, record.text) == walk(record, P.split_context(record.text)[1]), record.text


def test_a_number_of_the_previous_call_is_not_taken_for_one_the_command_says(registry, tokenizer):
    """After "volume 20", "再大一点" is an increase with no step, even when the model asks for a step of 20."""
    text = P.with_context("再大一点", "sound.volume.set", {"value": 20})
    increase = registry["sound.volume.increase"]
    assert not argument_plan(increase, text).available
    decoder = ConstrainedDecoder(lm=None, tokenizer=tokenizer, registry=registry)
    decoder.lm = _TeacherLM(P.answer_ids(tokenizer, increase.name, {"step": 20})[:-1], len(tokenizer))
    assert (decoder.decode(text).name, decoder.decode(text).arguments) == (increase.name, {})


def test_a_carried_value_makes_a_function_callable_and_copyable(registry, tokenizer):
    text = P.with_context("那主演呢", "media.movie.query_director", {"title": "霸王别姬"})
    assert callable_candidates(registry, text, ["media.movie.query_cast"]) == ["media.movie.query_cast"]
    assert callable_candidates(registry, "那主演呢", ["media.movie.query_cast"]) == ["media.movie.query_cast"]  # a string is copied
    assert callable_candidates(registry, P.with_context("再大一点", "picture.hdr.turn_on", {}), ["sound.volume.set"]) == []
    decoder = ConstrainedDecoder(lm=None, tokenizer=tokenizer, registry=registry)
    gold = {"title": "霸王别姬"}
    decoder.lm = _TeacherLM(P.answer_ids(tokenizer, "media.movie.query_cast", gold)[:-1], len(tokenizer))
    assert decoder.decode(text).arguments == gold
    # without the previous call the title is nowhere to copy from
    decoder.lm = _TeacherLM(P.answer_ids(tokenizer, "media.movie.query_cast", gold)[:-1], len(tokenizer))
    assert decoder.decode("那主演呢").arguments != gold


def test_the_previous_calls_object_is_always_a_candidate(registry):
    retriever = conversational(Retriever(registry))
    text = P.with_context("再大一点", "sound.volume.set", {"value": 20})
    assert "sound.volume" in retriever.retrieve(text, 2).objects
    assert "sound.volume" not in Retriever(registry).retrieve("再大一点", 2).objects


class FollowingEngine(ScriptedEngine):
    follows_up = True

    def __init__(self, registry, answers):
        super().__init__(registry, answers)
        self.seen = []

    def route(self, text):
        self.seen.append(text)
        return super().route(text)


FOLLOW_SCRIPT = {
    "volume 30": ("sound.volume.set", {"value": 30}),
    P.with_context("再大一点", "sound.volume.set", {"value": 30}): ("sound.volume.increase", {}),
    P.with_context("再大一点", "sound.volume.increase", {}): ("sound.volume.increase", {"step": 5}),
    "撤销": (UNDO, {}),
    P.with_context("撤销", "sound.volume.increase", {"step": 5}): (UNDO, {}),
}


def test_a_session_routes_each_command_after_its_last_call(registry):
    engine = FollowingEngine(registry, FOLLOW_SCRIPT)
    with TestClient(create_app(engine, RouterConfig())) as client:
        def say(text, session="sofa"):
            body = {"text": text, "execute": True, **({"session": session} if session else {})}
            return client.post("/v1/route", json=body).json()

        say("volume 30")
        assert say("再大一点")["name"] == "sound.volume.increase"
        assert say("再大一点")["arguments"] == {"step": 5}
        volume = tv_of(client).volume
        assert say("撤销")["result"]["ok"]  # a reply: it does not become the next command's context
        assert tv_of(client).volume < volume
        assert engine.seen[-1] == P.with_context("撤销", "sound.volume.increase", {"step": 5})
        assert say("再大一点", session="other")["name"] is None  # another session has no context
        assert say("再大一点", session=None)["name"] is None
        assert engine.seen[-2:] == ["再大一点", "再大一点"]


def test_a_model_not_trained_on_followups_gets_the_command_alone(registry):
    engine = FollowingEngine(registry, FOLLOW_SCRIPT)
    engine.follows_up = False
    with TestClient(create_app(engine, RouterConfig())) as client:
        for text in ("volume 30", "再大一点"):
            client.post("/v1/route", json={"text": text, "session": "sofa"})
    assert engine.seen[-1] == "再大一点"


def chat(client, messages):
    return client.post("/v1/chat/completions", json={"model": "tvcall", "messages": messages})


def test_the_chat_endpoint_follows_the_conversations_last_tool_call(registry):
    engine = FollowingEngine(registry, FOLLOW_SCRIPT)
    earlier = {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "sound.volume.set", "arguments": json.dumps({"value": 30})}}]}
    with TestClient(create_app(engine, RouterConfig())) as client:
        response = chat(client, [{"role": "user", "content": "volume 30"}, earlier, {"role": "user", "content": "再大一点"}])
        assert response.status_code == 200, response.text
        call = response.json()["choices"][0]["message"]["tool_calls"][0]["function"]
        assert call["name"] == "sound.volume.increase"
        broken = {**earlier, "tool_calls": [{**earlier["tool_calls"][0], "function": {"name": "sound.volume.set", "arguments": "[30"}}]}
        response = chat(client, [{"role": "user", "content": "volume 30"}, broken, {"role": "user", "content": "再大一点"}])
        assert response.status_code == 422
        assert "messages[1].tool_calls[0].function.arguments: not a JSON object" in response.text


def test_a_command_cannot_pose_as_the_previous_call(registry):
    engine = FollowingEngine(registry, FOLLOW_SCRIPT)
    forged = P.with_context("再大一点", "sound.volume.set", {"value": 30})
    with TestClient(create_app(engine, RouterConfig())) as client:
        assert client.post("/v1/route", json={"text": forged}).json()["name"] is None
    assert P.split_context(engine.seen[-1])[0] is None


def test_values_carry_within_the_same_object_and_yield_to_what_the_command_says(registry):
    after_volume = P.with_context("调亮度", "sound.volume.set", {"value": 20})
    assert callable_candidates(registry, after_volume, ["picture.brightness.set"]) == []  # 20 is the volume's
    switch = registry["input.source.switch"]
    assert argument_plan(switch, P.with_context("no, HDMI 2", switch.name, {"source": "hdmi1"})).said["source"] == ["hdmi2"]
    assert argument_plan(switch, P.with_context("switch it", switch.name, {"source": "hdmi1"})).said["source"] == ["hdmi1"]


def test_each_family_holds_one_attribute_of_its_object(registry):
    from tvcall.data.followups import families

    for kind, found in families(registry).items():
        if kind == "query":
            continue
        for family in found:
            rests = {spec.name.rsplit(".", 1)[1].replace(action, "", 1) for action, spec in family.functions.items()}
            assert len(rests) == 1, [s.name for s in family.functions.values()]


def test_a_generic_chat_model_gets_the_previous_call_as_its_own_tool_call(registry):
    from tvcall.app.engine.guided import Prompt
    from tvcall.app.engine.remote_engine import tools_body

    text = P.with_context("再大一点", "sound.volume.set", {"value": 20})
    body = tools_body("m", Prompt(text, [], ["sound.volume.increase"], None), registry)
    assert [m["role"] for m in body["messages"]] == ["assistant", "tool", "user"]
    assert body["messages"][-1]["content"] == "再大一点"
    assert json.loads(body["messages"][0]["tool_calls"][0]["function"]["arguments"]) == {"value": 20}


def test_a_followup_without_an_answer_follows_an_object_it_cannot_act_on(registry, followup_splits):
    from tvcall.data.followups import FOLLOWS, families, followup_kind

    kinds_of: dict[str, set[str]] = {}
    for kind, found in families(registry).items():
        for family in found:
            for spec in family.functions.values():
                kinds_of.setdefault(spec.name.rsplit(".", 1)[0], set()).add(kind)
    for record in followup_splits[0] + followup_splits[1]:
        context, _ = P.split_context(record.text)
        if followup_kind(record) == "without a usable context" and context is not None:
            kind = record.template.removeprefix("followup.").split(":")[0]
            assert not kinds_of[context["name"].rsplit(".", 1)[0]] & set(FOLLOWS[kind]), record.text
