"""Chat completion handling: validate, generate with vLLM, answer, log the interaction.

Kept free of Ray so it reads (and tests) as plain async Python; ``serving.app`` hosts
it in a Ray Serve deployment.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vllm import SamplingParams
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind

from monitoring import metrics as m
from serving.engine import Engine
from serving.protocol import (
    APIError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    LiveAlignInfo,
    ResponseMessage,
    Usage,
)
from serving.tokens import PUBLIC
from streaming.events import BASE_ADAPTER, InteractionEvent

STABLE_ARM = "stable"
CANARY_ARM = "canary"
# An operator's pinned request: recorded apart, so the canary's analysis (which counts
# only "canary" and "stable") is not skewed by hand-picked debugging traffic.
PINNED_ARM = "pinned"


@dataclass(frozen=True)
class Route:
    """Which adapter answers a conversation, and as which canary arm."""

    adapter: str = BASE_ADAPTER
    arm: str = STABLE_ARM
    lora: LoRARequest | None = None


@dataclass
class Turn:
    """One request's state while it is generated."""

    request: ChatCompletionRequest
    info: LiveAlignInfo
    route: Route
    prompt_ids: list[int]
    params: SamplingParams
    user_hash: str | None
    principal: str = PUBLIC  # serving.auth: who vouched for the user
    started: float = field(default_factory=time.perf_counter)
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    text: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None
    ttft: float | None = None
    release: Callable[[], None] = lambda: None  # frees the adapter slot when the turn ends

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.route.adapter, self.route.arm, str(self.request.stream).lower())

    def usage(self) -> Usage:
        n = len(self.prompt_ids)
        return Usage(
            prompt_tokens=n,
            completion_tokens=self.completion_tokens,
            total_tokens=n + self.completion_tokens,
        )


def new_response_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def sampling_params(
    req: ChatCompletionRequest,
    prompt_len: int,
    max_model_len: int,
    default_max: int,
    defaults: Mapping[str, float] | None = None,
) -> SamplingParams:
    """vLLM sampling parameters, or a 400 that says which limit the request breaks.
    What the request leaves unset comes from ``defaults`` (the model's own, see
    ``engine.sampling_defaults``), then vLLM's."""
    room = max_model_len - prompt_len
    if room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens; "
            f"your messages use {prompt_len}.",
            code="context_length_exceeded",
            param="messages",
        )
    wanted = req.wanted_max_tokens()
    if wanted is not None and wanted > room:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens; your messages "
            f"use {prompt_len} and you asked for {wanted} more (at most {room} fit).",
            code="context_length_exceeded",
            param="max_tokens",
        )
    try:
        return SamplingParams(
            max_tokens=wanted or min(default_max, room),
            **_sampling(req, defaults or {}),
            stop=req.stop,
            seed=req.seed,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            output_kind=RequestOutputKind.DELTA,
        )
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc


def _sampling(req: ChatCompletionRequest, defaults: Mapping[str, float]) -> dict[str, Any]:
    """The request's temperature and top_p; where it sets neither, the model's defaults
    (a request setting one of them is taken to mean the other as vLLM defaults it)."""
    if req.temperature is None and req.top_p is None:
        return {k: v for k, v in defaults.items() if k in ("temperature", "top_p", "top_k")}
    given = {"temperature": req.temperature, "top_p": req.top_p}
    return {k: v for k, v in given.items() if v is not None}


async def run(engine: Engine, turn: Turn) -> AsyncIterator[str]:
    """Generate, yielding text deltas and filling in ``turn`` as it goes."""
    m.IN_FLIGHT.labels(turn.route.adapter).inc()
    request_id = turn.info.response_id
    finished = False
    try:
        async for out in engine.generate(turn.prompt_ids, turn.params, request_id, turn.route.lora):
            completion = out.outputs[0]
            if turn.ttft is None:
                turn.ttft = time.perf_counter() - turn.started
            turn.completion_tokens += len(completion.token_ids)
            if completion.finish_reason is not None:
                turn.finish_reason = completion.finish_reason
            if completion.text:
                turn.text.append(completion.text)
                yield completion.text
        finished = True
    finally:
        m.IN_FLIGHT.labels(turn.route.adapter).dec()
        if not finished:  # client went away or the task was cancelled: free the slot
            turn.finish_reason = turn.finish_reason or "abort"
            await engine.abort(request_id)


