"""OpenAI chat-completions wire format (the subset LiveAlign serves), plus its extras.

Field names and shapes follow OpenAI's API so the official SDK works unchanged;
unknown request fields are ignored, as OpenAI-compatible servers commonly do.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from streaming.events import ChatMessage


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

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

    model: str
    messages: Annotated[list[RequestMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = Field(
        None, description="Unset: the model's own default (its generation_config.json)."
    )
    top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="Unset: the model's own default (its generation_config.json)."
    )
    n: Annotated[int, Field(ge=1, le=1, description="Only n=1 is served.")] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    conversation_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None

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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(
            error=ErrorBody(message=message, type=type_, code=code, param=param)
        )

    def json(self) -> dict[str, Any]:
        return self.body.model_dump()
