"""The end of a batch: the order in which a processed batch leaves the processor.

    1. store commit   the batch's events, records and fuser state, in one transaction
                      (``Processor.process`` commits it before the checkpoint runs)
    2. publish        the records to ``livealign.preferences``
    3. flush          wait until the broker acknowledged every one of them
    4. offsets        commit the consumer's offsets

A crash before 1 leaves nothing: the batch is consumed again. A crash between 1 and 4
replays the batch: the store finds its events already stored and changes nothing, so the
store (what the trainer and the canary controller read) has every record exactly once.
Offsets are never ahead of what is stored. What the crash can cost is on the topic: the
records of a batch stored but not yet published are not published again on the replay
(the store is the truth; a transactional outbox would close that gap).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError

from streaming.events import TOPIC_PREFERENCES, PreferencePair
from streaming.records import Record

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    consumer: KafkaConsumer
    producer: KafkaProducer
    flush_timeout_s: float

    def commit(self, records: list[Record]) -> None:
        """Steps 2 to 4, for a batch whose store transaction (step 1) has committed.

        Offsets the group no longer accepts (it rebalanced meanwhile: a broker restart,
        another instance joining, a batch longer than the poll interval) are not an
        error: the batch is stored, whoever now owns its partitions reads it again, and
        finds it stored. The processor goes on; the next poll rejoins the group."""
        self.publish(records)
        try:
            self.consumer.commit()
        except CommitFailedError as exc:
            log.warning("offsets not committed, the batch will be read again: %s", exc)

    def publish(self, records: list[Record]) -> None:
        """Steps 2 and 3 alone: for records made outside a batch (when responses' feedback
        windows close), whose store transaction has committed."""
        for rec in records:
            value = rec.model_dump_json().encode()
            self.producer.send(TOPIC_PREFERENCES, key=key(rec), value=value)
        self.producer.flush(timeout=self.flush_timeout_s)

    def close(self) -> None:
        self.consumer.close()
        self.producer.close(timeout=5)


def key(rec: Record) -> bytes:
    """A record's Kafka key: its id, so a compacted topic keeps its latest version."""
    return (rec.pair_id if isinstance(rec, PreferencePair) else rec.response_id).encode()
