"""Poison records on the real embedded broker: the processor sends each to
``livealign.deadletter`` with its reason, keeps processing the records after them, and
commits its offsets past them. Its own broker and processor (in a thread): no Ray. On
each store: PostgreSQL refuses what SQLite takes (a NUL, an id past its column, a JSON
infinity), and would fail the whole batch if one reached it."""

from __future__ import annotations

import gc
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import BaseModel
from sqlalchemy import Table

from streaming import store as s
from streaming.broker import EmbeddedBroker
from streaming.events import (
    HASH_LEN,
    ID_LEN,
    TOPIC_DEADLETTER,
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    DeadLetter,
)
from streaming.processor import Processor, ProcessorConfig
from streaming.store import PreferenceStore
from streaming.topics import ensure_topics
from tests.integration.conftest import read_topic
from tests.integration.test_processor_integration import feedback, interaction, wait_for


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log") as running:
        ensure_topics(running.bootstrap, partitions=2)
        yield running


def test_poison_goes_to_dead_letters_and_the_processor_keeps_going(
    broker: EmbeddedBroker, store_url: str
) -> None:
    conv = f"conv-{uuid.uuid4().hex[:8]}"
    key = conv.encode()
    good = interaction(f"{conv}-r1", conv)
    rid = good.response_id

    def fb(eid: str, kind: str, value: object, **changes: object) -> bytes:
        event = feedback(f"{conv}-{eid}", rid, conv, kind, value).model_copy(update=changes)
        return event.model_dump_json().encode()

    nul = good.model_copy(update={"completion": "bad\x00"}).model_dump_json().encode()
    long_id = feedback("e" * 201, rid, conv, "thumb", 1).model_dump_json().encode()
    infinite = fb("inf", "dwell", 1).replace(b'"value":1,', b'"value":1e400,')  # valid JSON
    assert b"1e400" in infinite
    poison: list[tuple[str, str, bytes | None]] = [
        (TOPIC_INTERACTIONS, "null_value", None),
        (TOPIC_FEEDBACK, "null_value", None),
        (TOPIC_FEEDBACK, "not_utf8", b"\xff\xfe"),
        (TOPIC_INTERACTIONS, "bad_json", b'{"response_id": '),
        (TOPIC_FEEDBACK, "schema", b'{"event_type": "feedback"}'),
        (TOPIC_INTERACTIONS, "nul_byte", nul),
        (TOPIC_FEEDBACK, "too_long", long_id),
        (TOPIC_FEEDBACK, "nul_byte", fb("nul-comment", "comment", "great\x00 answer")),
        (TOPIC_FEEDBACK, "nul_byte", fb("nul-edit", "edit", "A better\x00 answer.")),
        (TOPIC_FEEDBACK, "too_long", fb("long-rid", "thumb", 1, response_id="r" * (ID_LEN + 1))),
        (TOPIC_FEEDBACK, "too_long", fb("long-rater", "thumb", 1, user_hash="u" * (HASH_LEN + 1))),
        (TOPIC_FEEDBACK, "out_of_range", infinite),
    ]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    sent = {}  # (topic, partition, offset) -> reason
    values = {}  # (topic, partition, offset) -> value
    for topic, reason, value in poison:
        md = producer.send(topic, key=key, value=value).get(timeout=30)
        sent[(topic, md.partition, md.offset)] = reason
        values[(topic, md.partition, md.offset)] = value
    # Good records after the poison, in the same partitions: they must be processed.
    after: list[tuple[str, BaseModel]] = [
        (TOPIC_INTERACTIONS, good),
        (TOPIC_FEEDBACK, feedback(f"{conv}-e1", good.response_id, conv, "thumb", 1)),
    ]
    last = {}
    for topic, event in after:
        md = producer.send(topic, key=key, value=event.model_dump_json().encode())
        last[topic] = md.get(timeout=30)
    producer.close()

    group = f"poison-{uuid.uuid4().hex[:8]}"
    cfg = ProcessorConfig(bootstrap_servers=broker.bootstrap, group_id=group,
                          store_url=store_url, session_timeout_ms=6000)  # fmt: skip
    processor, stop = Processor(cfg), threading.Event()
    thresholds = gc.get_threshold()  # the processor sets its own: the test process's back after
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        store = PreferenceStore(store_url)

        def stored(table: Table) -> list[dict[str, Any]]:
            """Rows of this test's conversation (the topics hold the other store's run too)."""
            return [r for r in store.all(table) if r["event"]["conversation_id"] == conv]

        wait_for(lambda: [r["status"] for r in stored(s.feedback)] == ["joined"])
        assert [r["response_id"] for r in stored(s.interactions)] == [rid]
        assert [r["event_id"] for r in stored(s.feedback)] == [f"{conv}-e1"]

        mine = lambda records: {  # noqa: E731
            (r["topic"], r["partition"], r["offset"]) for r in records if r["_key"] == conv
        }
        letters = read_topic(broker.bootstrap, TOPIC_DEADLETTER, lambda rs: sent.keys() <= mine(rs))
        got = {}
        for record in letters:
            if record["_key"] == conv:
                fields = {k: v for k, v in record.items() if k != "_key"}
                letter = DeadLetter.model_validate_json(json.dumps(fields))
                got[(letter.topic, letter.partition, letter.offset)] = letter
        assert {where: d.reason for where, d in got.items()} == sent
        assert {where: d.value for where, d in got.items()} == values  # None for no value
        assert thread.is_alive()  # still going
        # Offsets are committed past the poison and the good records after it.
        committed = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group,
                                  enable_auto_commit=False)  # fmt: skip
        try:
            for topic, md in last.items():
                tp = TopicPartition(topic, md.partition)
                wait_for(lambda tp=tp, md=md: (committed.committed(tp) or 0) > md.offset)
        finally:
            committed.close()
    finally:
        stop.set()
        thread.join(30)
        gc.set_threshold(*thresholds)
    assert not thread.is_alive()
