import json
import re

import pytest

from tvcall.data.lexicon import lexicon_values
from tvcall.data.record import read_jsonl, write_atomic, write_jsonl
from tvcall.data.synth import SynthConfig, build_splits, check_paraphrases, kind_templates, paraphrases, templates_for
from tvcall.errors import InputError

CONFIG = SynthConfig(seed=3, train_size=1500, dev_size=100, test_size=300)


@pytest.fixture(scope="module")
def splits(registry):
    return build_splits(registry, CONFIG)


def test_synthesis_is_deterministic_by_seed(registry, splits):
    again = build_splits(registry, CONFIG)
    assert [r.model_dump() for r in again["test"]] == [r.model_dump() for r in splits["test"]]
    other = build_splits(registry, SynthConfig(seed=4, train_size=50, dev_size=10, test_size=10))
    assert [r.text for r in other["train"]] != [r.text for r in splits["train"][:50]]


def test_every_argument_from_the_utterance_has_its_span(registry, splits):
    for record in splits["train"] + splits["test"]:
        if record.function is None:
            continue
        spec = registry[record.function]
        assert set(record.arguments) == {s.slot for s in record.spans}
        for span in record.spans:
            said = record.text[span.start:span.end]
            value = record.arguments[span.slot]
            if spec.properties[span.slot].get("type") == "string" and "enum" not in spec.properties[span.slot]:
                assert said == value


def test_chinese_numerals_are_normalised_with_their_span(splits):
    numeral = [r for r in splits["train"] if r.lang == "zh" and any(isinstance(v, int) and not isinstance(v, bool)
               and r.span_text(k) != str(v) for k, v in r.arguments.items())]
    assert numeral, "expected Chinese numerals such as 二十 → 20"


def test_test_phrasings_and_string_values_never_occur_in_training(registry, splits):
    train_texts = {r.text for r in splits["train"]}
    assert not train_texts & {r.text for r in splits["test"]}
    for lexicon in ("movie_title", "app_name", "city"):
        for lang in ("zh", "en"):
            assert not set(lexicon_values(lexicon, lang, "train")) & set(lexicon_values(lexicon, lang, "test"))
    for kind, actions in kind_templates().items():
        for action, by_split in actions.items():
            for lang in ("zh", "en"):
                assert not set(by_split["train"][lang]) & set(by_split["test"][lang]), (kind, action, lang)
    spec = registry["picture.screen.capture"]
    assert not set(templates_for(spec, "en", "train")) & set(templates_for(spec, "en", "test"))


def test_about_five_percent_out_of_scope_and_many_functions(splits):
    test = splits["test"]
    share = sum(r.function is None for r in test) / len(test)
    assert 0.01 <= share <= 0.12
    assert len({r.function for r in test}) > 200
    assert {r.lang for r in test} == {"zh", "en"}


def test_malformed_dataset_line_names_file_line_and_field(tmp_path, splits):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(splits["train"][0].model_dump(), ensure_ascii=False)
    bad = json.loads(good) | {"spans": [{"slot": "x", "start": 0, "end": 999}]}
    path.write_text(good + "\n" + "{not json\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: json"):
        list(read_jsonl(path))
    path.write_text(good + "\n" + json.dumps({k: v for k, v in bad.items() if k != "lang"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: lang: Field required"):
        list(read_jsonl(path))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, splits):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, splits["train"][:3])
    before = path.read_text()

    def broken():
        yield splits["train"][0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_text() == before
    write_atomic(path, "x\n")
    assert path.read_text() == "x\n" and len(list(tmp_path.iterdir())) == 1


def _said_alike(template: str) -> str:
    """A template without case, punctuation, spaces and a leading politeness word: two phrasings that differ
    only there are the same phrasing."""
    text = re.sub(r"[^\w{}]", "", template.lower())
    return re.sub(r"^(please|请|帮我|麻烦)", "", text)


def test_training_paraphrases_never_repeat_a_held_out_phrasing(registry):
    extra = paraphrases()
    assert len(extra) > 200
    for name, by_lang in extra.items():
        spec = registry[name]
        for lang, templates in by_lang.items():
            held_out = {_said_alike(t) for t in spec.own_templates(lang, "test")}
            assert not {_said_alike(t) for t in templates} & held_out, (name, lang)
            assert set(templates) <= set(templates_for(spec, lang, "train"))
            assert not set(templates) & set(templates_for(spec, lang, "test"))
    for kind, actions in kind_templates().items():
        for action, by_split in actions.items():
            for lang in ("zh", "en"):
                held_out = {_said_alike(t) for t in by_split["test"][lang]}
                assert not {_said_alike(t) for t in by_split["train"][lang]} & held_out, (kind, action, lang)


def test_a_paraphrase_with_an_unknown_placeholder_names_file_line_and_function(registry, tmp_path):
    path = tmp_path / "paraphrases.yaml"
    path.write_text("info.date.get_today:\n  zh: [今天几号啊]\ninfo.calendar.days_until_holiday:\n"
                    "  en: ['how long until {city}']\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"paraphrases.yaml:3: info.calendar.days_until_holiday.en: .*holiday"):
        check_paraphrases(registry, path)
    path.write_text("sound.equalizer_100hz.get:\n  en: [brighter]\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"paraphrases.yaml:1: sound.equalizer_100hz.get: not a function with its own"):
        check_paraphrases(registry, path)


def test_training_records_name_their_phrasing_and_take_a_functions_phrasings_in_turn(registry):
    records = build_splits(registry, SynthConfig(seed=4, train_size=3000, dev_size=5, test_size=5))["train"]
    by_function: dict[tuple[str, str], list[str]] = {}
    for record in records:
        if record.function:
            assert record.template in templates_for(registry[record.function], record.lang, "train")
            by_function.setdefault((record.function, record.lang), []).append(record.template)
    for (name, lang), used in by_function.items():
        available = templates_for(registry[name], lang, "train")
        if len(used) <= len(available):  # a function's first records (duplicate texts aside) use distinct phrasings
            assert len(set(used)) >= len(used) - 1, (name, lang, used)


def test_training_answers_give_arguments_in_the_order_the_decoder_offers_the_keys(registry, tokenizer):
    """Imported records keep the utterance's slot order; trained in that order, the decoder (which offers keys in
    schema order) could never produce a key the model learnt to put first."""
    from tvcall.data.prompt import training_example
    from tvcall.data.record import Record
    from tvcall.training.train import build_dataset

    name = "search.music.by_song"
    assert list(registry[name].properties) == ["song", "singer"]
    record = Record(id="r", text="陈奕迅的十年", lang="zh", function=name, arguments={"singer": "陈奕迅", "song": "十年"},
                    spans=[{"slot": "singer", "start": 0, "end": 3}, {"slot": "song", "start": 4, "end": 6}])
    row = build_dataset(tokenizer, [record], top_objects=0, registry=registry)[0]
    assert row["input_ids"] == training_example(tokenizer, record.text, name, {"song": "十年", "singer": "陈奕迅"})["input_ids"]
