"""The classifier's prior at the decoder's name stage, and its weight chosen on dev."""

import math
from types import SimpleNamespace

import pytest

from tests.test_prompt_and_decoder import _TeacherLM
from tvcall.app.engine.decoder import ConstrainedDecoder, _PriorMass
from tvcall.app.engine.plan import NameSettings
from tvcall.data import prompt as P
from tvcall.data.synth import SynthConfig, build_splits
from tvcall.eval.calibrate import MIN_GAIN, calibrate
from tvcall.functions.retrieve import Retriever, fit_classifier

NAMES = ["sound.volume.increase", "sound.volume.decrease", "sound.volume.set", "picture.brightness.increase"]


def test_prior_shares_along_a_name_add_up_to_its_log_prior(registry, tokenizer):
    decoder = ConstrainedDecoder(lm=None, tokenizer=tokenizer, registry=registry)
    trie = decoder.candidate_trie(NAMES)
    prior = dict(zip([*NAMES, None], [math.log(p) for p in (0.4, 0.3, 0.1, 0.15, 0.05)], strict=True))
    masses = _PriorMass(prior)
    for name in [*NAMES, None]:
        node, total = trie.root, 0.0
        for token in tokenizer(P.name_segment(name), add_special_tokens=False)["input_ids"]:
            allowed = list(node.children)
            total += float(masses.shares(node, allowed)[allowed.index(token)])
            node = node.children[token]
        assert node.terminal and node.payload == name
        assert total == pytest.approx(prior[name], abs=1e-5)


def test_a_confident_prior_overrides_the_models_choice_only_when_weighted(registry, tokenizer):
    decoder = ConstrainedDecoder(lm=None, tokenizer=tokenizer, registry=registry)
    model_says, prior_says = "sound.volume.increase", "picture.brightness.increase"
    prior = {n: math.log(0.999 if n == prior_says else 0.001 / 4) for n in [*NAMES, None]}

    def decode(weight: float) -> str | None:
        decoder.lm = _TeacherLM(P.answer_ids(tokenizer, model_says, {})[:-1], len(tokenizer))
        decoder.prior_weight = weight
        return decoder.decode("turn it up", NAMES, prior=prior).name

    assert decode(0.0) == model_says
    assert decode(2.0) == prior_says


def test_retriever_prior_covers_the_candidates_and_no_function(registry):
    records = build_splits(registry, SynthConfig(seed=6, train_size=2000, dev_size=5, test_size=5))["train"]
    retriever = Retriever(registry, fit_classifier([(r.text, r.function) for r in records]))
    seen = next(r for r in records if r.function)
    found = retriever.retrieve(seen.text, 4)
    assert set(found.prior) == {*found.functions, None}
    assert sum(math.exp(v) for v in found.prior.values()) == pytest.approx(1.0)
    assert seen.function in found.functions and found.prior[seen.function] == max(found.prior.values())
    assert Retriever(registry).retrieve(seen.text, 4).prior == {}  # no classifier, no prior


def test_retriever_prior_ranks_the_objects_as_the_fused_retrieval_does(registry):
    """The objects' shares of the prior follow the retriever's object ranking (BM25 with the classifier), the better
    ranking; within an object the classifier orders its functions."""
    records = build_splits(registry, SynthConfig(seed=6, train_size=2000, dev_size=5, test_size=5))["train"]
    retriever = Retriever(registry, fit_classifier([(r.text, r.function) for r in records]))
    for record in [r for r in records if r.function][:20]:
        found = retriever.retrieve(record.text, 4)
        shares = [sum(math.exp(found.prior[n]) for n in retriever.functions[key]) for key in found.objects]
        softmax = [math.exp(v) / sum(math.exp(w) for w in found.scores) for v in found.scores]
        assert [s / sum(shares) for s in shares] == pytest.approx(softmax), (record.text, found.objects)
        assert found.scores == sorted(found.scores, reverse=True)
        learned, column = retriever.classifier.scores(record.text), {n: i for i, n in enumerate(retriever.classifier.labels)}
        names = [n for n in retriever.functions[found.objects[0]] if n in column]
        for a, b in zip(names, names[1:], strict=False):
            assert found.prior[a] - found.prior[b] == pytest.approx(learned[column[a]] - learned[column[b]], abs=1e-6)


