"""The embedded broker on S3 storage (a local S3-compatible store): SIGKILLed and started
again, it still has every record it acknowledged and the offsets a consumer group
committed, as a Kafka broker with its disk would. The chaos benchmark relies on this to
tell the broker's losses from LiveAlign's. A broker of its own (not the session's), on
its own free port: it is killed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.object_store import ObjectStore
from streaming.broker import EmbeddedBroker
from streaming.topics import ensure_topics

TOPIC = "livealign.feedback"


@pytest.fixture
def durable() -> Iterator[EmbeddedBroker]:
    with ObjectStore() as store:
        broker = EmbeddedBroker(storage=store.url).start()
        try:
            yield broker
        finally:
            broker.stop()


def produce(bootstrap: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000)
    try:
        for value in values:
            producer.send(TOPIC, value, partition=0).get(timeout=10)
    finally:
        producer.close(timeout=5)


def consume(bootstrap: str, group: str, commit: bool) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", consumer_timeout_ms=8_000, session_timeout_ms=6_000,
    )  # fmt: skip
    try:
        consumer.subscribe([TOPIC])
        values = [record.value for record in consumer]
        if commit:
            consumer.commit()
        return values
    finally:
        consumer.close()


def test_a_killed_broker_comes_back_with_what_it_acknowledged(durable: EmbeddedBroker) -> None:
    ensure_topics(durable.bootstrap, partitions=1)
    produce(durable.bootstrap, [b"a", b"b", b"c"])
    assert consume(durable.bootstrap, "g", commit=True) == [b"a", b"b", b"c"]
    produce(durable.bootstrap, [b"d"])  # acknowledged, not yet read by the group

    durable.kill()
    durable.start()

    # The records, and the group's place among them: it reads on from where it committed.
    assert consume(durable.bootstrap, "g", commit=False) == [b"d"]
    reader = KafkaConsumer(bootstrap_servers=durable.bootstrap, consumer_timeout_ms=5_000)
    try:
        partition = TopicPartition(TOPIC, 0)
        reader.assign([partition])
        reader.seek_to_beginning(partition)
        assert [r.value for r in reader] == [b"a", b"b", b"c", b"d"]
    finally:
        reader.close()


def test_memory_storage_is_the_default_and_other_engines_are_refused() -> None:
    assert EmbeddedBroker().storage.startswith("memory://")
    with pytest.raises(ValueError, match="expected one of"):
        EmbeddedBroker(storage="postgres://localhost/tansu")
