"""The benchmark registry, built from the imported training records and written in the catalog format
(docs/registry-format.md): `catalog/<domain>.yaml` plus the slot lexicons it names in `lexicons/`, both beside the splits.

Each intent is a one-off function. Its parameters are the slot types seen with it in training, none required;
its templates are its most frequent training utterances with the spans replaced by `{param}`; the lexicon of a
string parameter holds its training values. A set is in one language; the other language's lists mirror it so
the bilingual format validates (synthesising in that language makes no sense).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from tvcall.data.record import Record, write_atomic
from tvcall.errors import InputError
from tvcall.functions.registry import DATA_CATALOG_DIR, DATA_LEXICON_DIR, Registry, load_registry
from tvcall.functions.spec import LANGS

CATALOG_DIR = DATA_CATALOG_DIR
LEXICON_DIR = DATA_LEXICON_DIR
MAX_TEMPLATES = 20
MIN_TEMPLATES = 3  # the registry's minimum: one is held out for test
BOOLEAN_OPTIONS = [{"value": True, "zh": ["是", "打开"], "en": ["yes", "on"]}, {"value": False, "zh": ["否", "关闭"], "en": ["no", "off"]}]


def words(identifier: str) -> str:
    return identifier.replace("_", " ")


def descriptions(function: str, label: str) -> dict[str, str]:
    """Derived from the names: `snips.intent.play_music` (PlayMusic) → "play music (snips intent PlayMusic)"."""
    domain, group, action = function.split(".")
    where = "" if group == "intent" else f" {words(group)}"
    return {"zh": f"{domain} 基准意图 {label}：{words(action)}", "en": f"{words(action)}{where} ({domain} intent {label})"}


def lexicon_name(domain: str, param: str) -> str:
    return f"{domain}_{param}"


def _grounded(record: Record, param: str) -> bool:
    return any(span.slot == param for span in record.spans)


def param_node(function: str, param: str, records: list[Record], slot: str, source: Path) -> dict[str, Any]:
    """A string copied from the text, an enum when some value is not in its text (chat data), integer or boolean."""
    using = [r for r in records if param in r.arguments]
    values = [r.arguments[param] for r in using]
    kinds = {type(value) for value in values}
    node: dict[str, Any] = {"name": param, "zh": f"槽位 {slot}", "en": f"slot {slot}"}
    if kinds == {str} and all(_grounded(r, param) for r in using):
        return node | {"type": "string", "lexicon": lexicon_name(function.split(".")[0], param)}
    if kinds == {str}:
        return node | {"type": "enum", "options": [{"value": v, "zh": [v], "en": [v]} for v in dict.fromkeys(values)]}
    if kinds == {bool}:
        return node | {"type": "boolean", "options": BOOLEAN_OPTIONS}
    if kinds == {int}:
        return node | {"type": "integer", "min": min(values), "max": max(max(values), min(values) + 1)}
    raise InputError(source, None, f"{function}.{param}", f"mixed value types {sorted(k.__name__ for k in kinds)}")


def delexicalised(record: Record) -> str | None:
    """The text with each span replaced by `{param}`; a nested span stays inside its outer one."""
    if "{" in record.text or "}" in record.text:
        return None
    parts, position = [], 0
    for span in sorted(record.spans, key=lambda s: (s.start, -s.end)):
        if span.start >= position:
            parts += [record.text[position:span.start], "{" + span.slot + "}"]
            position = span.end
    return "".join(parts) + record.text[position:]


def templates(records: list[Record], fallback: str) -> dict[str, list[str]]:
    by_lang: dict[str, list[str]] = {}
    for lang in LANGS:
        counts = Counter(t for r in records if r.lang == lang and (t := delexicalised(r)) is not None)
        by_lang[lang] = sorted(counts, key=lambda t: -counts[t])[:MAX_TEMPLATES]
    for lang, other in zip(LANGS, reversed(LANGS), strict=True):
        forms = list(by_lang[lang] or by_lang[other] or [fallback])
        # a rare intent (ATIS atis_cheapest: one utterance) repeats its phrasings up to the minimum
        by_lang[lang] = (forms * MIN_TEMPLATES)[:max(len(forms), MIN_TEMPLATES)]
    return by_lang


def utterance_order(records: list[Record]) -> list[str]:
    """The parameters in the order utterances say them: by the median relative start of their spans (ties by name).
    The decoder offers keys in this order, so the model copies the values left to right as it reads them
    (alphabetical order made it write ATIS's `depart_time_time` before the `time_relative` said ahead of it)."""
    starts: dict[str, list[float]] = {}
    for record in records:
        for span in record.spans:
            if span.slot in record.arguments:
                starts.setdefault(span.slot, []).append(span.start / max(1, len(record.text)))
    for record in records:  # a value without a span (chat data) sorts last
        for param in record.arguments:
            starts.setdefault(param, [1.0])
    return sorted(starts, key=lambda p: (statistics.median(starts[p]), p))


def function_node(function: str, records: list[Record], label: str, slots: dict[str, str], source: Path) -> dict[str, Any]:
    params = utterance_order(records)
    text = descriptions(function, label)
    return {
        "name": function, "zh": text["zh"], "en": text["en"],
        "params": [param_node(function, p, records, slots.get(p, p), source) for p in params],
        "templates": templates(records, words(function.split(".")[-1])),
    }


def lexicons(train: list[Record], nodes: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """lexicon → {zh, en}: the training values of its string parameter, minus what a lexicon may not hold."""
    names = {(n["name"].split(".")[0], p["name"]): p["lexicon"] for n in nodes for p in n["params"] if p["type"] == "string"}
    values: dict[str, dict[str, list[str]]] = defaultdict(lambda: {lang: [] for lang in LANGS})
    for record in train:
        if record.function is None:
            continue
        for span in record.spans:
            lexicon = names.get((record.function.split(".")[0], span.slot))
            value = record.text[span.start:span.end]
            if lexicon and value.strip() and not any(c in value for c in '{}"\n'):
                values[lexicon][record.lang].append(value)
    result = {}
    for lexicon in sorted(set(names.values())):
        forms = {lang: list(dict.fromkeys(values[lexicon][lang])) for lang in LANGS}
        mirrored = {lang: list(forms[lang] or forms[other] or [lexicon]) for lang, other in zip(LANGS, reversed(LANGS), strict=True)}
        result[lexicon] = mirrored
    return result


def catalog_documents(train: list[Record], labels: dict[str, str], slots: dict[str, str], source: Path) -> dict[str, dict[str, Any]]:
    """domain → its catalog document."""
    by_function: dict[str, list[Record]] = defaultdict(list)
    for record in train:
        if record.function is not None:
            by_function[record.function].append(record)
    documents: dict[str, dict[str, Any]] = {}
    for function in sorted(by_function):
        domain = function.split(".")[0]
        document = documents.setdefault(domain, {"domain": domain, "zh": f"{domain} 基准", "en": f"{domain} benchmark", "functions": []})
        document["functions"].append(function_node(function, by_function[function], labels.get(function, function), slots, source))
    return documents


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, allow_unicode=True, sort_keys=False, width=1000)


def write_catalog(train: list[Record], labels: dict[str, str], slots: dict[str, str], out: Path, source: Path) -> list[Path]:
    documents = catalog_documents(train, labels, slots, source)
    nodes = [node for document in documents.values() for node in document["functions"]]
    written = []
    for domain, document in documents.items():
        written.append(out / CATALOG_DIR / f"{domain}.yaml")
        write_atomic(written[-1], _dump(document))
    for lexicon, forms in lexicons(train, nodes).items():
        written.append(out / LEXICON_DIR / f"{lexicon}.yaml")
        write_atomic(written[-1], _dump(forms))
    for folder in (CATALOG_DIR, LEXICON_DIR):  # a file left by an earlier import into this folder would join the registry
        for stale in set((out / folder).glob("*.yaml")) - set(written):
            stale.unlink()
    return written


def load_benchmark_registry(data_dir: Path) -> Registry:
    """The registry of an imported benchmark folder (`catalog/*.yaml`, lexicons in `lexicons/`), validated on load
    by `load_registry` itself; `registry_for_data` picks it for such a folder."""
    return load_registry(data_dir / CATALOG_DIR, data_dir / LEXICON_DIR)
