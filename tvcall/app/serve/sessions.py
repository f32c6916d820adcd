"""Conversations with the router, in memory: each session keeps its last executed calls (bounded in number), the
last call it was answered (the context its next command is routed with, for a follow-up such as "再大一点") and
the token of the risky call it holds for confirmation. A session idle past its lifetime is forgotten, and the
oldest sessions make room when there are too many.

Three registry functions are replies about the conversation itself rather than TV features; the router gives
them their meaning within a session: confirm runs the held risky call, cancel drops it, undo runs the inverse of
the last executed call.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
CONFIRM = "dialog.pending_call.confirm"
CANCEL = "dialog.pending_call.cancel"
UNDO = "dialog.last_call.undo"
DIALOG_FUNCTIONS = (CONFIRM, CANCEL, UNDO)


REPLIES = {  # what a dialog reply says when it has nothing to act on, or what it did
    "no_session": ("没有会话：确认、取消和撤销需要请求带上 session", "no session: confirm, cancel and undo need the request's `session`"),
    "nothing_pending": ("这个会话里没有等待确认的操作（或已过期）", "nothing is waiting for confirmation in this session (or it expired)"),
    "cancelled": ("已取消：{name}", "cancelled: {name}"),
    "nothing_done": ("这个会话里没有可以撤销的操作", "nothing to undo in this session"),
    "irreversible": ("{name} 无法撤销", "{name} cannot be undone"),
    "undone": ("已撤销：{name}", "undone: {name}"),
    "failed": ("{name} 没有执行：{why}", "{name} did not run: {why}"),
    "skipped": ("没有执行：前面的 {name} 失败了", "not run: {name} before it failed"),
}


def reply(key: str, lang: str, **values: str) -> str:
    zh, en = REPLIES[key]
    return (zh if lang == "zh" else en).format(**values)


def context_after(previous: tuple[str, dict[str, Any]] | None,
                  answered: list[tuple[str | None, dict[str, Any]]]) -> tuple[str, dict[str, Any]] | None:
    """The context the next command is routed with: the last call answered that is a TV feature (a dialog reply such
    as "确定" or no function at all leaves the conversation where it was)."""
    said = [(name, dict(arguments)) for name, arguments in answered if name is not None and name not in DIALOG_FUNCTIONS]
    return said[-1] if said else previous


@dataclass
class DoneCall:
    name: str
    arguments: dict[str, Any]
    undo: list[dict[str, Any]]  # the calls that take it back ({"name", "arguments"}); empty: nothing can


@dataclass
class Session:
    calls: deque[DoneCall]
    pending_token: str | None = None  # the risky call held for confirmation (its token in `Confirmations`)
    last_answer: tuple[str, dict[str, Any]] | None = None  # (name, arguments) of the last call routed, not a reply
    seen: float = field(default_factory=time.monotonic)


class Sessions:
    def __init__(self, ttl_s: float = 300.0, max_sessions: int = 10_000, max_calls: int = 8) -> None:
        self.ttl_s, self.max_sessions, self.max_calls = ttl_s, max_sessions, max_calls
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session:
        """The session, created when new or expired; using it keeps it alive."""
        now = time.monotonic()
        while self._sessions and next(iter(self._sessions.values())).seen + self.ttl_s <= now:
            self._sessions.popitem(last=False)  # least recently used first: the expired ones lead
        session = self._sessions.pop(session_id, None) or Session(deque(maxlen=self.max_calls))
        session.seen = now
        self._sessions[session_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session