def decode_speed(completion_tokens: int, decode_s: float) -> float | None:
    """Tokens per second after the first token (the first one's wait is TTFT); None when
    there is nothing to time: one token or none, or no time between first and last."""
    if completion_tokens < 2 or decode_s <= 0:
        return None
    return (completion_tokens - 1) / decode_s


def record(turn: Turn, emit: Callable[[InteractionEvent], None], status: str) -> None:
    """Metrics and the interaction event, once a turn is over."""
    turn.release()
    elapsed = time.perf_counter() - turn.started
    adapter, arm, stream = turn.labels
    m.REQUESTS.labels(adapter, arm, stream, status).inc()
    m.REQUEST_LATENCY.labels(adapter, arm, stream).observe(elapsed)
    if turn.ttft is not None:
        m.TTFT.labels(adapter, arm, stream).observe(turn.ttft)
        speed = decode_speed(turn.completion_tokens, elapsed - turn.ttft)
        if speed is not None:
            m.DECODE_SPEED.labels(adapter, arm, stream).observe(speed)
    m.TOKENS.labels(adapter, arm, "prompt").inc(len(turn.prompt_ids))
    m.TOKENS.labels(adapter, arm, "completion").inc(turn.completion_tokens)
    emit(
        InteractionEvent(
            response_id=turn.info.response_id,
            conversation_id=turn.info.conversation_id,
            user_hash=turn.user_hash,
            principal=turn.principal,
            model=turn.request.model,
            adapter=adapter,
            arm=arm,
            messages=turn.request.chat_messages(),
            # The model may emit a NUL; no store column can hold one (the request's own
            # text is refused with one: serving.protocol).
            completion="".join(turn.text).replace("\x00", ""),
            # A failed request is an outcome too: the canary's error-rate guardrail counts it.
            finish_reason=turn.finish_reason or ("error" if status == "error" else None),
            prompt_tokens=len(turn.prompt_ids),
            completion_tokens=turn.completion_tokens,
            stream=turn.request.stream,
            ttft_ms=(turn.ttft or elapsed) * 1000,
            latency_ms=elapsed * 1000,
            created_ms=turn.created_ms,
        )
    )


async def complete(
    engine: Engine, turn: Turn, emit: Callable[[InteractionEvent], None]
) -> ChatCompletion:
    status = "error"
    try:
        async for _ in run(engine, turn):
            pass
        status = "ok"
    finally:
        record(turn, emit, status)
    return ChatCompletion(
        id=turn.info.response_id,
        model=turn.request.model,
        choices=[
            Choice(
                message=ResponseMessage(content="".join(turn.text)),
                finish_reason=turn.finish_reason,
            )
        ],
        usage=turn.usage(),
        livealign=turn.info,
    )


async def stream(
    engine: Engine, turn: Turn, emit: Callable[[InteractionEvent], None]
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    created = int(time.time())

    def chunk(delta: Delta, finish: str | None = None, info: LiveAlignInfo | None = None) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(
            id=turn.info.response_id,
            created=created,
            model=turn.request.model,
            choices=[choice],
            livealign=info,
        ).sse()

    status = "error"
    try:
        yield chunk(Delta(role="assistant", content=""), info=turn.info)
        async for text in run(engine, turn):
            yield chunk(Delta(content=text))
        yield chunk(Delta(), finish=turn.finish_reason)
        opts = turn.request.stream_options
        if opts is not None and opts.include_usage:
            yield (
                ChatCompletionChunk(
                    id=turn.info.response_id,
                    created=created,
                    model=turn.request.model,
                    choices=[],
                    usage=turn.usage(),
                )
                .model_dump_json(exclude_none=True)
                .join(("data: ", "\n\n"))
            )
        yield "data: [DONE]\n\n"
        status = "ok"
    finally:
        record(turn, emit, status if turn.finish_reason != "abort" else "aborted")
