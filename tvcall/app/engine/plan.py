"""The constraint plan: what every backend must obey for one utterance, decided in one place.

- Names: the retrieved functions the utterance can call (`callable_candidates`: a required number, enum or boolean
  must be said), the retriever's prior over them, and how the prior and the abstention bias weigh against the
  model's own scores (`NameSettings`, chosen on dev).
- Arguments, per candidate (`ArgumentPlan`): typed values narrowed to what the utterance says, optional keys to
  those it can fill, keys whose value it says unambiguously made required, strings to its spans on word
  boundaries (`utterance_spans`).
- In a conversation (`tvcall.data.prompt.split_context`) the previous call's values of the candidate's own
  parameters may be carried over as they are; the plan reads the command alone for everything else, so a number
  in the previous call is not taken for one the user said.

The local decoder walks the plan as token tries (`tvcall.app.engine.decoder`); backends that take one constraint
per request get it as JSON schemas (`arguments_schema`) and the same name decision replayed on the server's
log-probabilities (`tvcall.app.engine.guided`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tvcall.data.grounding import said_keys, said_matches, says_required, values_of
from tvcall.data.mentions import LexiconLinker
from tvcall.data.prompt import split_context
from tvcall.data.words import word_boundaries
from tvcall.functions.registry import Registry
from tvcall.functions.retrieve import Retriever
from tvcall.functions.spec import FunctionSpec, strip_private_keywords
from tvcall.run import RunDir

if TYPE_CHECKING:
    from tvcall.training.refresh import Refresh

Words = Callable[[str], frozenset[int]]  # an utterance → the offsets where its words start and end
MAX_COPY_CHARS = 100  # longest string slot value copied from an utterance (SNIPS has playlist names of 99)


# --- names ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NameSettings:
    """How the name stage weighs its evidence, chosen on dev (`tvcall.eval.calibrate`): the abstention bias on "no
    function", the weight of the retriever's prior against the model, the sharpness of the prior's object ranking,
    and the weight of entity linking (`tvcall.data.mentions`) in that ranking."""

    null_bias: float = 0.0
    prior_weight: float = 0.0
    object_sharpness: float = 1.0
    link_weight: float = 0.0  # what a mention of a lexicon value adds to the objects taking it (0: linking off)
    followup_null_bias: float | None = None  # the bias for a command after a previous call (None: `null_bias`)


def null_bias_for(text: str, null_bias: float, followup_null_bias: float | None) -> float:
    """The abstention bias of a routed text: a follow-up's own where one was chosen. A command read with the previous
    call weighs abstaining differently (after a call, "even more" is a command; without one, it is not)."""
    return null_bias if followup_null_bias is None or split_context(text)[0] is None else followup_null_bias


def load_calibration(run: RunDir) -> NameSettings:
    """The settings chosen on dev; none chosen yet: no bias and no prior."""
    path = run.calibration_file
    if not path.exists():
        return NameSettings()
    chosen = json.loads(path.read_text())
    followup = chosen.get("followup_null_bias")
    return NameSettings(float(chosen["null_bias"]), float(chosen.get("prior_weight", 0.0)),
                        float(chosen.get("object_sharpness", 1.0)),  # runs calibrated before it: 1
                        float(chosen.get("link_weight", 0.0)),  # and before linking: off
                        None if followup is None else float(followup))


def load_act_threshold(run: RunDir) -> float:
    """The confidence a call needs to be executed, chosen on dev; none chosen yet: 0 (every call acts)."""
    path = run.calibration_file
    return float(json.loads(path.read_text()).get("act_threshold", 0.0)) if path.exists() else 0.0


def conversational(retriever: Retriever) -> Retriever:
    """The retriever, reading a routed text's previous call (in a conversation) as the prompt renderer writes it."""
    retriever.read_context = split_context
    return retriever