class _FakeEngine:
    """route_batch answers from a table keyed by the prior weight, or by (weight, object sharpness) where the
    sharpness matters, or by (weight, sharpness, link weight) where linking does (the calibration logic alone)."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.name_settings = NameSettings()
        self.retriever = SimpleNamespace(classifier=object(), linker=lambda text: frozenset())

    def route_batch(self, texts, name_only=False):
        s = self.name_settings
        names = self.answers.get((s.prior_weight, s.object_sharpness, s.link_weight),
                                 self.answers.get((s.prior_weight, s.object_sharpness), self.answers[s.prior_weight]))
        return [SimpleNamespace(name=n, null_margin=-5.0) for n in names]


def _records(golds):
    return [SimpleNamespace(text=f"t{i}", function=g) for i, g in enumerate(golds)]


def test_a_prior_weight_is_taken_only_when_it_wins_enough_dev_utterances():
    golds = ["a.b.c", "a.b.d", "a.b.e", "a.b.f"]
    one_better = {0.0: ["a.b.c", "x", "x", "x"], 0.5: ["a.b.c", "a.b.d", "x", "x"], 1.0: ["x", "x", "x", "x"]}
    found = calibrate(_FakeEngine(one_better), _records(golds), weights=(0.0, 0.5, 1.0))
    assert found.prior_weight == 0.0 and MIN_GAIN > 1
    two_better = {0.0: ["a.b.c", "x", "x", "x"], 0.5: ["a.b.c", "a.b.d", "x", "x"], 1.0: ["a.b.c", "a.b.d", "a.b.e", "x"]}
    engine = _FakeEngine(two_better)
    found = calibrate(engine, _records(golds), weights=(0.0, 0.5, 1.0))
    assert found.prior_weight == 1.0 and engine.name_settings.prior_weight == 1.0
    assert found.dev_function_accuracy == 0.75 and found.dev_function_accuracy_unbiased == 0.25
    assert found.dev_function_accuracy_by_weight == {"0.0": 0.25, "0.5": 0.5, "1.0": 0.75}



def test_the_object_ranking_is_sharpened_only_when_that_wins_enough_dev_utterances():
    golds = ["a.b.c", "a.b.d", "a.b.e", "a.b.f"]
    answers = {0.0: ["x"] * 4, 1.0: ["a.b.c", "a.b.d", "x", "x"], (1.0, 2.0): ["a.b.c", "a.b.d", "a.b.e", "x"],
               (1.0, 3.0): golds}
    engine = _FakeEngine(answers)
    found = calibrate(engine, _records(golds), weights=(0.0, 1.0), sharpness=(1.0, 2.0))
    assert (found.prior_weight, found.object_sharpness) == (1.0, 1.0)  # one utterance more is not enough
    assert found.dev_function_accuracy_by_sharpness == {"1.0": 0.5, "2.0": 0.75}
    found = calibrate(engine, _records(golds), weights=(0.0, 1.0), sharpness=(1.0, 2.0, 3.0))
    assert (found.prior_weight, found.object_sharpness, found.dev_function_accuracy) == (1.0, 3.0, 1.0)
    assert engine.name_settings.object_sharpness == 3.0
    found = calibrate(_FakeEngine({0.0: ["a.b.c"] * 4, 1.0: ["x"] * 4}), _records(golds), weights=(0.0, 1.0))
    assert found.prior_weight == 0.0 and found.dev_function_accuracy_by_sharpness == {}  # no prior: nothing to sharpen


def test_a_sharper_object_ranking_moves_prior_mass_to_the_first_object(registry):
    records = build_splits(registry, SynthConfig(seed=6, train_size=2000, dev_size=5, test_size=5))["train"]
    retriever = Retriever(registry, fit_classifier([(r.text, r.function) for r in records]))
    text = "把音量调大一点"
    mass = {}
    for sharpness in (1.0, 3.0):
        retriever.object_sharpness = sharpness
        found = retriever.retrieve(text, 4)
        mass[sharpness] = sum(math.exp(found.prior[n]) for n in retriever.functions[found.objects[0]])
        assert sum(math.exp(v) for v in found.prior.values()) == pytest.approx(1.0)
    assert mass[3.0] > mass[1.0]


def test_entity_linking_stays_at_its_strongest_unless_a_weaker_weight_wins_enough_dev_utterances():
    golds = ["a.b.c", "a.b.d", "a.b.e", "a.b.f"]
    answers = {0.0: ["x"] * 4, 1.0: ["a.b.c", "a.b.d", "x", "x"], (1.0, 1.0, 2.0): ["a.b.c", "a.b.d", "a.b.e", "x"]}
    engine = _FakeEngine(answers)
    found = calibrate(engine, _records(golds), weights=(0.0, 1.0), sharpness=(1.0,), link_weights=(0.0, 2.0))
    assert (found.link_weight, found.dev_function_accuracy) == (2.0, 0.75) and engine.name_settings.link_weight == 2.0
    assert found.dev_function_accuracy_by_link_weight == {"0.0": 0.5, "2.0": 0.75}
    answers[(1.0, 1.0, 2.0)] = ["a.b.c", "x", "x", "x"]  # one dev utterance fewer than no linking: it stays
    found = calibrate(engine, _records(golds), weights=(0.0, 1.0), sharpness=(1.0,), link_weights=(0.0, 2.0))
    assert found.link_weight == 2.0
    answers[(1.0, 1.0, 2.0)] = ["x"] * 4  # two fewer than no linking: a weaker weight that wins them back is taken
    answers[(1.0, 1.0, 1.0)] = ["a.b.c", "a.b.d", "a.b.e", "x"]
    found = calibrate(engine, _records(golds), weights=(0.0, 1.0), sharpness=(1.0,), link_weights=(0.0, 1.0, 2.0))
    assert (found.link_weight, found.dev_function_accuracy) == (1.0, 0.75)


def test_every_trial_decodes_without_the_bias_chosen_before_it():
    golds = [None, None, "a.b.c", "a.b.d"]

    class Recording(_FakeEngine):
        seen: list = []

        def route_batch(self, texts, name_only=False):
            self.seen.append(self.name_settings.null_bias)
            return [SimpleNamespace(name="a.b.c", null_margin=m) for m in (-1.0, -2.0, -9.0, -9.0)]

    engine = Recording({})
    found = calibrate(engine, _records(golds), weights=(0.0, 1.0), sharpness=(1.0, 2.0), link_weights=(0.0, 1.0))
    assert found.null_bias > 2.0 and engine.name_settings.null_bias == found.null_bias  # abstains on both nones
    assert engine.seen and set(engine.seen) == {0.0}
