"""Request and response bodies of the HTTP router (they are its OpenAPI contract)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tvcall.app.serve.sessions import SESSION_ID_PATTERN

MAX_TEXT_CHARS = 512  # a TV command is a sentence; the prompt-token limit is checked by the batcher
TEXT_PATTERN = r"\S"  # at least one non-space character


def check_text(text: str) -> str:
    """Text the engine can take: not blank and encodable (no lone surrogates from a JSON `\\ud800`)."""
    if not text.strip():
        raise ValueError("text is blank")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text is not valid Unicode (lone surrogate)") from exc
    return text


def no_streaming(stream: bool) -> bool:
    if stream:
        raise ValueError("streaming is not supported; ask with stream=false")
    return stream


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS, pattern=TEXT_PATTERN), AfterValidator(check_text)]
Lang = Literal["zh", "en"]


def omitted(description: str) -> Any:
    """An optional response field left out of the JSON when it is None (while `name: null` stays)."""
    return Field(default=None, exclude_if=lambda value: value is None, description=description)


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ErrorDetail(BaseModel):
    type: str
    message: str
    fields: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class RouteRequest(Strict):
    text: Text
    lang: Lang | None = Field(default=None, description="language of messages in `result` (default: guessed from the text)")
    execute: bool = Field(default=False, description="run the call on the TV; risky calls need /v1/confirm")
    session: str | None = Field(default=None, pattern=SESSION_ID_PATTERN,
                                description="a conversation's id (letters, digits, `._:-`, at most 64): with `execute`, "
                                "its calls can be undone and its held risky call confirmed by voice (\"确定\", \"undo that\")")


REQUEST_ID_PATTERN = r"^(req|chatcmpl)-[0-9a-f]{32}$"


class RoutedCall(BaseModel):
    id: str = Field(description="the call's id in the traffic log, for POST /v1/feedback")
    name: str
    arguments: dict[str, Any]
    confidence: float
    risky: bool = Field(default=False, description="the function needs a confirmation before it runs")
    result: dict[str, Any] | None = omitted("what the execution did (only with `execute`)")


class RouteResponse(BaseModel):
    id: str = Field(description="this request's id in the traffic log, for POST /v1/feedback (the first call's)")
    name: str | None = Field(description="the function called (the first, for a compound command), null when the text "
                                         "asks for no function")
    arguments: dict[str, Any]
    confidence: float
    latency_ms: float
    calls: list[RoutedCall] = Field(default_factory=list, description="every call asked for, in order: two or three for a "
                                    "compound command (\"把音量调到20然后切到HDMI2\"), none for no function")
    risky: bool = Field(default=False, description="a function needs a confirmation before it runs (then the whole list waits)")
    result: dict[str, Any] | None = omitted("what the execution did (only with `execute`, never for a risky call)")
    needs_confirmation: bool | None = omitted("true when a risky call was held: confirm it with `confirmation_token`")
    confirmation_token: str | None = omitted("single use, for POST /v1/confirm")
    expires_in_s: float | None = omitted("the token's lifetime")
    needs_clarification: bool | None = omitted("true when `execute` was asked but the call's confidence is under the "
                                               "run's act threshold: nothing ran; ask the user among `candidates`")
    candidates: list[str] | None = omitted("with needs_clarification: the functions most likely meant, best first")


class CallBody(Strict):
    name: str = Field(min_length=1, max_length=128)
    arguments: dict[str, Any] = Field(default_factory=dict)


class FeedbackRequest(Strict):
    id: str = Field(pattern=REQUEST_ID_PATTERN, description="the `id` of a /v1/route answer (or a chat completion)")
    correct: bool = Field(description="whether the answer was the call the user meant")
    call: CallBody | None = Field(default=None, description="with correct=false: the right call (name null: no function)")


class FeedbackResponse(BaseModel):
    id: str
    recorded: Literal[True] = True


class ConfirmRequest(Strict):
    token: str = Field(min_length=1, max_length=128)
    lang: Lang = "en"


class RanCall(BaseModel):
    name: str
    arguments: dict[str, Any]
    result: dict[str, Any]


class ConfirmResponse(BaseModel):
    name: str
    arguments: dict[str, Any]
    result: dict[str, Any]
    calls: list[RanCall] = Field(default_factory=list, description="every call run, in order (a compound command held whole)")


class FunctionList(BaseModel):
    count: int
    tools: list[dict[str, Any]] = Field(description="OpenAI `tools` entries")


class Health(BaseModel):
    status: Literal["ok"]
    functions: int
    queue_depth: int
    max_batch: int


# --- OpenAI chat completions (only what tvcall reads; other fields are accepted and ignored) ----------
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class UserContentPart(ContentPart):
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None


class ContentParts(BaseModel):
    """Helpers shared by every message: the text of a string or of a list of content parts."""

    model_config = ConfigDict(extra="allow", strict=True)
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(p.text for p in self.content if p.type == "text" and p.text)
        return self.content or ""


class UserMessage(ContentParts):
    role: Literal["user"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | Annotated[list[UserContentPart], Field(max_length=4)]


class EarlierCall(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(max_length=128)
    arguments: str = Field(default="{}", max_length=4096)


class EarlierToolCall(BaseModel):
    """A call the assistant made earlier in the conversation: its name must be a registered function."""

    model_config = ConfigDict(extra="allow", strict=True)
    function: EarlierCall


class OtherMessage(ContentParts):
    role: Literal["system", "developer", "assistant", "tool", "function"]
    tool_calls: Annotated[list[EarlierToolCall], Field(max_length=16)] | None = None


ChatMessage = Annotated[UserMessage | OtherMessage, Field(discriminator="role")]


class ChatRequest(BaseModel):
    """The routed text is the last user message; other fields of the OpenAI request are accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: str = "tvcall"
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    tools: list[dict[str, Any]] | None = Field(default=None, description="restricts the answer to these functions")
    tool_choice: str | dict[str, Any] | None = Field(default=None, description='"none": answer without a tool call')
    stream: Annotated[bool, AfterValidator(no_streaming)] = Field(default=False, description="streaming is not supported",
                                                                  json_schema_extra={"enum": [False]})


class ToolFunction(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as a JSON string")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
