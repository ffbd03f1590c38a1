"""The event contract between serving, the stream processor and the trainer.

Every event is a pydantic model with a ``schema_version``; ``python -m streaming.events``
regenerates the JSON Schema files in ``streaming/schemas/`` so that non-Python clients
(the feedback widget, other services) can validate against the same contract.
Both topics are keyed by conversation id, so one conversation lives in one partition.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streaming.kinds import FeedbackKind

SCHEMA_VERSION = 1

TOPIC_INTERACTIONS = "livealign.interactions"
TOPIC_FEEDBACK = "livealign.feedback"
TOPIC_PREFERENCES = "livealign.preferences"
TOPIC_DECISIONS = "livealign.decisions"  # the canary controller's decisions, one per interval
TOPIC_DEADLETTER = "livealign.deadletter"  # records the processor could not read or store
BASE_ADAPTER = "base"  # InteractionEvent.adapter when no adapter answered: the base model


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class ChatMessage(BaseModel):
    """One message of the conversation as the model saw it."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class InteractionEvent(BaseModel):
    """One answered chat request: what the model was asked and what it said."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    event_type: Literal["interaction"] = "interaction"
    response_id: str
    conversation_id: str
    user_hash: str | None = Field(None, description="Salted hash of the OpenAI `user` field.")
    principal: str | None = Field(
        None, max_length=64, description='The API key\'s principal; "public" while keys are off.'
    )
    model: str = Field(description="Served model name the client asked for.")
    adapter: str = Field(description='Adapter version that answered; "base" for none.')
    arm: str = Field(description='Canary arm: "stable" or "canary".')
    messages: list[ChatMessage]
    completion: str
    finish_reason: str | None = None
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    stream: bool = False
    ttft_ms: float = Field(ge=0, description="Time to first token.")
    latency_ms: float = Field(ge=0, description="Time from request to last token.")
    created_ms: int = Field(description="Server time the request arrived (unix ms).")


class FeedbackIn(BaseModel):
    """What a client sends to ``POST /v1/feedback`` for one response.

    ``value`` depends on ``kind``: thumb ±1, rating 1..5, edit the corrected full
    text, comment free text, click one of copy/regenerate/link/share, dwell the
    milliseconds the answer was visible, compare the verdict on this response against
    another answer to the same prompt (better, worse, tie, both_bad), which is named by
    ``other_response_id`` and proven received by ``other_feedback_token``.
    """

    model_config = ConfigDict(extra="forbid")

    response_id: Annotated[str, Field(min_length=1, max_length=200)]
    feedback_token: Annotated[str, Field(min_length=1, max_length=500)]
    kind: FeedbackKind
    value: int | float | str
    event_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="Idempotency key; the server makes one if absent."
    )
    client_ts: int | None = Field(None, description="Client clock, unix ms.")
    other_response_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="compare only: the other answer judged against this one."
    )
    other_feedback_token: Annotated[str, Field(min_length=1, max_length=500)] | None = Field(
        None, description="compare only: the other answer's feedback token."
    )
    copied_share: float | None = Field(
        None, ge=0, le=1, description="click copy only: the share of the answer copied."
    )

    @model_validator(mode="after")
    def _check_value(self) -> FeedbackIn:
        check_value(self.kind, self.value)
        check_other(self.kind, self.response_id, self.other_response_id)
        if (self.other_feedback_token is None) != (self.other_response_id is None):
            raise ValueError("other_feedback_token: comes with other_response_id, and only then")
        if self.copied_share is not None and not (
            self.kind is FeedbackKind.click and self.value == "copy"
        ):
            raise ValueError("copied_share: only a click copy has one")
        # Accepted means stored: no store column (PostgreSQL text) can hold a NUL, and the
        # processor would dead-letter the event. Refused here instead, with a 422.
        for name in ("event_id", "value", "other_response_id"):
            text = getattr(self, name)
            if isinstance(text, str) and "\x00" in text:
                raise ValueError(f"{name}: must not contain NUL characters (\\u0000)")
        return self


def check_value(kind: FeedbackKind, value: int | float | str) -> None:
    """Raise ValueError naming what is wrong with ``value`` for this ``kind``."""
    kind.spec.check(value)


def check_other(kind: FeedbackKind, response_id: str, other: str | None) -> None:
    """A compare names the other response (not this one); no other kind names one."""
    if kind is FeedbackKind.compare:
        if other is None:
            raise ValueError("other_response_id: a compare names the other response")
        if other == response_id:
            raise ValueError("other_response_id: a response is not compared with itself")
    elif other is not None:
        raise ValueError(f"other_response_id: only a compare names another response, not {kind}")


class FeedbackEvent(BaseModel):
    """One accepted piece of feedback, as it travels on ``livealign.feedback``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    event_type: Literal["feedback"] = "feedback"
    event_id: str
    response_id: str
    conversation_id: str
    user_hash: str | None = None
    principal: str | None = Field(
        None, max_length=64, description="The principal the response was answered for."
    )
    kind: FeedbackKind
    value: int | float | str
    client_ts: int | None = None
    received_ms: int
    other_response_id: str | None = Field(
        None, description="compare only: the other answer, in the same conversation."
    )
    copied_share: float | None = Field(
        None, ge=0, le=1, description="click copy only: the share of the answer copied."
    )


