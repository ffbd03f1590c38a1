"""Poison records: each kind goes to a dead letter with its reason, is counted by it, and
the records after it are processed. The checkpoint commits offsets past a poison record
only once its letter is acknowledged. Fakes stand in for Kafka."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
from kafka.errors import KafkaTimeoutError
from prometheus_client import REGISTRY

from streaming import events
from streaming import store as s
from streaming.checkpoint import Checkpoint
from streaming.events import (
    HASH_LEN,
    ID_LEN,
    INT_MAX,
    INT_MIN,
    TOPIC_DEADLETTER,
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    ChatMessage,
    DeadLetter,
    FeedbackEvent,
    FeedbackKind,
    InteractionEvent,
    decode_feedback,
    decode_interaction,
)
from streaming.processor import Processor, ProcessorConfig


class Rec(NamedTuple):
    """A consumed Kafka record, as kafka-python's ConsumerRecord has it."""

    topic: str
    value: bytes | None
    partition: int = 1
    offset: int = 7
    timestamp: int = 1_234
    key: bytes | None = b"conv-1"


def interaction(rid: str = "r1", **changes: Any) -> dict[str, Any]:
    event = InteractionEvent(
        response_id=rid, conversation_id="conv-1", user_hash="u1", model="m", adapter="base",
        arm="stable", messages=[ChatMessage(role="user", content="Hi?")], completion="Hello.",
        prompt_tokens=2, completion_tokens=2, ttft_ms=1, latency_ms=2, created_ms=1_000,
    )  # fmt: skip
    return {**event.model_dump(mode="json"), **changes}


def feedback(eid: str = "e1", **changes: Any) -> dict[str, Any]:
    event = FeedbackEvent(
        event_id=eid, response_id="r1", conversation_id="conv-1", user_hash="u1",
        kind=FeedbackKind.thumb, value=1, received_ms=2_000,
    )  # fmt: skip
    return {**event.model_dump(mode="json"), **changes}


def encoded(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


# (reason, the poison value on the interactions topic, on the feedback topic)
POISON: list[tuple[str, bytes | None, bytes | None]] = [
    ("null_value", None, None),
    ("not_utf8", b'{"response_id": "\xff\xfe"}', b"\xc3\x28"),
    ("bad_json", b'{"response_id": "r9",', b"thumbs up!"),
    ("schema", encoded(interaction(prompt_tokens=-1)), b'{"not": "an event"}'),
    ("schema", b"null", encoded(feedback(kind="telepathy"))),
    (
        "nul_byte",
        encoded(interaction(messages=[{"role": "user", "content": "a\x00b"}])),
        encoded(feedback(kind="comment", value="bad\x00")),
    ),
    ("nul_byte", encoded(interaction(completion="\x00")), encoded(feedback(user_hash="u\x00"))),
    (
        "too_long",
        encoded(interaction(rid="r" * (ID_LEN + 1))),
        encoded(feedback(user_hash="h" * (HASH_LEN + 1))),
    ),
    ("too_long", encoded(interaction(arm="a" * 51)), encoded(feedback(event_id="e" * 201))),
    (
        "out_of_range",  # json.dumps writes Infinity and NaN, which pydantic reads
        encoded(interaction(ttft_ms=float("inf"))),
        encoded(feedback(kind="dwell", value=float("nan"))),
    ),
    (
        "out_of_range",  # valid JSON, read as infinity
        encoded(interaction(latency_ms=1)).replace(b'"latency_ms": 1,', b'"latency_ms": 1e400,'),
        encoded(feedback(kind="dwell", value=1)).replace(b'"value": 1,', b'"value": -1e400,'),
    ),
    (
        "out_of_range",
        encoded(interaction(created_ms=INT_MAX + 1)),
        encoded(feedback(received_ms=INT_MIN - 1)),
    ),
]


def drops(reason: str) -> float:
    return REGISTRY.get_sample_value("livealign_processor_drops_total", {"reason": reason}) or 0


@pytest.fixture
def processor(tmp_path: Path) -> Processor:
    return Processor(ProcessorConfig(store_url=f"sqlite:///{tmp_path / 'p.sqlite'}"))


@pytest.mark.parametrize("topic", [TOPIC_INTERACTIONS, TOPIC_FEEDBACK])
@pytest.mark.parametrize(("reason", "on_interactions", "on_feedback"), POISON)
def test_a_poison_record_goes_to_a_dead_letter_and_the_next_one_is_processed(
    processor: Processor,
    topic: str,
    reason: str,
    on_interactions: bytes | None,
    on_feedback: bytes | None,
) -> None:
    value = on_interactions if topic == TOPIC_INTERACTIONS else on_feedback
    before = drops(reason)
    good = [Rec(TOPIC_INTERACTIONS, encoded(interaction()), offset=8),
            Rec(TOPIC_FEEDBACK, encoded(feedback()), offset=9)]  # fmt: skip
    batch = processor.parse([Rec(topic, value), *good])
    processor.process_batch(batch)

    [letter] = batch.dead
    assert (letter.reason, letter.topic, letter.partition, letter.offset) == (reason, topic, 1, 7)
    assert (letter.key, letter.value, letter.timestamp_ms) == (b"conv-1", value, 1_234)
    assert letter.value_size == len(value or b"") and not letter.truncated
    assert letter.message
    assert drops(reason) == before + 1
    # The good records after it were stored and joined.
    assert [r["response_id"] for r in processor.store.all(s.interactions)] == ["r1"]
    assert [r["status"] for r in processor.store.all(s.feedback)] == ["joined"]


def test_numbers_at_the_stores_limits_are_storable() -> None:
    big = encoded(interaction(created_ms=INT_MAX, latency_ms=1.7e308))
    assert decode_interaction(big).created_ms == INT_MAX
    small = encoded(feedback(kind="dwell", value=-1.7e308, received_ms=INT_MIN))
    assert decode_feedback(small).received_ms == INT_MIN


def _numeric(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.UnionType):
        return any(_numeric(u) for u in t.types)
    return isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType)


