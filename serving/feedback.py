"""``POST /v1/feedback``: validate feedback, check its token, hand it to the producer.

A body is one event or ``{"events": [...]}``. Each item is judged on its own: a bad
item is reported (with the status it would get alone) and the others still go through.
An item is accepted only once the broker acknowledged it or it is safe in the disk spool.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError

from monitoring import metrics as m
from serving import tokens
from serving.limits import LIMITS
from serving.protocol import APIError, loads
from streaming.events import (
    TOPIC_FEEDBACK,
    FeedbackEvent,
    FeedbackIn,
    new_id,
    now_ms,
)
from streaming.kinds import KIND_NAMES, FeedbackKind
from streaming.producer import EventProducer
from streaming.spool import SpoolError


class FeedbackBatch(BaseModel):
    """Several events in one body. Documentation only: ``FeedbackDesk.parse`` takes the
    envelope apart itself, so that each event is judged on its own."""

    events: Annotated[list[FeedbackIn], Field(min_length=1, max_length=LIMITS.max_feedback_batch)]


class Rejected(BaseModel):
    index: int
    status: int
    error: str
    event_id: str | None = None


class FeedbackResult(BaseModel):
    accepted: list[str]
    rejected: list[Rejected] = []


@dataclass
class FeedbackDesk:
    producer: EventProducer
    secret: bytes
    max_batch: int
    delivery_timeout_s: float

    def __post_init__(self) -> None:
        # Every kind's series exists from the start (at 0), so a rate over it is defined
        # before the first event of that kind arrives.
        for kind in FeedbackKind:
            m.FEEDBACK.labels(kind.value, "accepted")

    def parse(self, body: bytes) -> tuple[list[Any], bool]:
        """The raw items and whether the body was a batch; 400/413 for a bad envelope."""
        try:
            data = loads(body)
        except ValueError as exc:
            raise APIError(
                400, f"request body is not valid JSON: {exc}", code="invalid_json"
            ) from exc
        if isinstance(data, dict) and "events" in data:
            items = data["events"]
            if not isinstance(items, list) or not items:
                raise APIError(422, "events: must be a non-empty list", param="events")
            if len(items) > self.max_batch:
                raise APIError(
                    413,
                    f"events: {len(items)} events in one batch; at most {self.max_batch}",
                    code="batch_too_large",
                    param="events",
                )
            return items, True
        return [data], False

    async def accept(self, items: list[Any], principal: str = tokens.PUBLIC) -> FeedbackResult:
        """Each item, sent by ``principal`` (serving.auth), accepted or rejected."""
        result = FeedbackResult(accepted=[])
        waits: list[tuple[int, FeedbackEvent, asyncio.Future[Any]]] = []
        for index, raw in enumerate(items):
            try:
                event = self._validate(raw, principal)
                fut = asyncio.wrap_future(
                    self.producer.submit(TOPIC_FEEDBACK, event.conversation_id, event)
                )
                waits.append((index, event, fut))
            except APIError as err:
                m.FEEDBACK.labels(_kind(raw), err.body.error.code or "invalid").inc()
                result.rejected.append(Rejected(index=index, status=err.status, error=str(err)))
        # One deadline for the batch: waited for one after the other, n events the broker
        # and the spool cannot take yet kept the request n timeouts long.
        if waits:
            await asyncio.wait([fut for _, _, fut in waits], timeout=self.delivery_timeout_s)
        for index, event, fut in waits:
            try:
                if not fut.done():
                    fut.cancel()  # given up on, as wait_for does at its timeout
                    raise TimeoutError
                fut.result()
            except (SpoolError, TimeoutError) as exc:
                # Not durable yet: the client must retry with the same event_id.
                m.FEEDBACK.labels(event.kind.value, "unavailable").inc()
                result.rejected.append(
                    Rejected(
                        index=index,
                        status=503,
                        error=f"not stored, retry with the same event_id ({str(exc) or 'timeout'})",
                        event_id=event.event_id,
                    )
                )
                continue
            m.FEEDBACK.labels(event.kind.value, "accepted").inc()
            result.accepted.append(event.event_id)
        result.rejected.sort(key=lambda r: r.index)
        return result

    def _validate(self, raw: Any, principal: str) -> FeedbackEvent:
        try:
            item = FeedbackIn.model_validate(raw)
        except ValidationError as exc:
            raise APIError(422, describe(exc), code="invalid_value") from exc
        try:
            claims = tokens.verify(self.secret, item.response_id, item.feedback_token)
        except tokens.TokenError as exc:
            raise APIError(403, str(exc), type_="permission_error", code="bad_token") from exc
        if claims.principal != principal:
            # A token lifted from another tenant's response is no use with one's own key.
            raise APIError(
                403,
                "feedback_token was issued to another API key",
                type_="permission_error",
                code="bad_token",
            )
        return FeedbackEvent(
            event_id=item.event_id or new_id("fb"),
            response_id=item.response_id,
            conversation_id=claims.conversation_id,
            user_hash=claims.user_hash,
            principal=claims.principal,
            kind=item.kind,
            value=item.value,
            client_ts=item.client_ts,
            received_ms=now_ms(),
        )


def _kind(raw: Any) -> str:
    """The metric label for an item's kind: a known kind's name, else "unknown" (a
    stranger's string must not make a new time series)."""
    kind = raw.get("kind") if isinstance(raw, dict) else None
    return kind if isinstance(kind, str) and kind in KIND_NAMES else "unknown"  # {} is unhashable


def describe(exc: ValidationError) -> str:
    """One line per problem, each naming the field: ``kind: Input should be ...``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(msg if msg.startswith(f"{loc}:") or not err["loc"] else f"{loc}: {msg}")
    return "; ".join(parts)
