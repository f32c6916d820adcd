"""Teacher labels: logged utterances sent to a large model behind any OpenAI-compatible server, with their candidate
functions as `tools`; its calls are kept as proposed labels (source `teacher`) for review and, if asked, training."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tvcall.data.traffic import logged, opened, save_label
from tvcall.errors import InputError
from tvcall.functions.registry import Registry
from tvcall.functions.retrieve import Retriever

CANDIDATE_OBJECTS = 8  # objects retrieved per utterance; their functions are the teacher's tools


@dataclass
class Teacher:
    base_url: str  # ends in /v1
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0

    def call(self, text: str, tools: list[dict[str, Any]]) -> tuple[str | None, dict[str, Any]]:
        """The teacher's call for `text`: (name, arguments), (None, {}) when it calls no tool."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": [{"role": "user", "content": text}], "tools": tools, "tool_choice": "auto",
                "temperature": 0}
        response = httpx.post(f"{self.base_url.rstrip('/')}/chat/completions", json=body, headers=headers, timeout=self.timeout_s)
        if response.status_code != 200:
            raise InputError(self.base_url, None, "teacher", f"HTTP {response.status_code}: {response.text[:200]}")
        message = response.json()["choices"][0]["message"]
        calls = message.get("tool_calls") or []
        if not calls:
            return None, {}
        function = calls[0]["function"]
        arguments = function.get("arguments") or "{}"
        return function["name"], json.loads(arguments) if isinstance(arguments, str) else dict(arguments)


@dataclass
class LabelReport:
    labelled: int = 0
    rejected: int = 0  # the teacher's call did not validate against the registry


def label_traffic(log_path: Path, teacher: Teacher, registry: Registry, retriever: Retriever | None = None,
                  limit: int | None = None) -> LabelReport:
    """Ask the teacher about each logged utterance it has not labelled yet (oldest first); its valid calls are kept."""
    retriever = retriever or Retriever(registry)
    report = LabelReport()
    with opened(log_path) as connection:
        pending = [item for item in logged(connection) if item.teacher is None][:limit]
        for item in pending:
            candidates = retriever.retrieve(item.text, CANDIDATE_OBJECTS).functions
            tools = [registry[name].openai_tool(item.lang) for name in candidates]
            name, arguments = teacher.call(item.text, tools)
            try:
                save_label(connection, registry, item.id, "teacher", name, arguments, labeller=teacher.model)
                report.labelled += 1
            except InputError as exc:
                report.rejected += 1
                print(f"tvcall traffic label: {item.id}: the teacher's call was not kept: {exc}", file=sys.stderr)
    return report


def api_key_from_env(variable: str | None) -> str | None:
    if variable is None:
        return None
    if not os.environ.get(variable):
        raise InputError("--api-key-env", None, variable, "this environment variable is not set")
    return os.environ[variable]
