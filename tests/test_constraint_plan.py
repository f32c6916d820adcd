"""One constraint plan for every backend: the guided path (servers that take one constraint per request) decides as
the local trie decoder does when both see the same model scores.

`ContextScores` stands in for the model on both sides: its next-token scores are a fixed function of the whole
context, so the local decoder (through the decoding interface `ConstrainedDecoder` drives) and `ScoredServer` (a
guided backend that generates greedily under each stage's constraint and reports top log-probabilities, as an
OpenAI-compatible server does) see the same numbers for the same tokens.
"""

import json
import math
import random

import jsonschema
import pytest
import torch

from tvcall.app.engine.decoder import ConstrainedDecoder, NameTokens, TokenTrie
from tvcall.app.engine.guided import TOP_LOGPROBS, Generation, GuidedEngine, TokenChoice, call_schema
from tvcall.app.engine.plan import NameSettings, argument_plan, arguments_schema, callable_candidates
from tvcall.data import prompt as P

TEXTS = ["把音量调到20", "霸王别姬的导演是谁?", "switch to HDMI 2", "turn the brightness down a little", "打开字幕",
         "what's on channel 5", "tell me a joke about cats", "把孩子锁关掉", "pause", "调高音量", "play some jazz",
         "静音", "关机", "换到下一个输入源", "set a sleep timer for 30 minutes"]


class ContextScores:
    """Next-token scores as a fixed function of the context, like a model fine-tuned on the answers: tokens that
    go on along some registered name (or "no function") score 12 plus noise, every other token noise alone."""

    def __init__(self, tokenizer, registry, seed: int) -> None:
        self.vocab, self.seed = len(tokenizer), seed
        names = NameTokens(tokenizer, registry.names)
        self.trie = names.trie(registry.names)
        self.open = P.segment_ids(tokenizer, P.NAME_OPEN)

    def __call__(self, context: list[int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(hash((self.seed, *context)) % 2**62)
        scores = torch.randn(self.vocab, generator=generator) * 3
        starts = [i + len(self.open) for i in range(len(context) - len(self.open) + 1) if context[i:i + len(self.open)] == self.open]
        if starts:
            node = self.trie.root
            for token in context[starts[-1]:]:
                node = node.children.get(token)
                if node is None:
                    return scores
            scores[list(node.children)] += 12.0
        return scores


class ScoredLM:
    """The local decoder's decoding interface over `ContextScores`."""

    capacity = 4

    def __init__(self, scores: ContextScores) -> None:
        self.score = scores

    def open(self, prompt):
        return {"context": list(prompt)}

    def close(self, stream):
        pass

    def run(self, streams, tokens, keep):
        heads = []
        for stream, new, k in zip(streams, tokens, keep, strict=True):
            stream["context"] += list(new)
            ends = range(len(stream["context"]) - k + 1, len(stream["context"]) + 1)
            heads.append(torch.stack([self.score(stream["context"][:end]) for end in ends]))
        return heads

    def rewind(self, stream, count):
        del stream["context"][len(stream["context"]) - count:]

    def scores(self, head, allowed):
        return head[allowed]


class ScoredServer(GuidedEngine):
    """A guided backend on `ContextScores`: each name stage is generated greedily among the token sequences its
    constraint admits (the choices as the model writes them), reporting each token's log-probability and the top
    alternatives, as an OpenAI-compatible server does with `logprobs` and `top_logprobs`."""

    def __init__(self, scores: ContextScores, tokenizer, registry) -> None:
        super().__init__(registry)
        self.score, self.tokenizer = scores, tokenizer
        self.use_tokenizer(tokenizer)
        self.generations = 0

    def _answer_ids(self, name):
        segments = P.answer_segments(None, {}) if name is None else [P.NAME_OPEN, P.name_segment(name)]
        return [t for segment in segments for t in P.segment_ids(self.tokenizer, segment)]

    def generate(self, prompts, stages):
        out = []
        for prompt, stage in zip(prompts, stages, strict=True):
            assert stage.kind == "name", "these tests decide names only"
            self.generations += 1
            trie = TokenTrie((self._answer_ids(name), text) for text, name in stage.choices.items())
            context, node, tokens = P.prompt_ids(self.tokenizer, prompt.text, prompt.options), trie.root, []
            while node.children:
                logprobs = torch.log_softmax(self.score(context), dim=0)
                token = max(node.children, key=lambda t: float(logprobs[t]))
                top = torch.topk(logprobs, stage.top_logprobs or 1)
                tokens.append(TokenChoice(self.tokenizer.decode([token]), float(logprobs[token]),
                                          {self.tokenizer.decode([int(t)]): float(v) for v, t in zip(top.values, top.indices, strict=True)}))
                context, node = [*context, token], node.children[token]
            out.append(Generation(node.payload, sum(t.logprob for t in tokens), tokens=tokens))
        return out


def random_prior(candidates, seed: int) -> dict:
    rng = random.Random(seed)
    weights = {name: rng.random() ** 3 for name in [*candidates, None]}
    total = sum(weights.values())
    return {name: math.log(w / total) for name, w in weights.items()}


@pytest.mark.parametrize(("prior_weight", "null_bias"), [(0.0, 0.0), (1.5, 0.0), (1.0, 2.5), (3.0, -2.0)])
def test_the_guided_name_is_the_local_decoders_on_the_same_scores(registry, tokenizer, prior_weight, null_bias):
    """The name prior with its weight and the abstention bias, replayed on reported log-probabilities."""
    scores = ContextScores(tokenizer, registry, seed=int(prior_weight * 10 + null_bias))
    local = ConstrainedDecoder(ScoredLM(scores), tokenizer, registry)
    local.prior_weight, local.null_bias = prior_weight, null_bias
    server = ScoredServer(scores, tokenizer, registry)
    server.name_settings = NameSettings(null_bias, prior_weight)
    prompts = [server.prompt(text) for text in TEXTS]
    for index, prompt in enumerate(prompts):
        prompt.prior = random_prior(prompt.candidates, index)
    decoded = local.decode_batch(TEXTS, [p.candidates for p in prompts], [p.options for p in prompts], [p.prior for p in prompts],
                                 name_only=True)
    replayed = server.decide_names(prompts)
    assert [d.name for d in replayed] == [d.name for d in decoded]
    for mine, theirs in zip(replayed, decoded, strict=True):
        assert math.exp(mine.logprob) == pytest.approx(theirs.name_confidence, abs=1e-4)
        assert mine.null_margin == pytest.approx(theirs.null_margin, abs=1e-4) or math.isnan(theirs.null_margin)
    assert server.generations > len(TEXTS)  # some walks left the server's own name, or needed unreported scores


def test_the_guided_candidates_are_the_callable_ones(registry, tokenizer):
    """A function whose required number the utterance does not say is offered to neither backend."""
    server = ScoredServer(ContextScores(tokenizer, registry, 0), tokenizer, registry)
    said, unsaid = server.prompt("switch to HDMI 2"), server.prompt("switch the input source")
    assert "input.source.switch" in said.candidates and "input.source.switch" not in unsaid.candidates
    assert "input.source.switch" in server.retriever.retrieve("switch the input source", 4).functions
    assert unsaid.candidates == callable_candidates(registry, "switch the input source", unsaid.candidates)


def test_an_unreported_alternative_is_scored_by_a_generation_that_takes_it(registry, tokenizer):
    """With one alternative reported per token, the replay asks for the others and still decides as the local
    decoder does."""
    scores = ContextScores(tokenizer, registry, seed=7)
    local = ConstrainedDecoder(ScoredLM(scores), tokenizer, registry)
    server = ScoredServer(scores, tokenizer, registry)
    narrow = server._names_after

    def one_reported(prompt, walked):
        stage = narrow(prompt, walked)
        return type(stage)(stage.kind, stage.schema, stage.choices, stage.max_tokens, top_logprobs=1)

    server._names_after = one_reported
    prompts = [server.prompt(text) for text in TEXTS[:6]]
    decoded = local.decode_batch(TEXTS[:6], [p.candidates for p in prompts], [p.options for p in prompts], name_only=True)
    assert [d.name for d in server.decide_names(prompts)] == [d.name for d in decoded]
    assert TOP_LOGPROBS == 20  # what OpenAI-compatible servers report at most


def test_the_call_schema_narrows_arguments_as_the_local_decoder_does(registry):
    """Typed values to those said, keys said made required, keys that cannot be filled dropped, strings to spans
    on word boundaries."""
    volume = call_schema(registry, "sound.volume.set", "把音量调到20")
    assert volume["properties"]["arguments"]["properties"]["value"]["enum"] == [20]
    jsonschema.validate({"name": "sound.volume.set", "arguments": {"value": 20}}, volume)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "sound.volume.set", "arguments": {"value": 21}}, volume)

    title = call_schema(registry, "media.movie.query_director", "霸王别姬的导演是谁?")
    jsonschema.validate({"name": "media.movie.query_director", "arguments": {"title": "霸王别姬"}}, title)
    for cut in ("霸王别", "王别姬", "姬的导"):  # through a word
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "media.movie.query_director", "arguments": {"title": cut}}, title)

    for name in registry.names:
        spec = registry[name]
        for text in TEXTS:
            plan, schema = argument_plan(spec, text), arguments_schema(spec, text)
            assert set(schema["properties"]) == {k for k in spec.properties if k in plan.available or k in spec.required}
            assert set(schema["required"]) == (set(spec.required) | plan.filled) & set(schema["properties"])


