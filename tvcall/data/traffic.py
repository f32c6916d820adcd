"""The traffic log as data: its SQLite schema, the labels proposed for logged utterances (a teacher's, a reviewer's),
the review queue, and the export of labelled traffic as a dataset folder that `tvcall train --data` takes.

`tvcall serve` writes the log (tvcall/app/serve/traffic.py); everything here reads it or adds labels to it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from tvcall.data.record import Record, Span, write_atomic, write_jsonl
from tvcall.data.split_names import split_file
from tvcall.data.splits import MANIFEST
from tvcall.errors import InputError
from tvcall.functions.registry import Registry
from tvcall.functions.retrieve import char_ngrams
from tvcall.functions.validate import call_errors

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
  id TEXT PRIMARY KEY,
  time REAL NOT NULL,            -- seconds since the epoch, when the answer was ready
  endpoint TEXT NOT NULL,        -- /v1/route or /v1/chat/completions
  text TEXT NOT NULL,
  lang TEXT,
  run TEXT,                      -- the run folder that answered
  data_version TEXT,             -- the data version that run was trained on
  name TEXT,                     -- the routed function; NULL: no function
  arguments TEXT NOT NULL,       -- JSON object
  confidence REAL,
  latency_ms REAL,
  executed INTEGER NOT NULL DEFAULT 0,
  confirmation TEXT              -- a risky call's outcome: held, confirmed (NULL: not risky, or not executed)
);
CREATE TABLE IF NOT EXISTS feedback (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  request_id TEXT NOT NULL REFERENCES requests(id),
  time REAL NOT NULL,
  correct INTEGER NOT NULL,      -- 1: the answer was right; 0: it was wrong
  name TEXT,                     -- with correct = 0, the right call when the client gave one
  arguments TEXT
);
CREATE INDEX IF NOT EXISTS feedback_by_request ON feedback(request_id);
CREATE TABLE IF NOT EXISTS labels (
  request_id TEXT NOT NULL REFERENCES requests(id),
  source TEXT NOT NULL,          -- teacher (proposed by a model) or review (decided by a person)
  name TEXT,                     -- NULL: no function
  arguments TEXT NOT NULL,
  spans TEXT NOT NULL,           -- JSON list of {slot, start, end} over the request's text
  labeller TEXT,                 -- the teacher model, or the reviewer
  time REAL NOT NULL,
  PRIMARY KEY (request_id, source)
);
"""
TYPICAL_NEIGHBOURS = 10  # how typical a command is: its similarity to this many nearest requests
TYPICAL_REFERENCE = 5000  # ... among a sample of at most this many
BUSY_TIMEOUT_MS = 200  # a locked file waits this long, then the write is given up (routing never waits longer)
Source = Literal["teacher", "review"]


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    """A connection to the log at `path` in WAL mode with the schema in place (`create`: made on first use)."""
    if not create and not Path(path).exists():
        raise InputError(path, None, "traffic", "no traffic log here (tvcall serve writes RUN/traffic.sqlite)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable across a killed process, fsync per checkpoint
    connection.executescript(SCHEMA)
    return connection


@contextmanager
def opened(path: Path) -> Iterator[sqlite3.Connection]:
    connection = connect(path, create=False)
    try:
        yield connection
    finally:
        connection.close()


@dataclass
class Logged:
    """A logged request with what is known about it: the router's call, feedback, and the labels so far."""

    id: str
    time: float
    text: str
    lang: str
    name: str | None
    arguments: dict[str, Any]
    confidence: float
    feedback_wrong: bool  # some client said the answer was wrong
    teacher: dict[str, Any] | None  # {"name", "arguments"} a teacher proposed
    reviewed: dict[str, Any] | None  # {"name", "arguments", "spans"} a reviewer decided

    @property
    def teacher_disagrees(self) -> bool:
        return self.teacher is not None and (self.teacher["name"], self.teacher["arguments"]) != (self.name, self.arguments)


def _labels(connection: sqlite3.Connection, source: Source) -> dict[str, dict[str, Any]]:
    rows = connection.execute("SELECT request_id, name, arguments, spans, labeller FROM labels WHERE source = ?", (source,))
    return {r["request_id"]: {"name": r["name"], "arguments": json.loads(r["arguments"]), "spans": json.loads(r["spans"]),
                              "labeller": r["labeller"]} for r in rows}


def logged(connection: sqlite3.Connection) -> list[Logged]:
    """Every logged request, oldest first."""
    wrong = {r[0] for r in connection.execute("SELECT DISTINCT request_id FROM feedback WHERE correct = 0")}
    teacher, reviewed = _labels(connection, "teacher"), _labels(connection, "review")
    return [Logged(r["id"], r["time"], r["text"], r["lang"] or "en", r["name"], json.loads(r["arguments"]), r["confidence"] or 0.0,
                   r["id"] in wrong, teacher.get(r["id"]), reviewed.get(r["id"]))
            for r in connection.execute("SELECT * FROM requests ORDER BY time, id")]


def review_queue(items: list[Logged]) -> list[Logged]:
    """What most needs a person first: a client said it was wrong, then a teacher disagrees with the router, then
    the router's doubtful answers, taken in turn across the functions it answered (`doubt_in_turn`); reviewed
    requests are done."""
    flagged: list[Logged] = []
    doubtful: list[Logged] = []
    for item in items:
        if item.reviewed is None:
            (flagged if item.feedback_wrong or item.teacher_disagrees else doubtful).append(item)
    flagged.sort(key=lambda item: (not item.feedback_wrong, not item.teacher_disagrees, item.confidence, item.time))
    return flagged + doubt_in_turn(doubtful, typicality([item.text for item in items]))


def doubt_in_turn(items: list[Logged], typical: dict[str, float] | None = None) -> list[Logged]:
    """The most doubtful answer of each function the router answered (and of "no function"), then the next of
    each, and so on. Doubt is (1 - confidence) times how typical the command is of the traffic: a correction of a
    common command teaches more than one of an outlier. In turn across functions, since a call's confidence is a
    product over its choices and by confidence alone the functions with the most slots would take most reviews
    (docs/traffic.md)."""
    def doubt(item: Logged) -> float:
        return (1.0 - item.confidence) * (typical or {}).get(item.text, 1.0)

    by_function: dict[str | None, list[Logged]] = {}
    for item in sorted(items, key=lambda item: (-doubt(item), item.time)):
        by_function.setdefault(item.name, []).append(item)
    groups = list(by_function.values())  # in the order of each function's most doubtful answer
    return [group[rank] for rank in range(max(map(len, groups), default=0)) for group in groups if rank < len(group)]


def typicality(texts: list[str], neighbours: int = TYPICAL_NEIGHBOURS, reference: int = TYPICAL_REFERENCE,
               seed: int = 0) -> dict[str, float]:
    """How common each text's kind of command is in the traffic: the mean cosine similarity of its character
    n-grams to its `neighbours` nearest texts among a seeded sample of at most `reference` of them (information
    density, Settles & Craven 2008). The sample bounds the cost on a long log."""
    unique = list(dict.fromkeys(texts))
    if len(unique) < 2:
        return {text: 1.0 for text in unique}
    vectors = char_ngrams().fit_transform(texts)
    sample = np.random.default_rng(seed).permutation(len(texts))[:reference]
    first_row = {text: row for row, text in reversed(list(enumerate(texts)))}
    rows = [first_row[text] for text in unique]
    typical: dict[str, float] = {}
    for start in range(0, len(rows), 2048):
        chunk = rows[start:start + 2048]
        similarity = (vectors[chunk] @ vectors[sample].T).toarray()
        similarity[np.asarray(chunk)[:, None] == sample[None, :]] = -1.0  # a text is not its own neighbour
        k = min(neighbours, similarity.shape[1] - 1)
        nearest = -np.sort(-similarity, axis=1)[:, :k]
        typical.update((texts[row], float(value)) for row, value in zip(chunk, nearest.clip(min=0).mean(axis=1), strict=True))
    return typical


def value_spans(text: str, arguments: dict[str, Any]) -> list[Span]:
    """Spans for the string values said verbatim in the text (the first occurrence of each)."""
    spans = []
    for slot, value in arguments.items():
        if isinstance(value, str) and value and value in text:
            start = text.index(value)
            spans.append(Span(slot=slot, start=start, end=start + len(value)))
    return spans


def check_label(registry: Registry, text: str, name: str | None, arguments: dict[str, Any], spans: list[Span]) -> list[str]:
    """Why a label cannot be kept: the call must validate against the registry, and each span lie inside the text
    and name an argument (as a dataset record must)."""
    errors = [f"call: {e}" for e in call_errors(registry, name, arguments)]
    try:
        Record(id="check", text=text, lang="en", function=name, arguments=arguments, spans=spans)
    except ValidationError as exc:
        errors += [f"spans: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
    return errors


def save_label(connection: sqlite3.Connection, registry: Registry, request_id: str, source: Source, name: str | None,
               arguments: dict[str, Any], spans: list[Span] | None = None, labeller: str | None = None) -> None:
    """Keep a label for a logged request (replacing the same source's earlier one); a bad one raises `InputError`
    naming the field, and nothing is written."""
    row = connection.execute("SELECT text FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        raise InputError("traffic", None, "id", f"no logged request {request_id}")
    spans = value_spans(row["text"], arguments) if spans is None else spans
    errors = check_label(registry, row["text"], name, arguments, spans)
    if errors:
        raise InputError("traffic", None, request_id, "; ".join(errors))
    connection.execute("INSERT OR REPLACE INTO labels (request_id, source, name, arguments, spans, labeller, time) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (request_id, source, name, json.dumps(arguments, ensure_ascii=False),
                        json.dumps([s.model_dump() for s in spans]), labeller, time.time()))


SPLIT_SHARES = {"train": 0.7, "dev": 0.1, "test": 0.2}  # by time: the newest traffic is the test split


def split_shares(text: str) -> dict[str, float]:
    """`0.7,0.1,0.2` as train, dev and test shares: three numbers from 0 to 1 that add up to 1."""
    try:
        shares = [float(part) for part in text.split(",")]
    except ValueError:
        shares = []
    if len(shares) != len(SPLIT_SHARES) or any(not 0 <= share <= 1 for share in shares) or abs(sum(shares) - 1) > 1e-6:
        raise InputError("--split-shares", None, text, "needs three shares from 0 to 1 for train,dev,test that add up to 1")
    return dict(zip(SPLIT_SHARES, shares, strict=True))


def export(path: Path, out: Path, include_teacher: bool = False, shares: dict[str, float] = SPLIT_SHARES) -> dict[str, Any]:
    """Reviewed requests (and, with `include_teacher`, those only a teacher labelled) as a dataset folder: records
    with spans and provenance, split by time (oldest to train, newest to test, by `shares`), and a manifest with
    its version."""
    with opened(path) as connection:
        items = logged(connection)
    records: list[Record] = []
    for item in items:
        label, source = (item.reviewed, "review") if item.reviewed else (item.teacher, "teacher") if include_teacher else (None, "")
        if label is None:
            continue
        spans = [Span(**s) for s in label["spans"]] if "spans" in label and label["spans"] else value_spans(item.text, label["arguments"])
        records.append(Record(id=item.id, text=item.text, lang=item.lang, function=label["name"], arguments=label["arguments"],
                              spans=spans, source=f"traffic:{source}"))
    splits: dict[str, list[Record]] = {}
    start = 0
    for index, (split, share) in enumerate(shares.items()):
        end = len(records) if index == len(shares) - 1 else start + round(share * len(records))
        splits[split], start = records[start:end], end
    files = {}
    for split, chosen in splits.items():
        file = split_file(out, split)
        write_jsonl(file, chosen)
        files[split] = {"records": len(chosen), "out_of_scope": sum(r.function is None for r in chosen),
                        "functions": len({r.function for r in chosen if r.function}),
                        "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    manifest: dict[str, Any] = {"traffic": {"log": str(path), "include_teacher": include_teacher, "split_shares": shares},
                                "files": files}
    manifest["version"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest
