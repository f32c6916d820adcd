"""The traffic log: every answered request and the feedback on it, in SQLite (WAL), for review and retraining.

One writer thread owns the connection, so the event loop never waits on the disk and writes never interleave. A
request is answered only after its row is committed (WAL survives a killed process: a 200 is never lost), but a
write that fails (a full disk, a locked file) is a logged warning and a failed-write count, not a failed request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvcall.data.traffic import connect

log = logging.getLogger("tvcall.traffic")

def new_request_id(prefix: str) -> str:
    """`req-…` for /v1/route, `chatcmpl-…` for a chat completion (`api_models.REQUEST_ID_PATTERN`)."""
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Answered:
    """One answered request as the log keeps it."""

    id: str
    endpoint: str
    text: str
    lang: str | None
    name: str | None
    arguments: dict[str, Any]
    confidence: float
    latency_ms: float
    executed: bool = False
    confirmation: str | None = None
    time: float = field(default_factory=time.time)


class UnknownRequest(KeyError):
    """Feedback for an id the log has no row for."""


class TrafficLog:
    """The router's writer: `record`, `mark` and `add_feedback` run on one thread; each is one transaction."""

    def __init__(self, path: Path, run: str | None = None, data_version: str | None = None) -> None:
        self.path, self.run, self.data_version = Path(path), run, data_version
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvcall-traffic")
        self._connection = self._writer.submit(connect, self.path).result()

    async def _run(self, what: str, function: Any, *args: Any) -> bool:
        """Run a write on the writer thread; False (with a warning) when the disk or the file refused it."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, function, *args)
            return True
        except sqlite3.Error as exc:
            log.warning("traffic log %s: %s failed: %s", self.path, what, exc)
            return False

    async def record(self, answered: Answered) -> bool:
        return await self._run("recording a request", self._insert, answered)

    async def mark(self, request_id: str, executed: bool, confirmation: str | None) -> bool:
        """A request's execution and confirmation outcome, once known (a risky call confirmed later)."""
        return await self._run("marking a request", self._update, request_id, executed, confirmation)

    async def add_feedback(self, request_id: str, correct: bool, name: str | None, arguments: dict[str, Any] | None) -> None:
        """Raises `UnknownRequest` for an id never logged, `sqlite3.Error` when the write fails (nothing half-written)."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self._insert_feedback, request_id, correct, name, arguments)

    def _insert(self, a: Answered) -> None:
        self._connection.execute(
            "INSERT INTO requests (id, time, endpoint, text, lang, run, data_version, name, arguments, confidence, latency_ms,"
            " executed, confirmation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a.id, a.time, a.endpoint, a.text, a.lang, self.run, self.data_version, a.name,
             json.dumps(a.arguments, ensure_ascii=False), a.confidence, a.latency_ms, int(a.executed), a.confirmation))

    def _update(self, request_id: str, executed: bool, confirmation: str | None) -> None:
        self._connection.execute("UPDATE requests SET executed = ?, confirmation = ? WHERE id = ?",
                                 (int(executed), confirmation, request_id))

    def _insert_feedback(self, request_id: str, correct: bool, name: str | None, arguments: dict[str, Any] | None) -> None:
        with self._connection:  # one transaction: the check and the insert
            self._connection.execute("BEGIN IMMEDIATE")
            if self._connection.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone() is None:
                raise UnknownRequest(request_id)
            self._connection.execute(
                "INSERT INTO feedback (request_id, time, correct, name, arguments) VALUES (?, ?, ?, ?, ?)",
                (request_id, time.time(), int(correct), name, None if arguments is None else json.dumps(arguments, ensure_ascii=False)))

    def close(self) -> None:
        self._writer.submit(self._connection.close).result()
        self._writer.shutdown()
