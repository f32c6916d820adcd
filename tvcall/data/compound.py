"""Compound commands: two or three commands said in one breath ("把音量调到20然后切到HDMI2"), whose answer is the
list of their calls in order.

A compound record joins single commands of one split with connectives (`templates/compound.yaml`); the test
split's connectives are held out from the dev split's, and its commands are the test split's own (held-out
phrasings and values). The router splits a compound at its connectives and routes each part as one command
(`tvcall.app.engine.compound`), so the model needs no compound training data.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tvcall.data.record import Record, read_models, write_atomic
from tvcall.data.split_names import COMPOUND_SPLITS
from tvcall.data.synth import TEMPLATE_DIR
from tvcall.errors import InputError
from tvcall.functions.spec import LANGS
from tvcall.yamlio import load_yaml, strip_lines

CONNECTIVE_FILE = TEMPLATE_DIR / "compound.yaml"
THREE_CALL_SHARE = 0.3  # of compound records: three calls, the others two


class Call(BaseModel):
    name: str
    arguments: dict[str, Any] = {}


class CompoundRecord(BaseModel):
    id: str
    text: str
    lang: str
    calls: list[Call]
    parts: list[str]  # the commands joined, as said


@cache
def connectives(path: Path = CONNECTIVE_FILE) -> dict[str, dict[str, list[str]]]:
    """split (dev, test) → language → connectives; the test split's are not the dev split's."""
    loaded = strip_lines(load_yaml(path))
    for split in COMPOUND_SPLITS:
        for lang in LANGS:
            if not (loaded.get(split) or {}).get(lang):
                raise InputError(path, None, f"{split}.{lang}", "expected a list of connectives")
    for lang in LANGS:
        shared = set(loaded["dev"][lang]) & set(loaded["test"][lang])
        if shared:
            raise InputError(path, None, f"test.{lang}", f"connectives of the dev split too: {sorted(shared)}")
    return loaded


def synthesize_compound(singles: list[Record], split: str, size: int, seed: int) -> list[CompoundRecord]:
    """`size` compounds of the split's in-scope single commands (of different objects), two or three each."""
    rng = random.Random(f"{seed}-compound-{split}")
    by_lang = {lang: [r for r in singles if r.lang == lang and r.function and not r.function.startswith("dialog.")]
               for lang in LANGS}
    records: list[CompoundRecord] = []
    seen: set[str] = set()
    for _ in range(size * 50):
        if len(records) == size:
            break
        lang = rng.choice(LANGS)
        count = 3 if rng.random() < THREE_CALL_SHARE else 2
        if len(by_lang[lang]) < count:
            continue
        parts = rng.sample(by_lang[lang], count)
        if len({p.function.rsplit(".", 1)[0] for p in parts if p.function}) < count:
            continue  # two commands on one object ("volume 20 and then volume 30") say one thing twice
        text = parts[0].text
        for part in parts[1:]:
            text += rng.choice(connectives()[split][lang]) + part.text
        if text in seen:
            continue
        seen.add(text)
        records.append(CompoundRecord(id=f"{COMPOUND_SPLITS[split]}-{len(records):06d}", text=text, lang=lang,
                                      calls=[Call(name=p.function or "", arguments=p.arguments) for p in parts],
                                      parts=[p.text for p in parts]))
    if len(records) < size:
        raise RuntimeError(f"could only make {len(records)} of {size} {split} compound commands")
    return records


def write_compound(path: Path, records: list[CompoundRecord]) -> int:
    write_atomic(path, "".join(r.model_dump_json() + "\n" for r in records))
    return len(records)


def read_compound(path: Path) -> Iterator[CompoundRecord]:
    return read_models(path, CompoundRecord)
