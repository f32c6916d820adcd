"""The dataset record and its JSONL file: read with errors that name file, line and field; write atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError, model_validator

from tvcall.errors import InputError

M = TypeVar("M", bound=BaseModel)


class Span(BaseModel):
    slot: str
    start: int
    end: int


class Record(BaseModel):
    id: str
    text: str
    lang: str
    function: str | None  # None: out of scope, the answer is "no function"
    arguments: dict[str, Any] = {}
    spans: list[Span] = []
    template: str | None = None  # the phrasing a synthetic record was filled from (training spreads over them)
    source: str | None = None  # provenance where it is not the folder's own: traffic:review, traffic:teacher

    @model_validator(mode="after")
    def _spans_inside_text(self) -> Record:
        for span in self.spans:
            if not 0 <= span.start < span.end <= len(self.text):
                raise ValueError(f"span {span.slot} [{span.start}, {span.end}) outside the text of length {len(self.text)}")
            if span.slot not in self.arguments:
                raise ValueError(f"span names slot {span.slot!r} that is not an argument")
        if self.function is None and self.arguments:
            raise ValueError("an out-of-scope record (function null) has no arguments")
        return self

    def span_text(self, slot: str) -> str | None:
        for span in self.spans:
            if span.slot == slot:
                return self.text[span.start:span.end]
        return None


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSONL file; bad JSON names the file and line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, number, "json", exc.msg) from exc
            yield number, value


def read_jsonl(path: Path) -> Iterator[Record]:
    return read_models(path, Record)


def read_models(path: Path, model: type[M]) -> Iterator[M]:
    """Each line of a JSONL file as `model`; a line that does not fit names the file, line and field."""
    for number, value in json_lines(path):
        try:
            yield model.model_validate(value)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "record"
            raise InputError(path, number, field, error["msg"]) from exc


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, records: Iterable[Record]) -> int:
    lines = [json.dumps(r.model_dump(exclude={"source"} if r.source is None else None), ensure_ascii=False) for r in records]
    write_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)
