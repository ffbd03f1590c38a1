"""The end of a batch: the order in which a processed batch leaves the processor.

    1. store commit   the batch's events, records and fuser state, in one transaction
                      (``Processor.process`` commits it before the checkpoint runs)
    2. dead letters   the batch's poison records to ``livealign.deadletter``, each one
                      acknowledged by the broker (retried, with backoff, until it is)
    3. publish        the records to ``livealign.preferences``
    4. flush          wait (up to the flush timeout) until the broker acknowledged them
    5. offsets        commit the consumer's offsets

A crash before 1 leaves nothing: the batch is consumed again. A crash between 1 and 5
replays the batch: the store finds its events already stored and changes nothing, so the
store (what the trainer and the canary controller read) has every record exactly once.
Offsets are never ahead of what is stored. What the crash can cost is on the topic: the
records of a batch stored but not yet published are not published again on the replay
(the store is the truth; a transactional outbox would close that gap). A dead letter is
never lost: offsets pass a poison record only once its letter is acknowledged, and a
crash before that sends the letter again on the replay (a duplicate at most). While the
dead-letter topic cannot take letters the processor retries and commits nothing; a stop
asked for meanwhile ends the loop without committing.

A broker that is away (down, restarting) stops neither the processor nor its loop: the
records the topic did not take in time cost the topic what a crash would (they are in the
store), and offsets not committed are the replay above.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from streaming.events import TOPIC_DEADLETTER, TOPIC_PREFERENCES, DeadLetter, PreferencePair
from streaming.records import Record

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    consumer: KafkaConsumer
    producer: KafkaProducer
    flush_timeout_s: float
    max_backoff_s: float = 30.0

    def commit(
        self,
        records: list[Record],
        letters: Sequence[DeadLetter] = (),
        stop: threading.Event | None = None,
    ) -> bool:
        """Steps 2 to 5, for a batch whose store transaction (step 1) has committed.
        Returns False when ``stop`` was set while dead letters could not be sent: then
        nothing was committed.

        Offsets the group no longer accepts (it rebalanced meanwhile: a broker restart,
        another instance joining, a batch longer than the poll interval), or that cannot
        be committed in time (the broker is away), are not an error: the batch is stored,
        whoever next reads its partitions reads it again, and finds it stored. The
        processor goes on; the next poll rejoins the group."""
        if letters and not self.dead_letters(letters, stop or threading.Event()):
            return False
        self.publish(records)
        try:
            self.consumer.commit()
        except KafkaError as exc:  # CommitFailedError, or a timeout
            log.warning("offsets not committed, the batch will be read again: %s", exc)
        return True

    def dead_letters(self, letters: Sequence[DeadLetter], stop: threading.Event) -> bool:
        """Step 2: send the letters until the broker acknowledged each one, waiting longer
        after each failed try; False if ``stop`` is set first."""
        backoff = min(0.5, self.max_backoff_s)
        pending = list(letters)
        while pending := self._send_letters(pending):
            log.warning(
                "%d dead letters not acknowledged; offsets wait, next try in %.1fs",
                len(pending), backoff,
            )  # fmt: skip
            if stop.wait(backoff):
                return False
            backoff = min(backoff * 2, self.max_backoff_s)
        return True

    def _send_letters(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        """Send each letter; returns those the broker did not acknowledge in time."""
        sent, failed = [], []
        for letter in letters:
            value = letter.model_dump_json().encode()
            try:
                future = self.producer.send(TOPIC_DEADLETTER, key=letter.key, value=value)
            except KafkaError as exc:  # no metadata in time: the broker is away
                log.debug("dead letter not sent: %s", exc)
                failed.append(letter)
                continue
            sent.append((letter, future))
        deadline = time.monotonic() + self.flush_timeout_s
        for letter, future in sent:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as exc:
                log.debug("dead letter not acknowledged: %s", exc)
                failed.append(letter)
        return failed

    def publish(self, records: list[Record]) -> None:
        """Steps 3 and 4; alone for records made outside a batch (when responses' feedback
        windows close), whose store transaction has committed. Records the broker did not
        acknowledge within the flush timeout are logged, not raised: the store holds them
        (the producer still sends them if the broker comes back before they expire)."""
        try:
            for rec in records:
                value = rec.model_dump_json().encode()
                self.producer.send(TOPIC_PREFERENCES, key=key(rec), value=value)
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            log.warning(
                "%d records not acknowledged by %s in %.0f s (they are in the store): %s",
                len(records), TOPIC_PREFERENCES, self.flush_timeout_s, exc,
            )  # fmt: skip

    def close(self) -> None:
        self.consumer.close()
        try:
            self.producer.close(timeout=5)
        except KafkaError as exc:  # the broker away at a stop: the store has the records
            log.warning("records not flushed to %s at close: %s", TOPIC_PREFERENCES, exc)


def key(rec: Record) -> bytes:
    """A record's Kafka key: its id, so a compacted topic keeps its latest version."""
    return (rec.pair_id if isinstance(rec, PreferencePair) else rec.response_id).encode()
