"""Follow-ups: the second turn of a conversation, synthesised with the previous call as its context.

A follow-up record's text is the previous call's line and then the command (`tvcall.data.prompt.with_context`):
"再大一点" after `sound.volume.set` is `sound.volume.increase`, "那主演呢" after `media.movie.query_director` is
`media.movie.query_cast` with the title carried over, "no, HDMI 2" after `input.source.set` sets the new value,
"turn it off" after a `turn_on` is its `turn_off`. Besides those, each split has
- follow-ups without a usable context (none, or a call they cannot follow), whose answer is no function: the
  missing object or value is never invented;
- single commands after an unrelated call, answered as without one (confirm, cancel and undo among them).

Phrasings (`templates/followups.yaml`) and string values of the dev and test splits are held out from training, as
for single commands.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tvcall.data.prompt import CONTEXT_SEPARATOR, answer_text, split_context, with_context
from tvcall.data.record import Record, Span
from tvcall.data.split_names import FOLLOWUP_SPLITS
from tvcall.data.synth import TEMPLATE_DIR, _said_outright, _slot_value, fill, phrasing_key, templates_for
from tvcall.errors import InputError
from tvcall.functions.registry import PLACEHOLDER_RE, Registry
from tvcall.functions.spec import LANGS, FunctionSpec
from tvcall.yamlio import key_line, load_yaml, strip_lines

FOLLOWUP_FILE = TEMPLATE_DIR / "followups.yaml"
DIALOG_DOMAIN = "dialog"  # confirm, cancel and undo: replies to the conversation, never a follow-up's target
# Of every split's follow-up records: real follow-ups, then follow-ups with no usable context, then single commands
# after an unrelated call
SHARES = (0.65, 0.15, 0.20)
DIALOG_SHARE = 0.2  # of the single commands after a call: confirm, cancel and undo, said after another call

# Which families each kind follows (their template kind), and the action it calls
FOLLOWS = {"more": ("level",), "less": ("level",), "replace": ("level", "choice", "query"), "attribute": ("query",),
           "turn_off": ("toggle",), "turn_on": ("toggle",)}
CONTEXT_ACTIONS = {"more": ("set", "increase", "decrease"), "less": ("set", "increase", "decrease"),
                   "turn_off": ("turn_on", "get_status"), "turn_on": ("turn_off", "get_status")}
TARGET_ACTION = {"more": "increase", "less": "decrease", "turn_off": "turn_off", "turn_on": "turn_on"}


@cache
def followup_templates(path: Path = FOLLOWUP_FILE) -> dict[str, Any]:
    """kind → split (train, test) → language → templates; no held-out phrasing is a training one."""
    raw = load_yaml(path)
    templates = strip_lines(raw)
    if not isinstance(templates, dict) or set(templates) != set(FOLLOWS):
        raise InputError(path, None, "kinds", f"expected exactly the kinds {', '.join(FOLLOWS)}")
    for kind, by_split in templates.items():
        for split in ("train", "test"):
            for lang in LANGS:
                if not by_split.get(split, {}).get(lang):
                    raise InputError(path, key_line(raw, kind), f"{kind}.{split}.{lang}", "expected a list of templates")
        for lang in LANGS:
            taught = {phrasing_key(t) for t in by_split["train"][lang]}
            for template in by_split["test"][lang]:
                if phrasing_key(template) in taught:
                    raise InputError(path, key_line(raw, kind), f"{kind}.test.{lang}", f"{template!r} is a training phrasing")
    return templates


TEMPLATE_PREFIX = "followup."  # a follow-up record's template: "followup.KIND:the phrasing"
NO_CONTEXT = "without a usable context"
AFTER_A_CALL = "single command after a call"


def followup_kind(record: Record) -> str | None:
    """Which part of a follow-up split a record is: its kind, `NO_CONTEXT` (answer: no function), `AFTER_A_CALL`;
    None for a single command on its own."""
    template = record.template or ""
    if template.startswith(TEMPLATE_PREFIX):
        return NO_CONTEXT if record.function is None else template.removeprefix(TEMPLATE_PREFIX).split(":", 1)[0]
    return AFTER_A_CALL if split_context(record.text)[0] is not None else None


def object_of(spec: FunctionSpec) -> str:
    return spec.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Family:
    """The functions of one object made from one template kind: action (or, for queries, name) → spec."""

    kind: str
    functions: dict[str, FunctionSpec]


def families(registry: Registry) -> dict[str, list[Family]]:
    """Template kind → its families in the registry."""
    grouped: dict[tuple[str, str, str], dict[str, FunctionSpec]] = defaultdict(dict)
    for spec in registry.functions.values():
        if spec.template_key is None:
            continue
        kind, _, action = spec.template_key.partition(".")
        # one object may have several families of a kind (a light's brightness and colour temperature): the rest of
        # the function's last name part tells them apart ("set_brightness" → "_brightness")
        attribute = spec.name.rsplit(".", 1)[1].replace(action, "", 1) if action else ""
        grouped[object_of(spec), kind, attribute][action or spec.name] = spec
    found: dict[str, list[Family]] = defaultdict(list)
    for (_, kind, _), functions in sorted(grouped.items()):
        found[kind].append(Family(kind, functions))
    return found


@dataclass(frozen=True)
class Turn:
    """A follow-up to synthesise: the previous call's function, the function meant, and the key given anew."""

    context: FunctionSpec
    target: FunctionSpec
    key: str | None = None  # the parameter {value} fills (replace)


