"""OpenAI chat-completions wire format (the subset LiveAlign serves), plus its extras.

Field names and shapes follow OpenAI's API so the official SDK works unchanged;
unknown request fields are ignored, as OpenAI-compatible servers commonly do. Every field
is bounded (``serving.limits``): a request the engine or the store could not take is a 400
naming the field, never a failure further down.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from serving.limits import LIMITS
from streaming.events import ChatMessage


def loads(body: bytes) -> Any:
    """A request body's JSON, strictly (``ValueError`` saying where it is wrong): valid
    UTF-8 without lone surrogates ("\\ud800", which the stdlib parser lets through and
    nothing downstream can encode: the tokenizer, the user hash, the event's JSON), no NaN
    or Infinity, nesting bounded (the stdlib parser recurses until Python gives up)."""
    return pydantic_core.from_json(body, allow_inf_nan=False)


Name = Annotated[str, Field(max_length=LIMITS.max_name_chars)]


def _no_nul(text: str) -> str:
    # Every message is logged, and no store column (PostgreSQL text) can hold a NUL: the
    # processor would dead-letter the whole interaction, and its feedback with it.
    if "\x00" in text:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return text


MessageText = Annotated[
    str,
    Field(max_length=LIMITS.max_message_chars, json_schema_extra={"pattern": "^[^\\u0000]*$"}),
    AfterValidator(_no_nul),
]
StopString = Annotated[str, Field(min_length=1, max_length=LIMITS.max_stop_chars)]
Tokens = Annotated[int, Field(ge=1, le=LIMITS.max_tokens)]
# It becomes a response header, a Kafka key and a store column: short, plain ASCII.
ConversationId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=LIMITS.max_conversation_id_chars,
        pattern=LIMITS.conversation_id_pattern,
    ),
]


def _text_or_list(value: Any) -> str:
    # A union told apart by the value's type: a refusal names only the branch the value
    # took ("content.text: ..."), not every member of the union.
    return "text" if isinstance(value, str) else "list"


Stop = Annotated[
    Annotated[StopString, Tag("text")]
    | Annotated[list[StopString], Field(max_length=LIMITS.max_stop), Tag("list")],
    Discriminator(_text_or_list),
]


class ContentPart(BaseModel):
    type: Literal["text"]
    text: MessageText


Content = Annotated[
    Annotated[MessageText, Tag("text")]
    | Annotated[list[ContentPart], Field(max_length=LIMITS.max_content_parts), Tag("list")],
    Discriminator(_text_or_list),
]


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Content | None = None
    name: Name | None = None

    @model_validator(mode="after")
    def _bounded(self) -> RequestMessage:
        if len(self.text()) > LIMITS.max_message_chars:
            raise ValueError(f"content: at most {LIMITS.max_message_chars} characters")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. ``conversation_id`` is LiveAlign's extension
    (send it with the SDK's ``extra_body``); the header ``X-Conversation-Id`` also works."""

    model_config = ConfigDict(extra="ignore")

    model: Name
    messages: Annotated[list[RequestMessage], Field(min_length=1, max_length=LIMITS.max_messages)]
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = Field(
        None, description="Unset: the model's own default (its generation_config.json)."
    )
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = Field(
        None, description="Unset: the model's own default (its generation_config.json)."
    )
    n: Annotated[int, Field(ge=1, le=1, description="Only n=1 is served.")] = 1
    stop: Stop | None = None
    seed: Annotated[int, Field(ge=LIMITS.seed_min, le=LIMITS.seed_max)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=LIMITS.max_user_chars)] | None = None
    conversation_id: ConversationId | None = None

    @field_validator("messages")
    @classmethod
    def _has_content(cls, messages: list[RequestMessage]) -> list[RequestMessage]:
        if not any(m.text().strip() for m in messages):
            raise ValueError("messages: at least one message needs non-empty content")
        return messages

    def wanted_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat_messages(self) -> list[ChatMessage]:
        return [ChatMessage(role=m.role, content=m.text()) for m in self.messages]


class LiveAlignInfo(BaseModel):
    """LiveAlign's extra top-level object: what a client needs to send feedback."""

    response_id: str
    conversation_id: str
    adapter: str
    arm: str
    feedback_token: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    livealign: LiveAlignInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    livealign: LiveAlignInfo | None = None

    def sse(self) -> str:
        return f"data: {self.model_dump_json(exclude_none=True)}\n\n"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "livealign"
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    """Raised anywhere in a handler; rendered as an OpenAI-style error."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers  # e.g. WWW-Authenticate on a 401
        self.body = ErrorResponse(
            error=ErrorBody(message=message, type=type_, code=code, param=param)
        )

    def json(self) -> dict[str, Any]:
        return self.body.model_dump()
