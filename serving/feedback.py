"""``POST /v1/feedback``: validate feedback, check its token, hand it to the producer.

A body is one event or ``{"events": [...]}``. Each item is judged on its own: a bad
item is reported (with the status it would get alone) and the others still go through.
An item is accepted only once the broker acknowledged it or it is safe in the disk spool.

A ``compare`` item (one user's side-by-side verdict on two answers to one prompt) carries
both answers' tokens and goes out as two events, one on each answer, the second with the
mirrored verdict and an event id derived from the first's (so a retry is a duplicate of
both): each answer is then judged by the same per-rater rules as any explicit feedback.

Who may send: the per-response token is the credential. With API keys off every token
names the principal ``public``; with keys on a caller either sends its key (and may only
send tokens issued to it, as before) or sends none, and then each token vouches for its
own principal (it is signed over it): that is what a browser widget does, holding no
secret. See ``principals``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
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

# The verdict a compare event on the other answer carries.
MIRRORED = {"better": "worse", "worse": "better", "tie": "tie", "both_bad": "both_bad"}
TRANSPORTS = ("fetch", "beacon")  # how the widget sent a batch (its ?via=widget-... query)


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

    def principals(self, items: list[Any]) -> Counter[str]:
        """The principals the items' valid tokens were issued to, with how many items each
        (what a caller without an API key is charged under); items without a valid token
        count for none (``accept`` rejects them)."""
        found: Counter[str] = Counter()
        for raw in items:
            if not isinstance(raw, dict):
                continue
            rid, token = raw.get("response_id"), raw.get("feedback_token")
            if not (isinstance(rid, str) and isinstance(token, str)):
                continue
            try:
                found[tokens.verify(self.secret, rid, token).principal] += 1
            except tokens.TokenError:
                continue
        return found

    async def accept(
        self, items: list[Any], principal: str | None = tokens.PUBLIC, via: str | None = None
    ) -> FeedbackResult:
        """Each item, sent by ``principal`` (serving.auth; None: by whoever its token was
        issued to), accepted or rejected. ``via``: the widget's transport, for its metric."""
        result = FeedbackResult(accepted=[])
        waits: list[tuple[int, list[FeedbackEvent], list[asyncio.Future[Any]]]] = []
        for index, raw in enumerate(items):
            try:
                events = self._validate(raw, principal)
                futs = [
                    asyncio.wrap_future(self.producer.submit(TOPIC_FEEDBACK, e.conversation_id, e))
                    for e in events
                ]
                waits.append((index, events, futs))
            except APIError as err:
                self._count(_kind(raw), err.body.error.code or "invalid", via)
                result.rejected.append(Rejected(index=index, status=err.status, error=str(err)))
        # One deadline for the batch: waited for one after the other, n events the broker
        # and the spool cannot take yet kept the request n timeouts long.
        if waits:
            everything = [fut for _, _, futs in waits for fut in futs]
            await asyncio.wait(everything, timeout=self.delivery_timeout_s)
        for index, events, futs in waits:
            event = events[0]
            try:
                for fut in futs:
                    if not fut.done():
                        fut.cancel()  # given up on, as wait_for does at its timeout
                        raise TimeoutError
                    fut.result()
            except (SpoolError, TimeoutError) as exc:
                # Not durable yet: the client must retry with the same event_id.
                self._count(event.kind.value, "unavailable", via)
                result.rejected.append(
                    Rejected(
                        index=index,
                        status=503,
                        error=f"not stored, retry with the same event_id ({str(exc) or 'timeout'})",
                        event_id=event.event_id,
                    )
                )
                continue
            self._count(event.kind.value, "accepted", via)
            if event.kind is FeedbackKind.compare:
                m.COMPARE_VOTES.labels(str(event.value)).inc()
            result.accepted.append(event.event_id)
        result.rejected.sort(key=lambda r: r.index)
        return result

    @staticmethod
    def _count(kind: str, outcome: str, via: str | None) -> None:
        m.FEEDBACK.labels(kind, outcome).inc()
        if via is not None:
            m.WIDGET_EVENTS.labels(kind, via, outcome).inc()

    def _validate(self, raw: Any, principal: str | None) -> list[FeedbackEvent]:
        """The events one item makes: one, or for a compare two (one on each answer)."""
        try:
            item = FeedbackIn.model_validate(raw)
        except ValidationError as exc:
            raise APIError(422, describe(exc), code="invalid_value") from exc
        claims = self._claims(item.response_id, item.feedback_token, principal)
        event = FeedbackEvent(
            event_id=item.event_id or new_id("fb"),
            response_id=item.response_id,
            conversation_id=claims.conversation_id,
            user_hash=claims.user_hash,
            principal=claims.principal,
            kind=item.kind,
            value=item.value,
            client_ts=item.client_ts,
            received_ms=now_ms(),
            other_response_id=item.other_response_id,
            copied_share=item.copied_share,
        )
        if item.other_response_id is None or item.other_feedback_token is None:
            return [event]
        other = self._claims(item.other_response_id, item.other_feedback_token, principal)
        if (other.conversation_id, other.user_hash, other.principal) != (
            claims.conversation_id,
            claims.user_hash,
            claims.principal,
        ):
            # One user's verdict on two answers they were given side by side: the same
            # conversation (so both land in one partition) and the same rater.
            raise APIError(
                422,
                "other_feedback_token: a compare is between two answers of one conversation "
                "given to the same user",
                code="invalid_value",
                param="other_response_id",
            )
        mirror = event.model_copy(
            update={
                "event_id": mirror_id(event.event_id),
                "response_id": item.other_response_id,
                "value": MIRRORED[str(item.value)],
                "other_response_id": item.response_id,
            }
        )
        return [event, mirror]

    def _claims(self, response_id: str, token: str, principal: str | None) -> tokens.TokenClaims:
        try:
            claims = tokens.verify(self.secret, response_id, token)
        except tokens.TokenError as exc:
            raise APIError(403, str(exc), type_="permission_error", code="bad_token") from exc
        if principal is not None and claims.principal != principal:
            # A token lifted from another tenant's response is no use with one's own key.
            raise APIError(
                403,
                "feedback_token was issued to another API key",
                type_="permission_error",
                code="bad_token",
            )
        return claims


def mirror_id(event_id: str) -> str:
    """The event id of a compare's event on the other answer: derived, so a retry of the
    vote is a duplicate of both of its events."""
    return "cmp-" + hashlib.sha256(event_id.encode()).hexdigest()[:32]


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
