"""Samples for the trainer's teacher: k answers per prompt from a named adapter.

Not user traffic. It is reached only through a Ray Serve deployment handle
(``ChatServer.sample``; no HTTP route, so only code inside the Ray cluster can call it),
and it logs no interaction to Kafka, mints no feedback token and picks no canary arm:
the trainer's own samples can never come back as "user" training data, nor count as an
arm's traffic in the canary's analysis. They share the engine with the users, so a call
is bounded (``SamplingLimits``) and runs under a timeout, after which its vLLM requests
are aborted.

The adapter is honoured the way chat does it: its vLLM ``LoRARequest`` from the slot it
is loaded in, held so that a swap cannot unload it mid-call.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from vllm import SamplingParams
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind

from monitoring import metrics as m
from serving.adapters import AdapterManager
from serving.config import SamplingLimits
from serving.engine import SAMPLING_KEYS, Engine
from serving.protocol import APIError
from streaming.events import ChatMessage

log = logging.getLogger(__name__)


class SamplingError(RuntimeError):
    """A sampling call refused or failed (one message argument: it crosses the handle,
    pickled, where an APIError's signature would not rebuild)."""


class SampleRequest(BaseModel):
    """What the trainer asks for (as a dict: the caller needs neither vLLM nor this module)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(min_length=1, description='A loaded version ("livealign@3") or "base".')
    prompts: list[list[ChatMessage]] = Field(min_length=1, description="Chat prompts.")
    k: int = Field(ge=1, description="Samples per prompt.")
    max_tokens: int = Field(ge=1, description="Longest sample (less where the context ends).")
    temperature: float | None = Field(None, ge=0, le=2, description="Unset: the model's.")
    top_p: float | None = Field(None, gt=0, le=1, description="Unset: the model's.")
    seed: int | None = Field(None, description="Sample i of a prompt uses seed + i.")
    timeout_s: float | None = Field(
        None, gt=0, description="The caller's deadline (at most the limits'; unset: theirs)."
    )


class Sampled(BaseModel):
    text: str
    finish_reason: str | None = Field(description='"stop": it ended; "length": cut off.')


class SampleResponse(BaseModel):
    adapter: str
    samples: list[list[Sampled]] = Field(
        description="Per prompt, in order: k samples, none for a prompt that fills the context."
    )
    seconds: float


def check(req: SampleRequest, limits: SamplingLimits) -> None:
    """Refuse a call larger than the limits (rather than trim it: the caller sized it)."""
    for what, asked, most in (
        ("prompts", len(req.prompts), limits.max_prompts),
        ("k", req.k, limits.max_k),
        ("max_tokens", req.max_tokens, limits.max_tokens),
    ):
        if asked > most:
            raise SamplingError(f"{what} = {asked}: at most {most}")


def params(
    req: SampleRequest, prompt_len: int, max_model_len: int, defaults: Mapping[str, float]
) -> SamplingParams | None:
    """vLLM's parameters for one prompt's k samples, or None if the prompt leaves no room.
    FINAL_ONLY: the caller wants whole answers, and vLLM gathers the n of them."""
    room = max_model_len - prompt_len
    if room < 1:
        return None
    given = {"temperature": req.temperature, "top_p": req.top_p}
    if all(v is None for v in given.values()):  # as chat: unset means the model's own
        given = {k: v for k, v in defaults.items() if k in SAMPLING_KEYS}
    return SamplingParams(
        n=req.k,
        max_tokens=min(req.max_tokens, room),
        seed=req.seed,
        output_kind=RequestOutputKind.FINAL_ONLY,
        **{k: v for k, v in given.items() if v is not None},
    )


async def _one(
    engine: Engine, ids: list[int], sp: SamplingParams | None, lora: LoRARequest | None
) -> list[Sampled]:
    if sp is None:
        return []
    final = None
    # Cancelled (the timeout), vLLM's generate aborts the request itself.
    async for out in engine.generate(ids, sp, f"sample-{uuid.uuid4().hex}", lora):
        final = out
    outputs = final.outputs if final is not None else []
    return [Sampled(text=c.text, finish_reason=c.finish_reason) for c in outputs]


async def _generate(
    engine: Engine, req: SampleRequest, lora: LoRARequest | None
) -> list[list[Sampled]]:
    jobs = []
    for prompt in req.prompts:
        ids = engine.render(prompt)
        sp = params(req, len(ids), engine.config.max_model_len, engine.sampling_defaults)
        jobs.append(_one(engine, ids, sp, lora))
    return list(await asyncio.gather(*jobs))  # one batch for vLLM's scheduler


async def sample(
    engine: Engine, adapters: AdapterManager, body: dict[str, Any], limits: SamplingLimits
) -> dict[str, Any]:
    """k samples per prompt of ``body`` (a ``SampleRequest``), as a ``SampleResponse``
    dict. Raises SamplingError when refused, timed out or failed."""
    started = time.perf_counter()
    label, timeout_s = "invalid", limits.timeout_s
    try:
        req = SampleRequest.model_validate(body)
        label = req.adapter
        check(req, limits)
        timeout_s = min(req.timeout_s or limits.timeout_s, limits.timeout_s)
        slot = adapters.hold(req.adapter)
        try:
            samples = await asyncio.wait_for(_generate(engine, req, slot.lora), timeout_s)
        finally:
            slot.release()
    except (ValidationError, APIError, SamplingError) as exc:
        m.SAMPLE_CALLS.labels(label, "refused").inc()
        raise SamplingError(f"sampling refused: {exc}") from None
    except TimeoutError:
        m.SAMPLE_CALLS.labels(label, "timeout").inc()
        raise SamplingError(f"sampling timed out after {timeout_s:g} s") from None
    except Exception as exc:
        log.exception("sampling call failed")
        m.SAMPLE_CALLS.labels(label, "error").inc()
        raise SamplingError(f"sampling failed: {type(exc).__name__}: {exc}") from None
    m.SAMPLE_CALLS.labels(label, "ok").inc()
    m.SAMPLES.labels(label).inc(sum(len(s) for s in samples))
    seconds = time.perf_counter() - started
    return SampleResponse(adapter=label, samples=samples, seconds=seconds).model_dump(mode="json")
