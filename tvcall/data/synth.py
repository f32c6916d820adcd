"""Bilingual utterance synthesis from templates and slot lexicons, deterministic by seed.

Test and dev phrasings (held-out templates) and string slot values (held-out lexicon values) never occur in
the training split; about `oos_share` of every split is out of scope ("no function").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tvcall.data.grounding import said_keys, said_matches, values_of
from tvcall.data.lexicon import is_test_value, lexicon_values
from tvcall.data.numbers import surface_forms
from tvcall.data.record import Record, Span
from tvcall.data.split_names import SPLITS
from tvcall.errors import InputError
from tvcall.functions.registry import PLACEHOLDER_RE, Registry, template_fault
from tvcall.functions.spec import LANGS, FunctionSpec
from tvcall.yamlio import key_line, load_yaml, strip_lines

TEMPLATE_DIR = Path(__file__).parent / "templates"
PARAPHRASE_FILE = "paraphrases.yaml"
_PREFIXES = {"zh": ["请", "帮我", "麻烦", "小电视，"], "en": ["please ", "hey tv, ", "ok tv, "]}
_PREFIX_RATE = 0.12


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    train_size: int = 20000
    dev_size: int = 200
    test_size: int = 600
    oos_share: float = 0.05
    # follow-ups (`tvcall.data.followups`), as shares of the single commands: training ones join the train split,
    # dev and test ones have files of their own
    followup_shares: tuple[float, float, float] = (0.15, 1.0, 2 / 3)

    compound_shares: tuple[float, float] = (1.0, 2 / 3)  # compound commands of dev and test (`tvcall.data.compound`)

    def followup_sizes(self) -> dict[str, int]:
        sizes = (self.train_size, self.dev_size, self.test_size)
        return {split: round(size * share) for split, size, share in zip(SPLITS, sizes, self.followup_shares, strict=True)}

    def compound_sizes(self) -> dict[str, int]:
        return {"dev": round(self.dev_size * self.compound_shares[0]), "test": round(self.test_size * self.compound_shares[1])}


_FILLER_WORDS = {"please", "um", "so", "hmm", "the", "a", "an", "in", "for", "me", "bit", "little", "could", "can",
                 "you"}
_FILLER_ZH = re.compile(r"请|帮我|麻烦|给我|一下|嗯|吧|呀|啊|呗|啦|呢|的|里")


def phrasing_key(template: str) -> str:
    """What a template says once the room, politeness, fillers and punctuation are gone: two templates with the
    same key are one phrasing, so a held-out phrasing must not have the key of a training one."""
    text = template.lower().replace("{room}", " ")
    words = [w for w in re.findall(r"\{\w+\}|[^\W\d_]+|\d+", text) if w not in _FILLER_WORDS]
    return _FILLER_ZH.sub("", "".join(words))


@cache
def kind_templates(path: Path = TEMPLATE_DIR / "kinds.yaml") -> dict[str, Any]:
    """kind → action → split → language → templates; no held-out phrasing has the key of a training one."""
    raw = load_yaml(path)
    templates = strip_lines(raw)
    for kind, actions in templates.items():
        for action, by_split in actions.items():
            for lang, held_out in by_split["test"].items():
                taught = {phrasing_key(t): t for t in by_split["train"][lang]}
                for template in held_out:
                    if phrasing_key(template) in taught:
                        raise InputError(path, key_line(raw[kind], action), f"{kind}.{action}.test.{lang}",
                                         f"{template!r} is the training phrasing {taught[phrasing_key(template)]!r}")
    return templates


@cache
def out_of_scope_texts(lang: str, split: str) -> list[str]:
    path = TEMPLATE_DIR / "out_of_scope.yaml"
    texts = strip_lines(load_yaml(path)).get(lang)
    if not isinstance(texts, list) or len(texts) < 4:
        raise InputError(path, None, lang, "expected a list of at least 4 utterances")
    held_out = [t for t in texts if is_test_value("out_of_scope", t)]
    kept = [t for t in texts if not is_test_value("out_of_scope", t)]
    return kept if split == "train" else held_out


def _load_paraphrases(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, list[str]]]]:
    """(the file as loaded, with its lines; the same without them)"""
    raw = load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise InputError(path, None, "paraphrases", "expected a mapping from function name to {zh: [...], en: [...]}")
    return raw, strip_lines(raw)


@cache
def paraphrases() -> dict[str, dict[str, list[str]]]:
    """Extra training phrasings of one-off functions (`paraphrases.yaml`), checked against the registry by
    `check_paraphrases`."""
    return _load_paraphrases(TEMPLATE_DIR / PARAPHRASE_FILE)[1]


def check_paraphrases(registry: Registry, path: Path = TEMPLATE_DIR / PARAPHRASE_FILE) -> None:
    """Every paraphrase names a one-off function of the registry, fits its parameters (`template_fault`) and is not
    the held-out phrasing."""
    raw, loaded = _load_paraphrases(path)
    for name, by_lang in loaded.items():
        line = key_line(raw, name)
        if name not in registry.functions or registry[name].templates is None:
            raise InputError(path, line, name, "not a function with its own templates in the registry")
        spec = registry[name]
        if not isinstance(by_lang, dict) or not set(by_lang) <= set(LANGS):
            raise InputError(path, line, name, f"expected a mapping from {'/'.join(LANGS)} to a list of templates")
        for lang, templates in by_lang.items():
            held_out = {phrasing_key(t) for t in spec.own_templates(lang, "test")}
            for template in templates:
                if phrasing_key(template) in held_out:
                    raise InputError(path, line, f"{name}.{lang}", f"{template!r} is the held-out phrasing")
                fault = template_fault(spec, template)
                if fault:
                    raise InputError(path, line, f"{name}.{lang}", fault)


def templates_for(spec: FunctionSpec, lang: str, split: str) -> list[str]:
    """Templates of `spec` in `lang` for a split; each usable as is (placeholders ⊆ params ∪ {obj, attr})."""
    if spec.templates is not None:
        extra = paraphrases().get(spec.name, {}).get(lang, []) if split == "train" else []
        return spec.own_templates(lang, split) + extra
    kind, verb = spec.template_key.split(".") if "." in (spec.template_key or "") else ("query", "query")
    pool = kind_templates()[kind][verb]["train" if split == "train" else "test"][lang]
    known = set(spec.properties) | {"obj", "attr"}
    required = set(spec.required)
    return [t for t in pool if set(PLACEHOLDER_RE.findall(t)) <= known and required <= set(PLACEHOLDER_RE.findall(t))]


def _phrase(spec: FunctionSpec, lang: str, rng: random.Random) -> dict[str, str]:
    assert spec.object_phrases is not None
    obj = rng.choice(spec.object_phrases.forms(lang))
    if spec.attribute_phrases is None:
        return {"obj": obj}
    attr = rng.choice(spec.attribute_phrases.forms(lang))
    if spec.template_key == "query":
        return {"obj": obj, "attr": attr}
    joined = f"{obj}{rng.choice(['', '的'])}{attr}" if lang == "zh" else f"{obj} {attr}"
    return {"obj": joined}


def _slot_value(schema: dict[str, Any], name: str, lang: str, split: str, rng: random.Random) -> tuple[Any, str]:
    """(normalised argument value, what the user says)."""
    if "x-surface" in schema:
        key = rng.choice(list(schema["x-surface"]))
        value: Any = (key == "true") if schema.get("type") == "boolean" else key
        return value, rng.choice(schema["x-surface"][key][lang])
    if schema.get("type") == "integer":
        low, high = schema["minimum"], schema["maximum"]
        if name == "step":
            high = min(high, 10)
        number = rng.randint(low, high)
        forms = surface_forms(number, lang)
        weights = [0.5] + [0.5 / (len(forms) - 1)] * (len(forms) - 1) if len(forms) > 1 else [1.0]
        return number, rng.choices(forms, weights)[0]
    text = rng.choice(lexicon_values(schema["x-lexicon"], lang, split))
    return text, text


def fill(spec: FunctionSpec, template: str, lang: str, split: str, rng: random.Random, rid: str) -> Record:
    phrases = _phrase(spec, lang, rng) if spec.object_phrases is not None else {}
    text, arguments, spans, last = "", {}, [], 0
    for match in PLACEHOLDER_RE.finditer(template):
        text += template[last:match.start()]
        last = match.end()
        name = match.group(1)
        if name in phrases:
            text += phrases[name]
            continue
        value, said = _slot_value(spec.properties[name], name, lang, split, rng)
        arguments[name] = value
        spans.append(Span(slot=name, start=len(text), end=len(text) + len(said)))
        text += said
    text += template[last:]
    if rng.random() < _PREFIX_RATE:
        prefix = rng.choice(_PREFIXES[lang])
        text = prefix + text
        spans = [Span(slot=s.slot, start=s.start + len(prefix), end=s.end + len(prefix)) for s in spans]
    for key, span, value in _said_outright(spec, text, arguments):
        arguments[key] = value
        spans.append(span)
    return Record(id=rid, text=text, lang=lang, function=spec.name, arguments=spec.in_parameter_order(arguments),
                  spans=spans, template=template)


def _said_outright(spec: FunctionSpec, text: str, arguments: dict[str, Any]) -> list[tuple[str, Span, Any]]:
    """Values a template says in its own words ("今天会下雨吗": day = today): the decoder fills every key the
    utterance says unambiguously, so the labels must too."""
    said = said_matches(spec, text)
    found = []
    for key in sorted(said_keys(spec, said) - arguments.keys()):
        values = values_of(said[key])
        if len(values) == 1:
            start, end, _ = said[key][0]
            found.append((key, Span(slot=key, start=start, end=end), values[0]))
    return found


def synthesize(registry: Registry, split: str, size: int, config: SynthConfig,
               exclude: set[str] | None = None, in_turn: bool = False) -> list[Record]:
    """`size` records for one split; texts in `exclude` (e.g. the training texts) are never produced. `in_turn`:
    the functions take turns instead of being drawn at random, so each gets its share (one that runs out of distinct
    texts is passed over)."""
    rng = random.Random(f"{config.seed}-{split}")
    names = registry.names
    seen = set(exclude or ())
    records: list[Record] = []
    unused: dict[tuple[str, str], list[str]] = {}  # training: each function's phrasings in turn, not at random
    attempts = 0
    while len(records) < size:
        attempts += 1
        if attempts > size * 50:
            raise RuntimeError(f"could only make {len(records)} distinct {split} utterances of {size}")
        lang = rng.choice(LANGS)
        rid = f"{split}-{len(records):06d}"
        if rng.random() < config.oos_share:
            record = Record(id=rid, text=rng.choice(out_of_scope_texts(lang, split)), lang=lang, function=None)
        else:
            spec = registry[names[attempts % len(names)] if in_turn else rng.choice(names)]
            templates = templates_for(spec, lang, split)
            if not templates:
                continue
            if split == "train":
                queue = unused.setdefault((spec.name, lang), [])
                if not queue:
                    queue += rng.sample(templates, len(templates))
                template = queue.pop()
            else:
                template = rng.choice(templates)
            record = fill(spec, template, lang, split, rng, rid)
        # Out-of-scope texts are few, so training repeats them; everything else is distinct.
        if record.text in seen and not (record.function is None and split == "train"):
            continue
        seen.add(record.text)
        records.append(record)
    return records


def build_splits(registry: Registry, config: SynthConfig) -> dict[str, list[Record]]:
    check_paraphrases(registry)
    train = synthesize(registry, "train", config.train_size, config)
    train_texts = {r.text for r in train}
    dev = synthesize(registry, "dev", config.dev_size, config, exclude=train_texts)
    test = synthesize(registry, "test", config.test_size, config, exclude=train_texts | {r.text for r in dev})
    return {"train": train, "dev": dev, "test": test}

