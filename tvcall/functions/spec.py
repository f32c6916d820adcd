"""The function spec: one callable TV function with its JSON-schema parameters and how people say it."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

LANGS: tuple[str, ...] = ("zh", "en")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
IDENT_RE = re.compile(r"^[a-z][a-z0-9_]*$")

Risk = Literal["normal", "confirm"]


class Surface(BaseModel):
    """Ways a user says one thing, per language."""

    zh: list[str]
    en: list[str]

    def forms(self, lang: str) -> list[str]:
        return self.zh if lang == "zh" else self.en


class FunctionSpec(BaseModel):
    name: str
    domain: str
    description: Surface = Field(description="one description per language (lists of length 1)")
    parameters: dict[str, Any]
    risk: Risk = "normal"
    source: str = Field(description="catalog file the function was expanded from")
    # How utterances are generated: kind templates (e.g. "level.set") with object/attribute phrases,
    # or the function's own templates.
    template_key: str | None = None
    object_phrases: Surface | None = None
    attribute_phrases: Surface | None = None
    templates: Surface | None = None

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        return self.parameters.get("properties", {})

    def in_parameter_order(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """`arguments` in the order of the schema's properties, the order in which the decoder offers the keys (a
        training answer in any other order teaches keys the decoder has already ruled out); unknown keys last."""
        order = {key: index for index, key in enumerate(self.properties)}
        return dict(sorted(arguments.items(), key=lambda item: order.get(item[0], len(order))))

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))

    def own_templates(self, lang: str, split: str) -> list[str]:
        """The function's own templates for a split: the last one per language is held out for dev/test."""
        if self.templates is None:
            return []
        forms = self.templates.forms(lang)
        return forms[:-1] if split == "train" else forms[-1:]

    def openai_tool(self, lang: str = "en") -> dict[str, Any]:
        """The OpenAI `tools` entry; project-private `x-` keywords are dropped."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description.forms(lang)[0],
                "parameters": strip_private_keywords(self.parameters),
            },
        }


def strip_private_keywords(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: strip_private_keywords(v) for k, v in schema.items() if not k.startswith("x-")}
    if isinstance(schema, list):
        return [strip_private_keywords(v) for v in schema]
    return schema