def use_run_retriever(retriever: Retriever, run: RunDir, log: Callable[[str], None] = lambda _: None) -> Refresh:
    """Retrieve as the run's model was trained: the run's classifier, grown for functions of the retriever's
    registry new to the run (`tvcall.training.refresh`) with their names' boost where one was chosen, and entity
    linking against the registry's lexicons."""
    from tvcall.training.refresh import refresh

    if retriever.linker is None:
        retriever.linker = LexiconLinker(retriever.registry)
    refreshed = refresh(run, retriever.registry, log=log)
    retriever.use_classifier(refreshed.classifier)
    retriever.unseen, retriever.unseen_boost = frozenset(refreshed.new_functions), refreshed.unseen_boost or 0.0
    return refreshed


def words_of(retriever: Retriever | None) -> Words:
    """Where an utterance's words start and end for the copy constraint: with a catalogue (the retriever's linker),
    each value it knows is one word, copied whole or not at all."""
    linker = retriever.linker if retriever is not None else None
    return linker.word_boundaries if linker is not None else word_boundaries


def settings_of(null_bias: float, prior_weight: float, retriever: Retriever | None,
                followup_null_bias: float | None = None) -> NameSettings:
    """An engine's name settings: the decoder's biases and weight, the retriever's sharpness and link weight."""
    sharpness, link = (retriever.object_sharpness, retriever.link_weight) if retriever is not None else (1.0, 0.0)
    return NameSettings(null_bias, prior_weight, sharpness, link, followup_null_bias)


def apply_to_retriever(settings: NameSettings, retriever: Retriever | None) -> None:
    if retriever is not None:
        retriever.object_sharpness, retriever.link_weight = settings.object_sharpness, settings.link_weight


def callable_candidates(registry: Registry, text: str, candidates: Sequence[str]) -> list[str]:
    """The candidates `text` can call: those whose required typed values it says (`says_required`). A function left
    out could only be called with an invented value; its gold utterances say it (1 in 19,000 training utterances
    did not)."""
    context, command = split_context(text)
    return [name for name in candidates if says_required(registry[name], command, carried_values(registry[name], context))]


# --- arguments --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArgumentPlan:
    said: dict[str, list[Any]]  # each typed key the utterance could ground → the values it says (may be none)
    available: frozenset[str]  # keys that may be filled: untyped ones and typed ones with a value said
    filled: frozenset[str]  # optional keys that must be filled: their value is said unambiguously
    command: str  # the text values are copied from (without the previous call's line)
    carried: dict[str, Any]  # the previous call's values of this function's parameters, which may be kept
    bounds: frozenset[int]  # where the command's words start and end: a copied value starts and ends on them


def carried_values(spec: FunctionSpec, context: dict[str, Any] | None) -> dict[str, Any]:
    """The previous call's arguments that are parameters of `spec` with a value its schema allows, for a function of
    the same object only: after "volume 20", the brightness is not set to 20."""
    if context is None or context["name"].rsplit(".", 1)[0] != spec.name.rsplit(".", 1)[0]:
        return {}
    return {key: value for key, value in context["arguments"].items()
            if key in spec.properties and fits(spec.properties[key], value)}


def fits(schema: dict[str, Any], value: Any) -> bool:
    kind = schema.get("type")
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and schema.get("minimum", value) <= value <= schema.get("maximum", value)
    if kind == "boolean":
        return isinstance(value, bool)
    if "enum" in schema:
        return value in schema["enum"]
    return isinstance(value, str) and 0 < len(value) <= MAX_COPY_CHARS


def argument_plan(spec: FunctionSpec, text: str, words: Words = word_boundaries) -> ArgumentPlan:
    """What the command says for each parameter. A value carried from the previous call is a typed key's value when
    the command says none (a string key's copy, see `copy_values`), and its key must be filled. `words`: where the
    command's words start and end (`words_of`)."""
    context, command = split_context(text)
    matches = said_matches(spec, command)
    said = {key: values_of(found) for key, found in matches.items()}
    carried = carried_values(spec, context)
    for key, value in carried.items():
        if key in said and not said[key]:  # a value the command says replaces the previous one ("no, HDMI 2")
            said[key] = [value]
    available = frozenset(key for key in spec.properties if key not in said or said[key])
    # a carried value stays unless the command says another: "关掉吧" after the kitchen light keeps the kitchen
    kept = frozenset(key for key in carried if not matches.get(key))
    return ArgumentPlan(said, available, said_keys(spec, matches) | kept, command, carried, words(command))


