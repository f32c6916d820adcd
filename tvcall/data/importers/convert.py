"""From a set's own labels to the project's records: intents become dotted function names, slot types parameter
names; dev/test intents never seen in training become the UNK function, which no registry holds."""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tvcall.data.importers.readers import Example
from tvcall.data.record import Record, Span
from tvcall.errors import InputError
from tvcall.functions.spec import IDENT_RE, NAME_RE

TEST_SHARE = 0.2  # of each label, for sets without a public test split
DEV_SHARE = 0.1
FLAT_GROUP = "intent"  # the middle part of a function name when the set has no domains
_CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass
class Converted:
    records: dict[str, list[Record]]  # split → records
    labels: dict[str, str]  # function → the set's own label, for the functions seen in training
    slots: dict[str, str]  # parameter → the set's own slot type
    unseen: dict[str, dict[str, int]]  # split → label → count of records mapped to UNK


def unknown_function(name: str) -> str:
    return f"{name}.unseen.intent"


def snake(label: str) -> str:
    """PlayMusic → play_music, timeRange → time_range, CLOSEPRICE_QUERY → closeprice_query, fromloc.city_name → fromloc_city_name."""
    split = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", label)
    return re.sub(r"[^a-z0-9]+", "_", split.lower()).strip("_")


def identifier(label: str, path: Path, line: int | None, field: str) -> str:
    name = snake(label)
    if not IDENT_RE.match(name):
        raise InputError(path, line, field, f"{label!r} gives no identifier [a-z][a-z0-9_]* (got {name!r})")
    return name


def label_of(example: Example) -> str:
    return f"{example.group}/{example.intent}" if example.group else str(example.intent)


def function_name(example: Example, name: str) -> str:
    """<set>.<group>.<intent>: `snips.intent.play_music`; ATIS `atis_flight#atis_airfare` → `atis.intent.flight_and_airfare`
    (a multi-intent label is one function, as JointBERT keeps it one class); SMP2019 `smp2019.weather.query`."""
    intent = str(example.intent)
    if NAME_RE.match(intent):  # chat data already named the project's way
        return intent
    group = identifier(example.group, example.path, example.line, "domain") if example.group else FLAT_GROUP
    parts = [identifier(part.removeprefix(f"{name}_"), example.path, example.line, "intent") for part in intent.split("#")]
    return f"{name}.{group}.{'_and_'.join(parts)}"


def _rename(items: Iterable[tuple[str, Example]], rename: Callable[[str, Example], str], field: str) -> dict[str, str]:
    """label → new name, refusing two labels that would share one name."""
    names: dict[str, str] = {}
    owners: dict[str, str] = {}
    for label, example in items:
        if label in names:
            continue
        new = rename(label, example)
        if owners.setdefault(new, label) != label:
            raise InputError(example.path, example.line, field, f"{label!r} and {owners[new]!r} both become {new!r}")
        names[label] = new
    return names


def function_names(examples: list[Example], name: str) -> dict[str, str]:
    return _rename(((label_of(e), e) for e in examples if e.intent is not None), lambda _, e: function_name(e, name), "intent")


def param_names(examples: list[Example]) -> dict[str, str]:
    items = ((slot, e) for e in examples for slot in e.arguments)
    return _rename(items, lambda slot, e: identifier(slot, e.path, e.line, f"slots.{slot}"), "slot")


def detect_lang(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def to_record(example: Example, record_id: str, lang: str | None, function: str | None, params: dict[str, str]) -> Record:
    try:
        return Record(
            id=record_id, text=example.text, lang=lang or detect_lang(example.text), function=function,
            arguments={params[slot]: value for slot, value in example.arguments.items()},
            spans=[Span(slot=params[slot], start=start, end=end) for slot, start, end in example.spans],
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InputError(example.path, example.line, ".".join(str(p) for p in error["loc"]) or "record", error["msg"]) from exc


def convert(splits: dict[str, list[Example]], name: str, lang: str | None) -> Converted:
    everything = [e for examples in splits.values() for e in examples]
    functions, params = function_names(everything, name), param_names(everything)
    known = {functions[label_of(e)] for e in splits["train"] if e.intent is not None}
    unknown = unknown_function(name)
    if unknown in known:
        raise InputError(splits["train"][0].path, None, "intent", f"{unknown} is reserved for intents unseen in training")
    records: dict[str, list[Record]] = {}
    unseen: dict[str, Counter[str]] = defaultdict(Counter)
    for split, examples in splits.items():
        records[split] = []
        for index, example in enumerate(examples):
            function = functions[label_of(example)] if example.intent is not None else None
            if function is not None and function not in known:
                unseen[split][label_of(example)] += 1
                function = unknown
            records[split].append(to_record(example, f"{name}-{split}-{index:05d}", lang, function, params))
    labels = {function: label for label, function in sorted(functions.items(), key=lambda item: item[1]) if function in known}
    return Converted(records, labels, {param: slot for slot, param in params.items()}, {s: dict(c) for s, c in unseen.items()})


def stratified_split(examples: list[Example], seed: int, test_share: float = TEST_SHARE, dev_share: float = DEV_SHARE) -> dict[str, list[Example]]:
    """Per label, in sorted label order and with one RNG seeded once: shuffle, then round(share × n) go to test, the
    next round(dev_share × n) to dev, the rest to train. A label with one or two examples stays in train, so no test
    label is unseen in training. Each split keeps the file's order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        groups[label_of(example) if example.intent is not None else ""].append(index)
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for label in sorted(groups):
        indices = list(groups[label])
        rng.shuffle(indices)
        tests, devs = int(len(indices) * test_share + 0.5), int(len(indices) * dev_share + 0.5)
        chosen["test"] += indices[:tests]
        chosen["dev"] += indices[tests:tests + devs]
        chosen["train"] += indices[tests + devs:]
    return {split: [examples[i] for i in sorted(indices)] for split, indices in chosen.items()}