@pytest.mark.parametrize(
    ("struct", "checked"),
    [(events.WireInteraction, events._INTERACTION_NUMBERS),
     (events.WireFeedback, events._FEEDBACK_NUMBERS)],
)  # fmt: skip
def test_every_number_an_event_holds_is_checked(struct: type, checked: tuple[str, ...]) -> None:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    assert {f.name for f in info.fields if _numeric(f.type)} == set(checked)


def test_an_escaped_backslash_before_u0000_is_no_nul(processor: Processor) -> None:
    """``\\\\u0000`` in JSON is a backslash and "u0000": storable text."""
    value = encoded(feedback(kind="comment", value="C:\\u0000"))
    assert decode_feedback(value).value == "C:\\u0000"
    assert processor.parse([Rec(TOPIC_FEEDBACK, value)]).dead == []


def test_a_long_value_is_cut_and_says_so(tmp_path: Path) -> None:
    cfg = ProcessorConfig(store_url=f"sqlite:///{tmp_path / 'p.sqlite'}",
                          deadletter_max_value_bytes=10)  # fmt: skip
    value = b"x" * 100
    [letter] = Processor(cfg).parse([Rec(TOPIC_FEEDBACK, value)]).dead
    assert (letter.value, letter.value_size, letter.truncated) == (b"x" * 10, 100, True)
    # On the wire: base64, read back the same.
    wire = json.loads(letter.model_dump_json())
    assert base64.b64decode(wire["value"]) == b"x" * 10
    assert DeadLetter.model_validate_json(letter.model_dump_json()) == letter


# --- the checkpoint: offsets only after the letters are acknowledged -----------------------
class FakeFuture:
    def __init__(self, fails: bool) -> None:
        self.fails = fails

    def get(self, timeout: float) -> None:
        if self.fails:
            raise KafkaTimeoutError("no ack")


class FakeProducer:
    """Refuses the first ``failures`` sends (by timing out), then acknowledges."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.acked: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> FakeFuture:
        if self.failures:
            self.failures -= 1
            return FakeFuture(fails=True)
        self.acked.append((topic, key, value))
        return FakeFuture(fails=False)

    def flush(self, timeout: float) -> None:
        pass


class FakeConsumer:
    def __init__(self) -> None:
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


def letters(processor: Processor) -> list[DeadLetter]:
    return processor.parse([Rec(TOPIC_FEEDBACK, None, offset=3), Rec(TOPIC_FEEDBACK, b"{")]).dead


def test_offsets_wait_until_every_letter_is_acknowledged(processor: Processor) -> None:
    consumer, producer = FakeConsumer(), FakeProducer(failures=3)
    checkpoint = Checkpoint(consumer, producer, 0.1, max_backoff_s=0.01)  # type: ignore[arg-type]
    assert checkpoint.commit([], letters(processor), threading.Event())
    assert consumer.commits == 1
    sent = [DeadLetter.model_validate_json(value) for _, _, value in producer.acked]
    assert {(d.reason, d.offset) for d in sent} == {("null_value", 3), ("bad_json", 7)}
    assert {topic for topic, _, _ in producer.acked} == {TOPIC_DEADLETTER}


class StopAfterTries(threading.Event):
    """A stop asked for while the processor waits to try again."""

    def __init__(self, tries: int) -> None:
        super().__init__()
        self.tries = tries

    def wait(self, timeout: float | None = None) -> bool:
        self.tries -= 1
        if self.tries <= 0:
            self.set()
        return self.is_set()


def test_a_stop_while_letters_fail_commits_nothing(processor: Processor) -> None:
    consumer, producer = FakeConsumer(), FakeProducer(failures=10**6)
    checkpoint = Checkpoint(consumer, producer, 0.1, max_backoff_s=0.01)  # type: ignore[arg-type]
    assert not checkpoint.commit([], letters(processor), StopAfterTries(3))
    assert consumer.commits == 0 and producer.acked == []