class PreferencePair(BaseModel):
    """A training pair for DPO: ``chosen`` is preferred over ``rejected`` for ``prompt``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    event_type: Literal["pair"] = "pair"
    pair_id: str = Field(description="Stable id: the same evidence always gives the same id.")
    prompt: list[ChatMessage]
    chosen: str
    rejected: str
    weight: float = Field(ge=0)
    provenance: Literal["edit", "regenerate", "compare", "teacher"] = Field(
        description="What made it: a user's edit, two regenerated answers the users scored, "
        "a user's side-by-side verdict on two answers to one prompt, "
        "or \"teacher\": the trainer's reward model ranking the policy's own samples, made "
        "in a round and never stored or sent (not user data)."
    )
    chosen_response_id: str | None = None
    rejected_response_id: str
    adapter: str = Field(description="Adapter that produced the rejected answer.")


class PreferenceLabel(BaseModel):
    """An unpaired label for KTO: was this answer desirable, and how sure are we."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    event_type: Literal["label"] = "label"
    response_id: str
    prompt: list[ChatMessage]
    completion: str
    desirable: bool
    weight: float = Field(ge=0)
    score: float = Field(ge=-1, le=1, description="Fused score of the answer.")
    confidence: float = Field(ge=0, le=1)
    scenario: str
    adapter: str
    n_signals: int = Field(ge=0, description="Feedback events fused into the score.")