def turns(kind: str, family: Family, rng: random.Random) -> Turn | None:
    """A follow-up of `kind` within `family`, or None when the family has no such turn."""
    functions = family.functions
    if kind in TARGET_ACTION:
        contexts = [functions[a] for a in CONTEXT_ACTIONS[kind] if a in functions]
        target = functions.get(TARGET_ACTION[kind])
        return Turn(rng.choice(contexts), target) if contexts and target else None
    if kind == "replace":
        if family.kind == "query":
            spec = rng.choice(list(functions.values()))
            return Turn(spec, spec, spec.required[0]) if spec.required else None
        spec = functions.get("set")
        return Turn(spec, spec, "value") if spec and "value" in spec.properties else None
    if kind == "attribute" and len(functions) > 1:
        context, target = rng.sample(list(functions.values()), 2)
        return Turn(context, target) if target.attribute_phrases else None
    return None


def context_call(spec: FunctionSpec, lang: str, split: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A call of `spec` as a command of the split would give it (its values held out where the split's are)."""
    templates = templates_for(spec, lang, split) or templates_for(spec, lang, "train")
    record = fill(spec, rng.choice(templates), lang, split, rng, "context")
    return spec.name, record.arguments


def say(template: str, turn: Turn, lang: str, split: str, rng: random.Random,
        avoid: Any = None) -> tuple[str, dict[str, Any], list[Span]]:
    """The command from `template`: (text, the values it says, their spans)."""
    text, arguments, spans, last = "", {}, [], 0
    for match in PLACEHOLDER_RE.finditer(template):
        text += template[last:match.start()]
        last = match.end()
        placeholder = match.group(1)
        if placeholder == "attr":
            assert turn.target.attribute_phrases is not None
            text += rng.choice(turn.target.attribute_phrases.forms(lang))
            continue
        key = turn.key if placeholder == "value" else placeholder
        assert key is not None
        for _ in range(20):  # a new value, not the one the previous call had
            value, said = _slot_value(turn.target.properties[key], key, lang, split, rng)
            if value != avoid:
                break
        arguments[key] = value
        spans.append(Span(slot=key, start=len(text), end=len(text) + len(said)))
        text += said
    return text + template[last:], arguments, spans


def shifted(spans: list[Span], offset: int) -> list[Span]:
    return [Span(slot=s.slot, start=s.start + offset, end=s.end + offset) for s in spans]


def context_span(head: str, key: str, value: Any) -> Span | None:
    """Where the previous call's line says `key`'s value (inside the quotes of a string)."""
    said = json.dumps(value, ensure_ascii=False)
    at = head.find(f'"{key}":{said}')
    if at < 0:
        return None
    start = at + len(f'"{key}":') + (1 if isinstance(value, str) else 0)
    return Span(slot=key, start=start, end=start + len(str(value).lower() if isinstance(value, bool) else str(value)))


def usable(template: str, turn: Turn) -> bool:
    """Whether the turn's target can take what the template says."""
    needed = set(PLACEHOLDER_RE.findall(template))
    return ("step" not in needed or "step" in turn.target.properties) and ("attr" not in needed or bool(turn.target.attribute_phrases))


class FollowupMaker:
    def __init__(self, registry: Registry, split: str, seed: int) -> None:
        self.registry, self.split = registry, split
        self.rng = random.Random(f"{seed}-followup-{split}")
        self.families = families(registry)
        self.templates = followup_templates()
        self.template_split = "train" if split == "train" else "test"
        self.callable = [s for s in registry.functions.values() if s.domain != DIALOG_DOMAIN]
        self.dialog = [s for s in registry.functions.values() if s.domain == DIALOG_DOMAIN]

    def _draw(self, kind: str, lang: str) -> tuple[Turn, str] | None:
        pool = [f for k in FOLLOWS[kind] for f in self.families.get(k, [])]
        if not pool:
            return None
        turn = turns(kind, self.rng.choice(pool), self.rng)
        template = self.rng.choice(self.templates[kind][self.template_split][lang])
        return (turn, template) if turn is not None and usable(template, turn) else None

    def followup(self, rid: str) -> Record | None:
        kind, lang = self.rng.choice(list(FOLLOWS)), self.rng.choice(LANGS)
        drawn = self._draw(kind, lang)
        if drawn is None:
            return None
        turn, template = drawn
        name, context = context_call(turn.context, lang, self.split, self.rng)
        command, said, spans = say(template, turn, lang, self.split, self.rng, context.get(turn.key or ""))
        carried = {k: v for k, v in context.items() if k in turn.target.properties and k not in said}
        head = answer_text(name, context) + CONTEXT_SEPARATOR
        arguments = {**carried, **said}
        spans = shifted(spans, len(head)) + [span for key, value in carried.items() if (span := context_span(head, key, value))]
        for key, span, value in _said_outright(turn.target, command, arguments):
            arguments[key] = value
            spans += shifted([span], len(head))
        return Record(id=rid, text=head + command, lang=lang, function=turn.target.name,
                      arguments=turn.target.in_parameter_order(arguments), spans=spans, template=f"{TEMPLATE_PREFIX}{kind}:{template}")

    def without_context(self, rid: str) -> Record | None:
        """A follow-up with no previous call, or after one it cannot follow: no function."""
        kind, lang = self.rng.choice(list(FOLLOWS)), self.rng.choice(LANGS)
        if kind == "replace":  # "换成HDMI 2" can be a command of its own; a bare number cannot
            kind = "more"
        drawn = self._draw(kind, lang)
        if drawn is None:
            return None
        turn, template = drawn
        command, _, _ = say(template, turn, lang, self.split, self.rng)
        if self.rng.random() < 0.5:
            text = command
        else:
            # a family of an object with no family the follow-up can follow: after a one-off call ("打开字幕"), or a
            # range hood's fan speed (the hood has a switch too), "关掉吧" may well follow it
            followed = {object_of(s) for k in FOLLOWS[kind] for f in self.families.get(k, []) for s in f.functions.values()}
            unrelated = [f for found in self.families.values() for f in found
                         if not followed & {object_of(s) for s in f.functions.values()}]
            spec = self.rng.choice(list(self.rng.choice(unrelated).functions.values()))
            text = with_context(command, *context_call(spec, lang, self.split, self.rng))
        return Record(id=rid, text=text, lang=lang, function=None, template=f"{TEMPLATE_PREFIX}{kind}:{template}")

    def after_a_call(self, single: Record, rid: str) -> Record:
        """A single command said after a call on another object: answered as without it."""
        own = (single.function or "").rsplit(".", 1)[0]
        spec = self.rng.choice([s for s in self.callable if object_of(s) != own])
        head = answer_text(*context_call(spec, single.lang, self.split, self.rng)) + CONTEXT_SEPARATOR
        return single.model_copy(update={"id": rid, "text": head + single.text, "spans": shifted(single.spans, len(head))})

    def dialog_reply(self, rid: str) -> Record | None:
        """Confirm, cancel or undo after a call."""
        spec, lang = self.rng.choice(self.dialog), self.rng.choice(LANGS)
        templates = templates_for(spec, lang, self.split)
        if not templates:
            return None
        return self.after_a_call(fill(spec, self.rng.choice(templates), lang, self.split, self.rng, rid), rid)


def synthesize_followups(registry: Registry, split: str, size: int, singles: list[Record], seed: int,
                         exclude: set[str] | None = None) -> list[Record]:
    """`size` follow-up records for a split (`SHARES`); `singles`: the split's single commands, some of which are
    said after an unrelated call. Texts in `exclude` are never produced."""
    maker = FollowupMaker(registry, split, seed)
    seen = set(exclude or ())
    counts = [round(size * share) for share in SHARES[:2]]
    counts.append(size - sum(counts))
    in_scope = [r for r in singles if r.function is not None and registry[r.function].domain != DIALOG_DOMAIN]
    records: list[Record] = []
    for part, count in enumerate(counts):
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            if attempts > count * 50:
                raise RuntimeError(f"could only make {made} of {count} {split} follow-ups of part {part}")
            rid = f"{FOLLOWUP_SPLITS.get(split, 'followup-train')}-{len(records):06d}"
            if part == 0:
                record = maker.followup(rid)
            elif part == 1:
                record = maker.without_context(rid)
            elif maker.dialog and maker.rng.random() < DIALOG_SHARE:
                record = maker.dialog_reply(rid)
            else:
                record = maker.after_a_call(maker.rng.choice(in_scope), rid)
            if record is None or record.text in seen:
                continue
            seen.add(record.text)
            records.append(record)
            made += 1
    return records
