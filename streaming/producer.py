"""Event producer: never blocks a request, never loses an accepted event.

``submit()`` puts the event on a bounded in-memory queue and returns a future at once.
One sender thread moves events to Kafka (kafka-python, lz4, ``acks="all"``). When the
broker cannot take them (down, restarting, timing out), events go to a bounded on-disk
spool, and the sender replays the spool in order once the broker answers again,
recreating the producer first (an idempotent producer's session does not survive a
broker restart). The future resolves to ``"sent"`` once the broker acknowledged the
event or ``"spooled"`` once it is safe on disk; it fails with a ``SpoolError`` only when
both are impossible, which is counted and logged.

The sender thread outlives its own errors (a spool it cannot read, a client that
raises): it counts and logs them, backs off and goes on, until ``close()``.
``delivery_problem()`` says when accepted events cannot be delivered nor kept (the
sender is not running or keeps failing, the spool refuses), for ``/healthz``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError
from pydantic import BaseModel

from monitoring import metrics as m
from streaming.spool import Spool, SpoolError

log = logging.getLogger(__name__)

Delivery = Literal["sent", "spooled"]


class ProducerConfig(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    spool_dir: Path = Path("var/spool")
    spool_max_bytes: int = 256 * 1024 * 1024
    queue_size: int = 10_000
    linger_ms: int = 5
    request_timeout_ms: int = 3_000
    delivery_timeout_ms: int = 5_000  # after this an unacknowledged event is spooled
    max_block_ms: int = 2_000
    compression_type: str = "lz4"
    replay_batch: int = 500
    max_backoff_s: float = 5.0


@dataclass
class _Item:
    topic: str
    key: bytes | None
    value: bytes
    future: Future[Delivery] = field(default_factory=Future)


class EventProducer:
    def __init__(self, config: ProducerConfig) -> None:
        self.config = config
        self.spool = Spool.claim(config.spool_dir, config.spool_max_bytes)
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=config.queue_size)
        self._producer: KafkaProducer | None = None
        self._broken = threading.Event()  # set from kafka-python's I/O thread on errors
        self._stop = threading.Event()
        self._backoff = 0.0
        self._next_try = 0.0
        self._thread = threading.Thread(target=self._run, name="livealign-producer", daemon=True)
        self._producer_lock = threading.Lock()  # close() and the sender both drop it
        self._error: str | None = None  # the sender's last error, while it keeps failing
        self._refused: str | None = None  # why the spool refused the last event, until it takes one
        self._acked_ms: dict[str, int] = {}  # per topic: the newest acknowledged timestamp
        # Sent on the current producer, not yet acknowledged nor failed (by id): when the
        # producer is dropped, these are spooled (see _drop_producer).
        self._in_flight: dict[int, _Item] = {}
        m.SPOOL_CAPACITY.set(config.spool_max_bytes)
        self._update_gauges()

    # --- public ---------------------------------------------------------------------
    def start(self) -> EventProducer:
        self._thread.start()
        return self

    def submit(self, topic: str, key: str | None, event: BaseModel) -> Future[Delivery]:
        """Queue ``event`` for ``topic``; never blocks. Raises ``SpoolError``."""
        item = _Item(topic, key.encode() if key else None, event.model_dump_json().encode())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            # Memory queue is full (a burst, or a slow broker): disk takes the overflow.
            self._spool_item(item)
        m.PRODUCER_QUEUE.set(self._queue.qsize())
        return item.future

    def close(self, timeout: float = 10.0) -> None:
        """Stop the sender; whatever the broker has not acknowledged stays in the spool."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._drop_producer(flush_timeout=min(timeout, 5.0))
        while True:
            try:
                self._spool_item(self._queue.get_nowait())
            except queue.Empty:
                break
        self.spool.close()

    def delivery_problem(self) -> str | None:
        """Why accepted events can be neither delivered nor kept now; None when they can."""
        return delivery_problem(
            started=self._thread.ident is not None,
            alive=self._thread.is_alive(),
            stopping=self._stop.is_set(),
            error=self._error,
            refused=self._refused,
        )

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by the broker (queued or spooled)."""
        return self._queue.qsize() + len(self.spool)

    # --- sender thread ----------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            item: _Item | None = None
            try:
                if self._broken.is_set():
                    self._drop_producer(flush_timeout=0.0)
                item = self._take()
                self._step(item)
            except Exception as exc:  # anything: the thread must outlive it
                backoff = min(self.config.max_backoff_s, max(0.1, backoff * 2))
                self._on_thread_error(item, exc, backoff)
                self._stop.wait(backoff)
                continue
            if self._error is not None:
                log.info("producer sender recovered")
            backoff, self._error = 0.0, None
        # A producer this thread made after close() gave up waiting is closed here.
        self._drop_producer(flush_timeout=0.0)

    def _take(self) -> _Item | None:
        try:
            return self._queue.get(timeout=0.1)
        except queue.Empty:
            return None

    def _step(self, item: _Item | None) -> None:
        """One turn of the sender: send the queued event, or replay from the spool."""
        if item is not None:
            self._handle(item)
        elif len(self.spool) and time.monotonic() >= self._next_try:
            self._replay()
        m.PRODUCER_QUEUE.set(self._queue.qsize())

    def _on_thread_error(self, item: _Item | None, exc: Exception, backoff: float) -> None:
        m.PRODUCER_THREAD_ERRORS.inc()
        if self._error is None:  # one traceback per streak, not one per retry
            log.exception("producer sender failed; retrying in %.1fs", backoff)
        self._error = f"{type(exc).__name__}: {exc}"
        self._broken.set()  # the client may be in any state: start from a fresh one
        if item is not None and not item.future.done():
            self._spool_item(item)  # the event in hand is kept, or refused: never dropped

    def _handle(self, item: _Item) -> None:
        # Keep order: while older events wait in the spool, newer ones queue behind them.
        if len(self.spool) or self._ensure_producer() is None:
            self._spool_item(item)
            return
        self._in_flight[id(item)] = item
        try:
            fut = self._send(item.topic, item.key, item.value)
        except Exception as exc:  # KafkaTimeoutError when metadata is unavailable
            self._on_error(item, exc)
            return
        fut.add_callback(lambda md: self._on_sent(item, md))
        fut.add_errback(lambda exc: self._on_error(item, exc))

    def _on_sent(self, item: _Item, metadata: Any) -> None:
        self._in_flight.pop(id(item), None)
        m.PRODUCER_SENT.labels(item.topic).inc()
        self._acked(item.topic, metadata)
        if not item.future.done():
            item.future.set_result("sent")

    def _acked(self, topic: str, metadata: Any) -> None:
        """The newest Kafka timestamp acknowledged on ``topic``: the stream processor's
        newest processed one is compared with it (its lag in seconds, which an alert
        watches). The record's own timestamp on both sides: no two clocks are compared."""
        ts = getattr(metadata, "timestamp", None)
        if isinstance(ts, int) and ts > self._acked_ms.get(topic, 0):
            self._acked_ms[topic] = ts
            m.PRODUCER_ACKED_TS.labels(topic).set(ts / 1000)

    def _on_error(self, item: _Item, exc: BaseException) -> None:
        if self._in_flight.pop(id(item), None) is None:
            return  # its producer was dropped, and it was spooled then
        m.PRODUCER_FAILURES.labels(item.topic).inc()
        if not self._broken.is_set():  # one line per outage, not one per event
            log.warning("send to %s failed (%s); spooling until it is back", item.topic, exc)
        self._broken.set()
        self._spool_item(item)

    def _spool_item(self, item: _Item) -> None:
        try:
            self.spool.append(item.topic, item.key, item.value)
        except SpoolError as exc:
            m.PRODUCER_SPOOL_FULL.labels(item.topic).inc()
            if self._refused is None:  # one line per spell, not one per event
                log.error("event for %s refused: %s", item.topic, exc)
            self._refused = str(exc)
            if not item.future.done():
                item.future.set_exception(exc)
            return
        self._refused = None
        m.PRODUCER_SPOOLED.labels(item.topic).inc()
        self._update_gauges()
        if not item.future.done():
            item.future.set_result("spooled")

    def _replay(self) -> None:
        """Deliver the oldest spooled events; on failure back off and try again later."""
        if self._ensure_producer() is None:
            return
        batch = self.spool.peek(self.config.replay_batch)
        delivered = []
        try:
            futures = [(r, self._send(r.topic, r.key, r.value)) for r in batch]
            timeout = self.config.delivery_timeout_ms / 1000 + 1
            for record, fut in futures:
                self._acked(record.topic, fut.get(timeout=timeout))
                delivered.append(record)
        except Exception as exc:
            log.warning("spool replay stopped after %d events: %s", len(delivered), exc)
            self._broken.set()
        self.spool.remove(delivered)
        if delivered:
            self._refused = None  # room again
        for r in delivered:
            m.PRODUCER_REPLAYED.labels(r.topic).inc()
            m.PRODUCER_SENT.labels(r.topic).inc()
        self._update_gauges()
        if delivered:
            log.info("replayed %d spooled events, %d left", len(delivered), len(self.spool))

    def _send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        assert self._producer is not None
        return self._producer.send(topic, key=key, value=value)

    def _ensure_producer(self) -> KafkaProducer | None:
        if self._producer is not None:
            return self._producer
        if time.monotonic() < self._next_try:
            return None
        made: list[Any] = []  # the client a failed construction leaves open, to close

        def client(**configs: Any) -> Any:
            made.append(KafkaProducer.DEFAULT_CONFIG["kafka_client"](**configs))
            return made[-1]

        try:
            producer = KafkaProducer(
                bootstrap_servers=self.config.bootstrap_servers.split(","),
                acks="all",
                compression_type=self.config.compression_type,
                linger_ms=self.config.linger_ms,
                request_timeout_ms=self.config.request_timeout_ms,
                delivery_timeout_ms=self.config.delivery_timeout_ms,
                max_block_ms=self.config.max_block_ms,
                # kafka-python waits 30 s for a broker by default: a sender stuck that
                # long outlives close() and opens a producer no one closes.
                bootstrap_timeout_ms=self.config.max_block_ms,
                reconnect_backoff_max_ms=1_000,
                client_id="livealign-serving",
                kafka_client=client,
            )
            with self._producer_lock:
                self._producer = producer
            self._broken.clear()
            self._backoff = 0.0
            log.info("Kafka producer created for %s", self.config.bootstrap_servers)
        except Exception as exc:
            for c in made:  # its sockets and selector, now rather than at the next GC
                with contextlib.suppress(Exception):
                    c.close()
            self._schedule_retry(exc)
        return self._producer

    def _drop_producer(self, flush_timeout: float) -> None:
        """Close the current producer; unacknowledged sends fail over to the spool (a send
        the broker took but had not acknowledged yet is then sent again: a duplicate,
        which the processor drops)."""
        with self._producer_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                if flush_timeout > 0:
                    producer.flush(timeout=flush_timeout)
            except Exception as exc:
                log.warning("flush failed on close: %s", exc)
            try:
                close_now(producer)
            except Exception as exc:
                log.warning("producer close failed: %s", exc)
            self._schedule_retry(None)
        # Sends whose futures the closed producer never resolved (an idempotent producer
        # waits for the answer of a broker that died): kept, not lost.
        stranded = [self._in_flight.pop(key) for key in list(self._in_flight)]
        for item in stranded:
            self._spool_item(item)
        if stranded:
            log.warning("%d unacknowledged events spooled from the closed producer", len(stranded))
        self._broken.clear()

    def _schedule_retry(self, exc: Exception | None) -> None:
        self._backoff = min(self.config.max_backoff_s, max(0.25, self._backoff * 2))
        self._next_try = time.monotonic() + self._backoff
        if exc is not None:
            log.warning("Kafka unavailable (%s); retrying in %.1fs", exc, self._backoff)

    def _update_gauges(self) -> None:
        m.SPOOL_DEPTH.set(len(self.spool))
        m.SPOOL_BYTES.set(self.spool.size_bytes)


def close_now(producer: KafkaProducer) -> None:
    """Close ``producer`` without waiting. kafka-python's ``close(timeout=0)`` flushes
    first and raises when a send is still in flight, leaving the producer running (its
    thread, sockets and batches, which an idempotent producer retries for as long as its
    broker does not answer). Then its sender is stopped the way ``close()`` stops it after
    the flush, failing what is left in flight, and the close completes."""
    try:
        producer.close(timeout=0)
        return
    except KafkaTimeoutError:
        pass
    sender = getattr(producer, "_sender", None)  # no public close-without-flush
    if sender is None:
        raise RuntimeError("kafka-python's producer has no _sender to stop")
    sender.force_close()
    sender.join(5.0)
    producer.close(timeout=0)  # nothing in flight now


def delivery_problem(
    *, started: bool, alive: bool, stopping: bool, error: str | None, refused: str | None
) -> str | None:
    """Why the producer cannot deliver nor keep accepted events; None when it can.
    A broker that is down is no problem on its own: the spool keeps events meanwhile."""
    if started and not alive and not stopping:
        return "producer sender thread is not running"
    if error is not None:
        return f"producer sender keeps failing ({error})"
    if refused is not None:
        return f"spool refuses events ({refused})"
    return None