class ResponseOutcome(BaseModel):
    """A response's outcome once its feedback window has settled (and again if late
    feedback changes it): its fused score and what an operator watches, with the adapter
    version and canary arm that answered. The canary controller judges arms on these."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    event_type: Literal["outcome"] = "outcome"
    response_id: str
    conversation_id: str
    adapter: str
    arm: str
    created_ms: int = Field(description="Server time the request arrived (unix ms).")
    score: float | None = Field(
        ge=-1, le=1, description="Fused score; None when no feedback scored the answer."
    )
    confidence: float = Field(ge=0, le=1)
    n_signals: int = Field(ge=0)
    thumbs_up: int = Field(ge=0, description="Thumbs up and ratings of 4 or 5.")
    thumbs_down: int = Field(ge=0, description="Thumbs down and ratings of 1 or 2.")
    regenerated: bool = Field(description="The user asked for another answer instead.")
    error: bool = Field(description="The request failed (no answer was given).")
    completion_tokens: int = Field(ge=0)
    latency_ms: float = Field(ge=0)
    ttft_ms: float = Field(ge=0)


# Why a record went to the dead-letter topic (also livealign_processor_drops_total's label).
PoisonReason = Literal[
    "null_value", "not_utf8", "bad_json", "schema", "nul_byte", "too_long", "out_of_range"
]  # fmt: skip
POISON_REASONS: tuple[PoisonReason, ...] = (
    "null_value", "not_utf8", "bad_json", "schema", "nul_byte", "too_long", "out_of_range",
)  # fmt: skip


class DeadLetter(BaseModel):
    """A record the stream processor could not read or store, as it travels on
    ``livealign.deadletter`` (keyed by the record's own key): where it was, what it held
    (base64, cut at the processor's bound) and why it was refused."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    schema_version: Literal[1] = 1
    event_type: Literal["deadletter"] = "deadletter"
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = Field(None, description="The record's Kafka timestamp.")
    key: bytes | None = Field(None, description="The record's key, base64.")
    value: bytes | None = Field(
        description="The record's value, base64 (its first bytes if truncated); None: it had none."
    )
    value_size: int = Field(ge=0, description="Bytes of the whole value.")
    truncated: bool = Field(description="Only the first bytes of the value are here.")
    reason: PoisonReason
    message: str = Field(description="What was wrong, for a person (bounded).")
    dead_ms: int = Field(description="When it was refused (unix ms).")


# --- the stream processor's decoding ----------------------------------------------------
# The processor validates every record it consumes; pydantic took a third of its time for
# it. These msgspec mirrors of ChatMessage, InteractionEvent and FeedbackEvent decode the
# JSON five times faster and are what the processor works with. The pydantic models stay
# the contract and the judge: whatever the mirror rejects (malformed, or only accepted by
# pydantic's lax coercions such as "5" for an int) goes to pydantic, which rejects it or
# hands back its reading. tests/test_processor_fast.py checks that the mirrors have the
# models' fields and defaults, and that what a mirror accepts the model accepts the same.
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class WireMessage(msgspec.Struct, frozen=True):
    """ChatMessage as the processor decodes it (unknown fields ignored, as there)."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class WireInteraction(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """InteractionEvent as the processor decodes it."""

    schema_version: Literal[1] = 1
    event_type: Literal["interaction"] = "interaction"
    response_id: str
    conversation_id: str
    user_hash: str | None = None
    principal: str | None = None
    model: str
    adapter: str
    arm: str
    messages: list[WireMessage]
    completion: str
    finish_reason: str | None = None
    prompt_tokens: NonNegative
    completion_tokens: NonNegative
    stream: bool = False
    ttft_ms: NonNegativeFloat
    latency_ms: NonNegativeFloat
    created_ms: int


class WireFeedback(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """FeedbackEvent as the processor decodes it."""

    schema_version: Literal[1] = 1
    event_type: Literal["feedback"] = "feedback"
    event_id: str
    response_id: str
    conversation_id: str
    user_hash: str | None = None
    principal: str | None = None
    kind: FeedbackKind
    value: int | float | str
    client_ts: int | None = None
    received_ms: int
    other_response_id: str | None = None
    copied_share: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


# --- what the store can hold ------------------------------------------------------------
# The store's string columns that events fill, by length, defined once: the store makes
# its columns from these, and the decoders refuse an event that would not fit. So every
# store behaves the same (SQLite does not enforce a length, PostgreSQL refuses the whole
# batch), and so does a NUL character (PostgreSQL refuses it in text of any kind), and a
# number out of range: one past 64 bits (neither store's integers hold it) or not finite
# (1e400 reads as infinity, pydantic takes NaN too; PostgreSQL's JSON refuses both).
ID_LEN = 200  # response, conversation and event ids, adapter versions
HASH_LEN = 64  # user hashes (the rater), prompt hashes
ARM_LEN = 50
_INTERACTION_LENGTHS = (
    ("response_id", ID_LEN), ("conversation_id", ID_LEN), ("user_hash", HASH_LEN),
    ("adapter", ID_LEN), ("arm", ARM_LEN),
)  # fmt: skip
_FEEDBACK_LENGTHS = (
    ("event_id", ID_LEN), ("response_id", ID_LEN), ("conversation_id", ID_LEN),
    ("user_hash", HASH_LEN), ("other_response_id", ID_LEN),
)  # fmt: skip
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # the store's integers (SQLite's, PostgreSQL's BIGINT)
_INTERACTION_NUMBERS = ("prompt_tokens", "completion_tokens", "ttft_ms", "latency_ms", "created_ms")
_FEEDBACK_NUMBERS = ("value", "client_ts", "received_ms", "copied_share")
# JSON can carry a NUL only escaped, and this is its one spelling: text without it has none.
_NUL_ESCAPE = "\\u0000"
_NUL_ESCAPE_BYTES = _NUL_ESCAPE.encode()


class Unstorable(ValueError):
    """A valid event the store cannot hold. ``reason``: "nul_byte", "too_long" or
    "out_of_range"."""

    def __init__(
        self, reason: Literal["nul_byte", "too_long", "out_of_range"], message: str
    ) -> None:
        super().__init__(message)
        self.reason = reason


def _check_storable(
    event: WireInteraction | WireFeedback,
    data: bytes | str,
    lengths: tuple[tuple[str, int], ...],
    numbers: tuple[str, ...],
) -> None:
    for name, limit in lengths:
        value = getattr(event, name)
        if value is not None and len(value) > limit:
            raise Unstorable("too_long", f"{name} has {len(value)} characters, over {limit}")
    for name in numbers:
        number = getattr(event, name)
        if isinstance(number, float) and not math.isfinite(number):
            raise Unstorable("out_of_range", f"{name} is {number}: not a finite number")
        if isinstance(number, int) and not INT_MIN <= number <= INT_MAX:
            raise Unstorable("out_of_range", f"{name} is an integer past 64 bits")
    escaped = _NUL_ESCAPE in data if isinstance(data, str) else _NUL_ESCAPE_BYTES in data
    if escaped and any("\x00" in text for text in _strings(event)):  # not an escaped "\\"
        raise Unstorable("nul_byte", "a string field holds a NUL character (\\u0000)")


def _strings(event: WireInteraction | WireFeedback) -> list[str]:
    """Every string the event holds (its messages' too)."""
    values = [getattr(event, f) for f in event.__struct_fields__]
    if isinstance(event, WireInteraction):
        values += [text for msg in event.messages for text in (msg.role, msg.content)]
    return [v for v in values if isinstance(v, str)]


AnyInteraction = InteractionEvent | WireInteraction
AnyFeedback = FeedbackEvent | WireFeedback
_INTERACTION_DECODER = msgspec.json.Decoder(WireInteraction)
_FEEDBACK_DECODER = msgspec.json.Decoder(WireFeedback)


def decode_interaction(data: bytes | str) -> WireInteraction:
    """Validate an InteractionEvent's JSON; raises pydantic's ValidationError if invalid,
    ``Unstorable`` if valid but not for the store."""
    try:
        decoded = _INTERACTION_DECODER.decode(data)
    except msgspec.DecodeError:
        event = InteractionEvent.model_validate_json(data)  # raises if invalid
        fields = event.model_dump()
        messages = [WireMessage(**m) for m in fields.pop("messages")]
        decoded = WireInteraction(**fields, messages=messages)
    _check_storable(decoded, data, _INTERACTION_LENGTHS, _INTERACTION_NUMBERS)
    return decoded


def decode_feedback(data: bytes | str) -> WireFeedback:
    """Validate a FeedbackEvent's JSON; raises pydantic's ValidationError if invalid,
    ``Unstorable`` if valid but not for the store."""
    try:
        decoded = _FEEDBACK_DECODER.decode(data)
    except msgspec.DecodeError:
        event = FeedbackEvent.model_validate_json(data)  # raises if invalid
        decoded = WireFeedback(**event.model_dump())
    _check_storable(decoded, data, _FEEDBACK_LENGTHS, _FEEDBACK_NUMBERS)
    return decoded


SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMAS: dict[str, type[BaseModel]] = {
    "interaction_event": InteractionEvent,
    "feedback_event": FeedbackEvent,
    "feedback_in": FeedbackIn,
    "preference_pair": PreferencePair,
    "preference_label": PreferenceLabel,
    "response_outcome": ResponseOutcome,
    "dead_letter": DeadLetter,
}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write one JSON Schema file per event model; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in SCHEMAS.items():
        path = directory / f"{name}.v{SCHEMA_VERSION}.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_schemas():
        print(p)
