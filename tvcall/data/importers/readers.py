"""Readers for public intent/slot sets: word-level BIO, CoNLL columns (BIO or BIOES), SMP2019 JSON and chat JSONL in
the OpenAI `tools` format. Each yields `Example`s in the set's own labels; every error names file, line and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvcall.data.grounding import occurrences
from tvcall.errors import InputError

RawSpan = tuple[str, int, int]  # (slot, start, end): character offsets into the text, end exclusive
TAG_PREFIXES = ("B", "I", "E", "S")
JSON_SPACE = " \t\r\n"


@dataclass(frozen=True)
class Example:
    path: Path
    line: int
    text: str
    intent: str | None  # the set's own label; None: out of scope (a chat turn without a tool call)
    arguments: dict[str, Any]  # under the set's own slot names
    spans: tuple[RawSpan, ...]  # every span, also a second one of the same slot
    group: str | None = None  # SMP2019's domain: the middle part of the function name


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(path, None, "file", "missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, None, "encoding", f"not UTF-8: {exc.reason}") from exc
    # split on "\n" only: str.splitlines would also break on separators that occur inside utterances
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def check_tag(tag: str, path: Path, line: int, field: str) -> None:
    prefix, sep, slot = tag.partition("-")
    if tag != "O" and not (sep and prefix in TAG_PREFIXES and slot):
        raise InputError(path, line, field, f"{tag!r} is not O or B-/I-/E-/S-<slot>")


def tag_chunks(tags: list[str]) -> list[tuple[str, int, int]]:
    """(slot, first token, end token) per entity. Lenient like conlleval and seqeval's default: an I- or E- that
    does not continue an entity of its slot starts one; E- and S- close theirs."""
    chunks: list[list[Any]] = []
    current: list[Any] | None = None
    for index, tag in enumerate(tags):
        if tag == "O":
            current = None
            continue
        prefix, _, slot = tag.partition("-")
        if prefix in ("B", "S") or current is None or current[0] != slot:
            current = [slot, index, index + 1]
            chunks.append(current)
        else:
            current[2] = index + 1
        if prefix in ("E", "S"):
            current = None
    return [(slot, first, end) for slot, first, end in chunks]


def join_tokens(tokens: list[str], chunks: list[tuple[str, int, int]], sep: str) -> tuple[str, tuple[RawSpan, ...]]:
    starts: list[int] = []
    position = 0
    for token in tokens:
        starts.append(position)
        position += len(token) + len(sep)
    spans = tuple((slot, starts[first], starts[end - 1] + len(tokens[end - 1])) for slot, first, end in chunks)
    return sep.join(tokens), spans


def first_values(text: str, spans: tuple[RawSpan, ...]) -> dict[str, str]:
    """A slot spanned twice keeps its first span as the argument, as `Record.span_text` and the slot metric do."""
    values: dict[str, str] = {}
    for slot, start, end in spans:
        values.setdefault(slot, text[start:end])
    return values


def _check_same_length(lines: dict[Path, list[str]]) -> None:
    (first, reference), *others = lines.items()
    for path, other in others:
        if len(other) != len(reference):
            short, long_ = (path, first) if len(other) < len(reference) else (first, path)
            line = min(len(other), len(reference)) + 1
            raise InputError(short, line, "line", f"missing: {long_} has {max(len(other), len(reference))} lines, this file {line - 1}")


def read_bio(split_dir: Path, sep: str = " ") -> list[Example]:
    """A JointBERT split folder: `seq.in` (tokens), `seq.out` (one BIO tag per token), `label` (intent), line-aligned."""
    words_path, tags_path, label_path = split_dir / "seq.in", split_dir / "seq.out", split_dir / "label"
    lines = {path: read_lines(path) for path in (words_path, tags_path, label_path)}
    _check_same_length(lines)
    examples = []
    rows = zip(lines[words_path], lines[tags_path], lines[label_path], strict=True)
    for number, (words, tagged, label) in enumerate(rows, start=1):
        tokens, tags = words.split(), tagged.split()
        if not tokens:
            raise InputError(words_path, number, "tokens", "empty utterance")
        if len(tags) != len(tokens):
            raise InputError(tags_path, number, "tags", f"{len(tags)} tags for {len(tokens)} tokens in {words_path}:{number}")
        for index, tag in enumerate(tags):
            check_tag(tag, tags_path, number, f"tags[{index}]")
        if not label.strip():
            raise InputError(label_path, number, "intent", "empty")
        text, spans = join_tokens(tokens, tag_chunks(tags), sep)
        examples.append(Example(words_path, number, text, label.strip(), first_values(text, spans), spans))
    return examples


def conll_fields(line: str, path: Path, number: int) -> tuple[str, str]:
    """(token, tag): the tag is the last field. CAIS writes a space character as a token: the line reads "  O"."""
    fields = line.split()
    if line[0].isspace() and len(fields) == 1:
        return line[0], fields[0]
    if len(fields) < 2:
        raise InputError(path, number, "token", f"tag {fields[0]!r} without a token")
    return fields[0], fields[-1]


def _conll_utterances(path: Path) -> list[tuple[int, list[str], list[str]]]:
    """(first line, tokens, tags) per blank-line separated block."""
    utterances: list[tuple[int, list[str], list[str]]] = []
    starts_new = True
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            starts_new = True
            continue
        token, tag = conll_fields(line, path, number)
        check_tag(tag, path, number, "tag")
        if starts_new:
            utterances.append((number, [], []))
            starts_new = False
        utterances[-1][1].append(token)
        utterances[-1][2].append(tag)
    return utterances


def read_conll(data_path: Path, intent_path: Path, sep: str = "") -> list[Example]:
    """CoNLL columns (`token TAG` per line, a blank line between utterances), intents line by line in a parallel file."""
    utterances = _conll_utterances(data_path)
    intents = read_lines(intent_path)
    if len(intents) != len(utterances):
        line = min(len(intents), len(utterances)) + 1
        raise InputError(intent_path, line, "intent", f"{len(intents)} intents for {len(utterances)} utterances in {data_path}")
    examples = []
    for index, ((number, tokens, tags), label) in enumerate(zip(utterances, intents, strict=True), start=1):
        if not label.strip():
            raise InputError(intent_path, index, "intent", "empty")
        text, spans = join_tokens(tokens, tag_chunks(tags), sep)
        examples.append(Example(data_path, number, text, label.strip(), first_values(text, spans), spans))
    return examples


def json_array_items(path: Path) -> list[tuple[int, Any]]:
    """The items of a JSON array, each with the line it starts on."""
    text = "\n".join(read_lines(path))
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, exc.lineno, "json", exc.msg) from exc
    if not isinstance(document, list):
        raise InputError(path, 1, "json", "expected an array of examples")
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []
    position, line, counted = text.index("[") + 1, 1, 0
    for _ in document:
        while text[position] in JSON_SPACE + ",":
            position += 1
        line += text.count("\n", counted, position)
        counted = position
        value, position = decoder.raw_decode(text, position)
        items.append((line, value))
    return items


def place_values(text: str, values: dict[str, str]) -> tuple[RawSpan, ...]:
    """Spans for the values found in `text`: longest first, each at its first occurrence that overlaps none placed
    before; a value found only inside another (SMP2019: endLoc_city 佛山 in endLoc_poi 佛山大良汽车站) keeps its
    first occurrence, nested."""
    placed: list[RawSpan] = []
    for slot, value in sorted(values.items(), key=lambda item: -len(item[1])):
        starts = occurrences(text, value) if value else []
        free = [s for s in starts if all(s + len(value) <= a or s >= b for _, a, b in placed)]
        if starts:
            start = (free or starts)[0]
            placed.append((slot, start, start + len(value)))
    return tuple(sorted(placed, key=lambda span: (span[1], span[2])))


def _string_field(item: dict[str, Any], key: str, path: Path, line: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, line, key, f"expected a non-empty string, got {value!r}")
    return value


def read_smp2019(path: Path) -> list[Example]:
    """SMP2019 ECDT task 1: a JSON array of {text, domain, intent, slots: {slot: value}}; values are substrings of text."""
    examples = []
    for line, item in json_array_items(path):
        if not isinstance(item, dict):
            raise InputError(path, line, "example", f"expected an object, got {item!r}")
        text = _string_field(item, "text", path, line)
        domain, intent = _string_field(item, "domain", path, line), _string_field(item, "intent", path, line)
        slots = item.get("slots", {})
        if not isinstance(slots, dict):
            raise InputError(path, line, "slots", f"expected an object, got {slots!r}")
        for slot, value in slots.items():
            if not isinstance(value, str) or not value or value not in text:
                raise InputError(path, line, f"slots.{slot}", f"{value!r} is not a substring of the text")
        examples.append(Example(path, line, text, intent, dict(slots), place_values(text, slots), group=domain))
    return examples


def _user_text(messages: list[Any], before: int, path: Path, line: int) -> str:
    for index in range(before - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if not isinstance(content, str) or not content.strip():
                raise InputError(path, line, f"messages[{index}].content", "expected the user's text as a non-empty string")
            return content.strip()
    raise InputError(path, line, "messages", "no user message before the assistant's reply")


def _call_arguments(raw: Any, path: Path, line: int, field: str) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(path, line, field, f"invalid JSON: {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise InputError(path, line, field, f"expected a JSON object, got {raw!r}")
    for key, value in raw.items():
        # the project's parameter types: strings (copied or enum), integers, booleans
        if not isinstance(value, str | int) or (isinstance(value, str) and not value.strip()):
            raise InputError(path, line, f"{field}.{key}", f"{value!r}: only non-empty strings, integers and booleans")
    return raw


def _tool_call(messages: list[Any], path: Path, line: int) -> tuple[int, str | None, dict[str, Any]]:
    """(index of the assistant message, function name or None, arguments)."""
    index = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), None)
    if index is None:
        raise InputError(path, line, "messages", "no assistant message")
    calls = messages[index].get("tool_calls") or []
    if not isinstance(calls, list) or len(calls) > 1:
        raise InputError(path, line, f"messages[{index}].tool_calls", "expected at most one tool call per utterance")
    if not calls:
        return index, None, {}
    field = f"messages[{index}].tool_calls[0].function"
    function = calls[0].get("function") if isinstance(calls[0], dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise InputError(path, line, f"{field}.name", "missing")
    return index, function["name"], _call_arguments(function.get("arguments", "{}"), path, line, f"{field}.arguments")


def read_chat(path: Path) -> list[Example]:
    """Chat JSONL, one conversation a line: the last user message before the first assistant message is the utterance;
    the assistant's tool call (name + JSON arguments) is the answer, none means out of scope. String arguments found in
    the text get spans."""
    examples = []
    for number, raw in enumerate(read_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(path, number, "json", exc.msg) from exc
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list):
            raise InputError(path, number, "messages", "expected a list of chat messages")
        index, name, arguments = _tool_call(messages, path, number)
        text = _user_text(messages, index, path, number)
        strings = {k: v for k, v in arguments.items() if isinstance(v, str)}
        examples.append(Example(path, number, text, name, arguments, place_values(text, strings)))
    return examples
