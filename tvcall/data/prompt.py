"""The one prompt renderer shared by training, eval and serving.

The prompt is the base model's own chat template (system + user turn, generation prompt); the user turn
carries the command and the candidate objects retrieved for it (`tvcall.functions.retrieve`). In a conversation the
command is preceded by a line with the previous call, in the answer's own JSON (`with_context`): a follow-up such as
"那主演呢" reads its object and carried values from there. The answer is
the call as JSON, `{"name": "dom.obj.act", "arguments": {...}}` or `{"name": null}`, tokenised segment by
segment (`answer_segments`), so that the constrained decoder, which walks the same segments, produces
exactly the token sequences the model was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

# Recorded in a run's config.yaml: a model answers in the format it was trained on. 2: the empty system turn and
# compact JSON below; 1 (runs before it was recorded): a one-line instruction and JSON with spaces.
PROMPT_FORMAT = 2

# Empty, not absent: without a system turn SmolLM2's template inserts its own 16-token one. Every prompt token is
# trained on at every step (measured: 35 prompt tokens with a 9-token instruction, 26 without), and the
# fine-tuned model needs no instruction to know its one task.
SYSTEM_PROMPT = ""

# Compact JSON (no spaces after separators): the answer's fixed scaffolding is 4 tokens shorter per call
# with an argument, and that scaffolding is a fifth of a training sequence.
NAME_OPEN = '{"name":'
ARGS_OPEN = ',"arguments":{'
ARGS_CLOSE = "}}"


CONTEXT_SEPARATOR = "\n"  # between the previous call's line and the command


class Tokenizer(Protocol):
    eos_token_id: int | None

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def user_turn(text: str, options: Sequence[str] = ()) -> str:
    """The command, then the retrieved candidate objects ("domain.object label"), one per line."""
    return text if not options else text + "\n" + "\n".join(f"- {o}" for o in options)


def messages(text: str, options: Sequence[str] = ()) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_turn(text, options)}]


def prompt_ids(tokenizer: Tokenizer, text: str, options: Sequence[str] = ()) -> list[int]:
    ids = tokenizer.apply_chat_template(messages(text, options), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
        ids = ids["input_ids"]
    return list(ids)


def name_segment(name: str | None) -> str:
    return json.dumps(name)


def key_segment(key: str, first: bool) -> str:
    return ("" if first else ",") + json.dumps(key) + ":"


def value_segment(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def answer_segments(name: str | None, arguments: dict[str, Any]) -> list[str]:
    """The answer as the decoder builds it; `arguments` must be in the function's parameter order."""
    if name is None:
        return [NAME_OPEN, name_segment(None), "}"]
    segments = [NAME_OPEN, name_segment(name), ARGS_OPEN]
    for index, (key, value) in enumerate(arguments.items()):
        segments += [key_segment(key, index == 0), value_segment(value)]
    return [*segments, ARGS_CLOSE]


def answer_text(name: str | None, arguments: dict[str, Any]) -> str:
    return "".join(answer_segments(name, arguments))


def with_context(text: str, name: str, arguments: dict[str, Any]) -> str:
    """The command as routed in a conversation: the previous call's answer line, then the command."""
    return answer_text(name, arguments) + CONTEXT_SEPARATOR + text


def split_context(text: str) -> tuple[dict[str, Any] | None, str]:
    """(the previous call {"name", "arguments"} if `text` opens with one, the command)."""
    line, separator, rest = text.partition(CONTEXT_SEPARATOR)
    if not separator or not line.startswith(NAME_OPEN):
        return None, text
    try:
        call = json.loads(line)
    except json.JSONDecodeError:
        return None, text
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(call.get("arguments", {}), dict):
        return None, text
    return {"name": call["name"], "arguments": call.get("arguments", {})}, rest


def segment_ids(tokenizer: Tokenizer, segment: str) -> list[int]:
    return list(tokenizer.encode(segment, add_special_tokens=False))


def answer_ids(tokenizer: Tokenizer, name: str | None, arguments: dict[str, Any]) -> list[int]:
    ids = [t for seg in answer_segments(name, arguments) for t in segment_ids(tokenizer, seg)]
    return [*ids, tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids


def training_example(tokenizer: Tokenizer, text: str, name: str | None, arguments: dict[str, Any],
                     options: Sequence[str] = ()) -> dict[str, list[int]]:
    """input_ids with a completion mask: loss on the assistant answer only."""
    prompt = prompt_ids(tokenizer, text, options)
    answer = answer_ids(tokenizer, name, arguments)
    return {"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)}
