import math

from tests.test_prompt_and_decoder import _TeacherLM
from tvcall.app.engine.decoder import ConstrainedDecoder
from tvcall.app.engine.plan import null_bias_for
from tvcall.data import prompt as P
from tvcall.data.synth import SynthConfig, build_splits
from tvcall.eval.calibrate import accuracy_at, choose_null_bias


def test_bias_abstains_exactly_where_the_margin_is_overcome():
    margins, names, golds = [-1.0, -3.0, -1.5], ["a.b.c", "a.b.d", "x.y.z"], [None, "a.b.d", "x.y.z"]
    assert accuracy_at(0.0, margins, names, golds) == 2 / 3
    assert accuracy_at(2.0, margins, names, golds) == 2 / 3  # abstains on the first, but also on the last
    assert accuracy_at(1.2, margins, names, golds) == 1.0


def test_chosen_bias_recovers_out_of_scope_without_losing_in_scope():
    margins = [-1.0, -4.0, -3.0, -0.2, math.nan]
    names = ["a.b.c", "a.b.d", "x.y.z", "a.b.d", None]
    golds = [None, "a.b.d", "x.y.z", "a.b.d", None]
    bias = choose_null_bias(margins, names, golds)
    assert accuracy_at(bias, margins, names, golds) == 0.8  # the -1.0 OOS costs the -0.2 in-scope: a tie, so no bias
    assert bias == 0.0
    names[3] = "q.r.s"  # that in-scope one is wrong anyway: abstaining on it costs nothing
    bias = choose_null_bias(margins, names, golds, min_gain=1)
    assert 1.0 < bias < 3.0 and accuracy_at(bias, margins, names, golds) == 0.8


def test_a_bias_that_wins_a_single_dev_utterance_is_not_taken():
    margins, names, golds = [-1.0, -4.0, -0.2], ["a.b.c", "a.b.d", "q.r.s"], [None, "a.b.d", "a.b.d"]
    assert accuracy_at(1.05, margins, names, golds) > accuracy_at(0.0, margins, names, golds)
    assert choose_null_bias(margins, names, golds) == 0.0
    margins, names, golds = margins + [-1.1], names + ["a.b.c"], golds + [None]  # now it wins two
    assert choose_null_bias(margins, names, golds) > 1.0


def test_null_bias_turns_a_call_into_no_function(registry, tokenizer):
    record = next(r for r in build_splits(registry, SynthConfig(seed=3, train_size=20, dev_size=2, test_size=2))["train"] if r.function)
    decoder = ConstrainedDecoder(lm=None, tokenizer=tokenizer, registry=registry)
    decoder.lm = _TeacherLM(P.answer_ids(tokenizer, record.function, record.arguments)[:-1], len(tokenizer))
    unbiased = decoder.decode(record.text)
    assert unbiased.name == record.function and unbiased.null_margin < 0
    decoder.null_bias = -unbiased.null_margin + 0.1
    decoder.lm = _TeacherLM(P.answer_ids(tokenizer, record.function, record.arguments)[:-1], len(tokenizer))
    assert decoder.decode(record.text).name is None


def test_a_follow_up_bias_applies_only_to_a_command_after_a_previous_call(registry, tokenizer):
    record = next(r for r in build_splits(registry, SynthConfig(seed=3, train_size=20, dev_size=2, test_size=2))["train"] if r.function)
    followup = P.with_context(record.text, record.function, record.arguments)
    decoder = ConstrainedDecoder(lm=None, tokenizer=tokenizer, registry=registry)

    def decode(text: str) -> str | None:
        decoder.lm = _TeacherLM(P.answer_ids(tokenizer, record.function, record.arguments)[:-1], len(tokenizer))
        return decoder.decode(text).name

    decoder.followup_null_bias = 1e6  # a follow-up abstains, a single command does not
    assert decode(record.text) == record.function and decode(followup) is None
    decoder.null_bias, decoder.followup_null_bias = 1e6, 0.0  # and the other way round
    assert decode(record.text) is None and decode(followup) == record.function
    decoder.followup_null_bias = None  # none chosen: the single commands' bias for both
    assert decode(followup) is None
    assert null_bias_for(followup, 0.5, None) == 0.5 and null_bias_for(followup, 0.5, 2.0) == 2.0
    assert null_bias_for(record.text, 0.5, 2.0) == 0.5
