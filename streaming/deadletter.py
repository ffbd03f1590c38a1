"""Poison records: telling why a consumed record cannot be read or stored, and the
dead letter that carries it to ``livealign.deadletter``. Pure functions, no I/O (the
checkpoint sends the letters, before it commits the offsets past them).

A record is poison when it has no value (a tombstone), its value is not UTF-8, not JSON,
JSON of another shape than its topic's event, or an event the store cannot hold (a NUL
character, an id longer than its column, a number out of range; see
``streaming.events.Unstorable``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from streaming.events import DeadLetter, PoisonReason, Unstorable, now_ms

E = TypeVar("E")
MESSAGE_LEN = 500  # a dead letter's message, at most (pydantic's name the bad input)


class Poison(Exception):
    """A record that cannot be processed, and why."""

    def __init__(self, reason: PoisonReason, message: str) -> None:
        super().__init__(message)
        self.reason: PoisonReason = reason
        self.message = message[:MESSAGE_LEN]


def read(value: bytes | None, decode: Callable[[bytes], E]) -> tuple[E, str]:
    """The event in a record's value and the value as text; raises ``Poison``."""
    if value is None:
        raise Poison("null_value", "the record has no value")
    try:
        text = value.decode()
    except UnicodeDecodeError as exc:
        raise Poison("not_utf8", str(exc)) from None
    try:
        return decode(value), text
    except Unstorable as exc:
        raise Poison(exc.reason, str(exc)) from None
    except ValidationError as exc:
        # pydantic reads the JSON before it validates: a JSON error is the only one then.
        bad_json = any(e["type"] == "json_invalid" for e in exc.errors())
        raise Poison("bad_json" if bad_json else "schema", str(exc)) from None


def letter(record: Any, poison: Poison, max_value_bytes: int) -> DeadLetter:
    """The dead letter of a consumed record (a kafka-python ``ConsumerRecord``)."""
    value: bytes | None = record.value
    size = 0 if value is None else len(value)
    return DeadLetter(
        topic=record.topic, partition=record.partition, offset=record.offset,
        timestamp_ms=record.timestamp, key=record.key,
        value=None if value is None else value[:max_value_bytes], value_size=size,
        truncated=size > max_value_bytes, reason=poison.reason, message=poison.message,
        dead_ms=now_ms(),
    )  # fmt: skip