def copy_values(plan: ArgumentPlan, key: str, taken: Sequence[tuple[int, int]] = ()) -> list[str]:
    """What a copied string may be: spans of the command clear of the `taken` ranges (any span once every word is
    taken: a required key may overlap after all), and the previous call's value of the key."""
    spans = utterance_spans(plan.command, taken=taken, bounds=plan.bounds) or utterance_spans(plan.command, bounds=plan.bounds)
    carried = plan.carried.get(key)
    return spans if not isinstance(carried, str) or carried in spans else [*spans, carried]


def copied(schema: dict[str, Any], grounded: list[Any] | None) -> bool:
    """Whether a value is copied from the utterance: a string that no enum and no grounding normalises."""
    return not grounded and "enum" not in schema and schema.get("type") not in ("boolean", "integer")


def arguments_schema(spec: FunctionSpec, text: str | None = None, words: Words = word_boundaries) -> dict[str, Any]:
    """The function's parameter schema without `x-` keys; with `text`, narrowed by its `argument_plan`: keys it cannot
    fill dropped, keys it says required, typed values to those it says, free strings to its spans. (The local decoder
    also keeps two copied values from sharing a word, which a JSON schema cannot say.)"""
    schema = strip_private_keywords(spec.parameters)
    if text is None:
        return schema
    plan = argument_plan(spec, text, words)
    properties: dict[str, Any] = {}
    for key, slot in schema.get("properties", {}).items():
        if key not in plan.available and key not in spec.required:
            continue
        if plan.said.get(key):
            slot = {**slot, "enum": plan.said[key]}
        elif copied(slot, None) and (spans := copy_values(plan, key)):
            slot = {**slot, "enum": spans}
        properties[key] = slot
    required = [key for key in properties if key in spec.required or key in plan.filled]
    return {**schema, "properties": properties, "required": required}


def utterance_spans(text: str, max_chars: int = MAX_COPY_CHARS, taken: Sequence[tuple[int, int]] = (),
                    bounds: frozenset[int] | None = None) -> list[str]:
    """Every substring that can be a slot value: trimmed, starting and ending on word boundaries (`bounds`, by default
    `word_boundaries`: not through an English word, a number or a Chinese word), and with an occurrence that overlaps
    none of the `taken` character ranges (the values already copied: each word of a command fills one slot at most)."""
    boundary = (word_boundaries(text) if bounds is None else bounds).__contains__
    starts = [i for i in range(len(text)) if boundary(i) and not text[i].isspace()]
    spans = []
    for i in starts:
        for j in range(i + 1, min(len(text), i + max_chars) + 1):
            if boundary(j) and not text[j - 1].isspace() and clear_of(i, j, taken):
                spans.append(text[i:j])
    return list(dict.fromkeys(spans))


def clear_of(start: int, end: int, taken: Sequence[tuple[int, int]]) -> bool:
    """Whether the range start:end overlaps none of the `taken` ranges."""
    return all(end <= a or b <= start for a, b in taken)


def free_occurrence(text: str, value: str, taken: Sequence[tuple[int, int]],
                    bounds: frozenset[int] | None = None) -> tuple[int, int] | None:
    """The first occurrence of `value` in `text` on word boundaries (`bounds`, as in `utterance_spans`) that overlaps
    none of the `taken` ranges (else the first that overlaps none)."""
    bounds, found = word_boundaries(text) if bounds is None else bounds, []
    start = text.find(value)
    while start >= 0:
        end = start + len(value)
        if clear_of(start, end, taken):
            if start in bounds and end in bounds:
                return start, end
            found.append((start, end))
        start = text.find(value, start + 1)
    return found[0] if found else None
