"""The inference engine's interface: text in, a validated function call out. Every backend implements `Engine.route`."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from tvcall.data.prompt import with_context
from tvcall.functions.registry import Registry


@dataclass
class RouteResult:
    name: str | None
    arguments: dict[str, Any]
    confidence: float
    latency_ms: float
    raw: str  # what the model produced
    errors: list[str] = field(default_factory=list)  # schema violations found after decoding
    stats: dict[str, int] = field(default_factory=dict)
    null_margin: float = math.nan  # "no function" logit minus the best name's at the first name token (unbiased)
    candidates: list[str] = field(default_factory=list)  # the functions most likely meant, best first (if known)

    @property
    def valid(self) -> bool:
        return not self.errors

    def call(self) -> dict[str, Any]:
        return {"name": None} if self.name is None else {"name": self.name, "arguments": self.arguments}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(ABC):
    registry: Registry
    act_threshold: float = 0.0  # the confidence a call needs to be executed, chosen on dev (0: every call acts)
    follows_up: bool = False  # the model was trained on follow-ups: a conversation's text may open with its last call

    @abstractmethod
    def route(self, text: str) -> RouteResult: ...

    def in_context(self, text: str, previous: tuple[str, dict[str, Any]] | None) -> str:
        """The text to route: after the conversation's previous call (name, arguments) when the model was trained on
        follow-ups, else the text alone. The text is made one line: a line of its own that looked like a call would be
        read as the previous call."""
        text = " ".join(text.splitlines())
        if previous is None or not self.follows_up or previous[0] not in self.registry.functions:
            return text
        name, arguments = previous
        return with_context(text, name, self.registry[name].in_parameter_order(arguments))

