"""outlines' schema guides in the argument stage: every training answer passes, what the schema refuses fails."""

from __future__ import annotations

import re

import pytest

from tvcall.app.engine.decoder import ConstrainedDecoder
from tvcall.app.engine.schema_guide import GuideError, SchemaGuides, admitted, advance, arguments_regex
from tvcall.data import prompt as P
from tvcall.data.synth import SynthConfig, build_splits
from tvcall.functions.spec import strip_private_keywords


def _tail_ids(tokenizer, name, arguments):
    """The answer's tokens after the name, segment by segment, as the decoder feeds them."""
    return [t for seg in P.answer_segments(name, arguments)[2:] for t in P.segment_ids(tokenizer, seg)]


def test_every_synthesised_answer_passes_its_functions_outlines_guide(registry, tokenizer):
    guides = SchemaGuides(tokenizer, registry)
    records = [r for r in build_splits(registry, SynthConfig(seed=7, train_size=300, dev_size=5, test_size=5))["train"] if r.function]
    assert any(r.arguments for r in records)
    for record in records:
        tail = P.answer_text(record.function, record.arguments)[len(P.NAME_OPEN + P.name_segment(record.function)):]
        assert re.fullmatch(arguments_regex(strip_private_keywords(registry[record.function].parameters)), tail), tail
        guide = guides.guide(record.function)
        advance(guide, _tail_ids(tokenizer, record.function, record.arguments), record.function)
        assert guide.is_finished(), record.text


def test_the_guide_refuses_values_and_keys_outside_the_schema(registry, tokenizer):
    guides = SchemaGuides(tokenizer, registry)
    with pytest.raises(GuideError):
        advance(guides.guide("input.source.switch"), _tail_ids(tokenizer, "input.source.switch", {"source": "hdmi9"}), "x")
    with pytest.raises(GuideError):
        advance(guides.guide("input.source.switch"), _tail_ids(tokenizer, "input.source.switch", {"volume": 3}), "x")
    guide = guides.guide("input.source.switch")
    advance(guide, P.segment_ids(tokenizer, P.ARGS_OPEN), "x")
    assert admitted(guide, P.segment_ids(tokenizer, P.ARGS_CLOSE)) == []  # the required source must come first


def test_functions_with_one_schema_share_one_compiled_index(registry, tokenizer):
    guides = SchemaGuides(tokenizer, registry)
    no_arguments = [n for n in registry.names if not registry[n].properties][:50]
    assert len({id(guides.index(n)) for n in no_arguments}) == 1


def test_decoder_consults_the_guide_at_every_argument_token(registry, tokenizer):
    """With the guide of a schema without parameters swapped in, the key the tries allow is refused."""
    from .test_prompt_and_decoder import _TeacherLM

    name, arguments = "input.source.switch", {"source": "hdmi2"}
    decoder = ConstrainedDecoder(lm=None, tokenizer=tokenizer, registry=registry)
    decoder.lm = _TeacherLM(P.answer_ids(tokenizer, name, arguments)[:-1], len(tokenizer))
    decoded = decoder.decode("switch to HDMI 2")
    assert (decoded.name, decoded.arguments) == (name, arguments)
    empty = next(n for n in registry.names if not registry[n].properties)
    original = decoder.guides.guide
    decoder.guides.guide = lambda _: original(empty)
    decoder.lm = _TeacherLM(P.answer_ids(tokenizer, name, arguments)[:-1], len(tokenizer))
    with pytest.raises(GuideError):
        decoder.decode("switch to HDMI 2")


def test_the_guide_keeps_the_schemas_key_order_after_an_integer(registry, tokenizer):
    """smarthome.light.set_color_temperature: value, then the optional room (sorting the schema's keys put room first)."""
    name = "smarthome.light.set_color_temperature"
    assert list(registry[name].properties) == ["value", "room"]
    guide = SchemaGuides(tokenizer, registry).guide(name)
    advance(guide, _tail_ids(tokenizer, name, {"value": 2880, "room": "living_room"}), name)
    assert guide.is_finished()


def test_compiled_indexes_are_loaded_from_disk_by_the_next_process(registry, tokenizer, tmp_path, monkeypatch):
    import tvcall.app.engine.schema_guide as schema_guide

    name = "input.source.switch"
    first = SchemaGuides(tokenizer, registry, tmp_path)
    first.index(name)
    (stored,) = tmp_path.glob("*.pickle")

    def no_compiling(*args):  # noqa: ANN002, ANN202
        raise AssertionError("compiled again")

    monkeypatch.setattr(schema_guide, "Index", no_compiling)
    again = SchemaGuides(tokenizer, registry, tmp_path)  # a new process's guides: nothing compiled in memory
    guide = again.guide(name)
    advance(guide, _tail_ids(tokenizer, name, {"source": "hdmi2"}), name)
    assert guide.is_finished()
    with pytest.raises(GuideError):
        advance(again.guide(name), _tail_ids(tokenizer, name, {"source": "hdmi9"}), name)

    monkeypatch.undo()
    stored.write_bytes(b"not a pickle")  # damaged: compiled again and replaced
    assert SchemaGuides(tokenizer, registry, tmp_path).guide(name) is not None
    assert stored.read_bytes() != b"not a pickle"
