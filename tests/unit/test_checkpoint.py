"""The checkpoint with the broker away: the records the topic does not take in time and
offsets that cannot be committed are logged, and the processor's loop goes on (a flush's
timeout used to end the processor). Fakes stand in for Kafka."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import CommitFailedError, KafkaTimeoutError

from streaming.checkpoint import Checkpoint
from streaming.events import TOPIC_PREFERENCES, ChatMessage, PreferencePair


class AwayProducer:
    """Takes sends; never gets them acknowledged (the broker is away)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append(topic)

    def flush(self, timeout: float) -> None:
        raise KafkaTimeoutError("Timeout waiting for future")

    def close(self, timeout: float) -> None:
        self.flush(timeout)


class Consumer:
    def __init__(self, error: Exception | None) -> None:
        self.error, self.commits, self.closed = error, 0, False

    def commit(self) -> None:
        self.commits += 1
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True


def pair() -> PreferencePair:
    return PreferencePair(
        pair_id="p1", prompt=[ChatMessage(role="user", content="hi")], chosen="a",
        rejected="b", weight=1.0, provenance="edit", rejected_response_id="r1", adapter="base",
    )  # fmt: skip


@pytest.mark.parametrize(
    "error", [KafkaTimeoutError("coordinator away"), CommitFailedError("rebalanced")]
)
def test_a_batch_with_the_broker_away_is_logged_not_raised(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    consumer, producer = Consumer(error), AwayProducer()
    checkpoint = Checkpoint(consumer, producer, 0.01)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="streaming.checkpoint"):
        assert checkpoint.commit([pair()])  # goes on: the batch is stored
    assert producer.sent == [TOPIC_PREFERENCES] and consumer.commits == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 records not acknowledged" in m for m in messages)
    assert any("offsets not committed" in m for m in messages)


def test_settled_records_and_a_stop_with_the_broker_away_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer, producer = Consumer(None), AwayProducer()
    checkpoint = Checkpoint(consumer, producer, 0.01)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="streaming.checkpoint"):
        checkpoint.publish([pair(), pair()])
        checkpoint.close()
    assert consumer.closed
    messages = [r.getMessage() for r in caplog.records]
    assert any("2 records not acknowledged" in m for m in messages)
    assert any("not flushed" in m for m in messages)
