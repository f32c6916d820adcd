"""`tvcall traffic review`: the review queue in a terminal, one logged request at a time, most needed first.

A reviewer accepts the router's call, the teacher's, "no function", or types the right call; every decision is
validated against the registry before it is saved (`save_label`, the same path the demo's Review tab takes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any, TextIO

from tvcall.data.traffic import Logged, logged, review_queue, save_label
from tvcall.errors import InputError
from tvcall.functions.registry import Registry

HELP = ("a: the router's call  t: the teacher's  n: no function  c NAME {JSON}: this call  s: skip  q: quit")


def describe(item: Logged, position: int, total: int) -> str:
    def call(name: str | None, arguments: dict[str, Any]) -> str:
        return "no function" if name is None else f"{name} {json.dumps(arguments, ensure_ascii=False)}"

    lines = [f"[{position} of {total}] {item.text}", f"  router:  {call(item.name, item.arguments)} (confidence {item.confidence:.2f})"]
    if item.teacher is not None:
        lines.append(f"  teacher: {call(item.teacher['name'], item.teacher['arguments'])}")
    if item.feedback_wrong:
        lines.append("  feedback: the client said this answer was wrong")
    return "\n".join(lines)


def decision(answer: str, item: Logged) -> tuple[str | None, dict[str, Any]]:
    """The call a reviewer's answer stands for; raises ValueError for an answer it cannot read."""
    command, _, rest = answer.strip().partition(" ")
    if command == "a":
        return item.name, item.arguments
    if command == "t":
        if item.teacher is None:
            raise ValueError("no teacher label for this request")
        return item.teacher["name"], item.teacher["arguments"]
    if command == "n":
        return None, {}
    if command == "c":
        name, _, arguments = rest.strip().partition(" ")
        if not name:
            raise ValueError("c needs a function name, then its arguments as JSON")
        parsed = json.loads(arguments) if arguments.strip() else {}
        if not isinstance(parsed, dict):
            raise ValueError("the arguments must be a JSON object")
        return name, parsed
    raise ValueError(f"unknown answer {answer.strip()!r}")


def review_terminal(connection: sqlite3.Connection, registry: Registry, answers: Iterable[str], out: TextIO,
                    reviewer: str = "terminal") -> int:
    """Walk the queue with `answers` (lines from the reviewer); the number of labels saved."""
    queue = review_queue(logged(connection))
    saved = 0
    lines = iter(answers)
    for position, item in enumerate(queue, start=1):
        print(describe(item, position, len(queue)), file=out)
        while True:
            print(f"  {HELP}\n> ", end="", file=out, flush=True)
            answer = next(lines, "q").strip()
            if answer == "q":
                return saved
            if answer == "s":
                break
            try:
                save_label(connection, registry, item.id, "review", *decision(answer, item), labeller=reviewer)
                saved += 1
                break
            except (ValueError, InputError) as exc:  # json.JSONDecodeError is a ValueError
                print(f"  not saved: {exc}", file=out)
    return saved