def test_a_guided_engine_takes_the_runs_settings_as_the_local_engine_does(registry, tokenizer, tmp_path):
    """Abstention bias, prior weight, object sharpness, link weight and act threshold come from the run's
    calibration for both, so both retrieve the same candidates with the same prior."""
    from tvcall.app.engine.hf_engine import TransformersEngine
    from tvcall.data.prompt import PROMPT_FORMAT
    from tvcall.run import RunDir, TrainSummary
    from tvcall.training.config import load_config

    run = RunDir(tmp_path / "run")
    run.write(load_config("cpu-default", [f"output_dir={run.path}"]), TrainSummary(prompt_format=PROMPT_FORMAT))
    run.calibration_file.write_text(json.dumps({"null_bias": 1.25, "prior_weight": 2.0, "object_sharpness": 3.0,
                                                "link_weight": 4.0, "act_threshold": 0.9}))
    local = TransformersEngine.from_run(run.path, registry)
    server = ScoredServer(ContextScores(tokenizer, registry, 0), tokenizer, registry)
    server.use_run(run.path)
    assert server.name_settings == local.name_settings == NameSettings(1.25, 2.0, 3.0, 4.0)
    assert server.act_threshold == local.act_threshold == 0.9
    for text in TEXTS:
        ours, theirs = server.retriever.retrieve(text, 4), local.retriever.retrieve(text, 4)
        assert (ours.objects, ours.prior) == (theirs.objects, theirs.prior)
        assert server.prompt(text).candidates == callable_candidates(registry, text, theirs.functions)
