"""streaming.producer: the sender thread outlives spool and broker errors, says when it
cannot deliver, and leaves no producer, socket or thread behind per outage. The broker is
a fake KafkaProducer (no broker in unit tests), except where a real client meets a port
nobody listens on."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from monitoring import metrics as m
from streaming import producer as producer_module
from streaming.producer import EventProducer, ProducerConfig, delivery_problem
from streaming.spool import SpoolFull

WAIT_S = 30.0  # only so a broken test ends; nothing here is timed


class Event(BaseModel):
    n: int


class FakeFuture:
    """A send that the fake broker answered at once."""

    def __init__(self, metadata: Any) -> None:
        self.metadata = metadata

    def add_callback(self, f: Callable[[Any], None]) -> FakeFuture:
        f(self.metadata)
        return self

    def add_errback(self, f: Callable[[BaseException], None]) -> FakeFuture:
        return self

    def get(self, timeout: float | None = None) -> Any:
        return self.metadata


class FakeBroker:
    """What every fake KafkaProducer talks to: ``up`` decides whether it answers."""

    def __init__(self) -> None:
        self.up = True
        self.received: list[tuple[str, int | None]] = []
        self.made: list[FakeKafkaProducer] = []
        self.gate: threading.Event | None = None  # when set, construction waits on it


class FakeKafkaProducer:
    broker: FakeBroker

    def __init__(self, **configs: Any) -> None:
        if self.broker.gate is not None:
            self.broker.gate.wait(WAIT_S)
        if not self.broker.up:
            raise ConnectionError("broker down")
        self.closed = False
        self.broker.made.append(self)

    def send(self, topic: str, key: bytes | None, value: bytes) -> FakeFuture:
        if not self.broker.up:
            raise RuntimeError("broker went away")  # not a Kafka error: any exception
        self.broker.received.append((topic, json.loads(value).get("n")))  # n of an Event
        return FakeFuture(SimpleNamespace(timestamp=int(time.time() * 1000)))

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    fake = FakeBroker()
    monkeypatch.setattr(FakeKafkaProducer, "broker", fake, raising=False)
    monkeypatch.setattr(producer_module, "KafkaProducer", FakeKafkaProducer)
    return fake


@pytest.fixture
def producer(tmp_path: Path, broker: FakeBroker) -> Iterator[EventProducer]:
    p = EventProducer(ProducerConfig(spool_dir=tmp_path, max_backoff_s=0.2))
    yield p
    p.close(timeout=5)


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def epoll_fds() -> int:
    """Open epoll selectors of this process: one per kafka-python client left open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed between listing and reading
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]"
    return count


def thread_errors() -> float:
    return m.PRODUCER_THREAD_ERRORS._value.get()


def test_the_sender_outlives_a_failing_spool_and_says_so(
    producer: EventProducer, broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker.up = False
    producer.start()
    for n in range(5):
        assert producer.submit("feedback", None, Event(n=n)).result(WAIT_S) == "spooled"
    failing = threading.Event()
    failing.set()
    real_peek = producer.spool.peek

    def peek(limit: int) -> Any:
        if failing.is_set():
            raise sqlite3.OperationalError("disk I/O error")
        return real_peek(limit)

    monkeypatch.setattr(producer.spool, "peek", peek)
    errors_before = thread_errors()
    broker.up = True  # the replay now reads the spool, which fails
    until(lambda: producer.delivery_problem() is not None)
    problem = producer.delivery_problem()
    assert problem is not None and "disk I/O error" in problem
    assert thread_errors() > errors_before

    failing.clear()  # the disk is back: the same thread replays everything, in order
    until(lambda: len(producer.spool) == 0)
    assert producer._thread.is_alive()
    assert broker.received == [("feedback", n) for n in range(5)]
    until(lambda: producer.delivery_problem() is None)


def test_an_event_in_hand_when_the_sender_fails_is_kept(
    producer: EventProducer, broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_handle = producer._handle

    def broken_handle(item: Any) -> None:
        raise ValueError("a bug in the sender")

    monkeypatch.setattr(producer, "_handle", broken_handle)
    producer.start()
    assert producer.submit("interactions", None, Event(n=1)).result(WAIT_S) == "spooled"
    assert producer._thread.is_alive()
    monkeypatch.setattr(producer, "_handle", real_handle)  # fixed: what was kept is sent
    until(lambda: ("interactions", 1) in broker.received)


def test_a_broker_that_raises_anything_is_outlived(
    producer: EventProducer, broker: FakeBroker
) -> None:
    producer.start()
    assert producer.submit("feedback", None, Event(n=0)).result(WAIT_S) == "sent"
    broker.up = False  # sends raise RuntimeError, creating a producer raises
    assert producer.submit("feedback", None, Event(n=1)).result(WAIT_S) == "spooled"
    assert producer.submit("feedback", None, Event(n=2)).result(WAIT_S) == "spooled"
    broker.up = True
    until(lambda: len(producer.spool) == 0)
    assert [n for _, n in broker.received] == [0, 1, 2]
    assert producer._thread.is_alive() and producer.delivery_problem() is None
    # one producer per outage, each one before the last closed
    assert all(p.closed for p in broker.made[:-1]) and not broker.made[-1].closed


def test_a_refusing_spool_is_reported_until_it_takes_events_again(
    producer: EventProducer, broker: FakeBroker
) -> None:
    broker.up = False
    producer.start()
    producer.spool.max_bytes = 0
    with pytest.raises(SpoolFull):
        producer.submit("feedback", None, Event(n=1)).result(WAIT_S)
    problem = producer.delivery_problem()
    assert problem is not None and problem.startswith("spool refuses events")
    producer.spool.max_bytes = 1_000
    assert producer.submit("feedback", None, Event(n=2)).result(WAIT_S) == "spooled"
    assert producer.delivery_problem() is None


def test_close_during_a_slow_connect_leaves_no_producer_open(
    producer: EventProducer, broker: FakeBroker
) -> None:
    broker.gate = threading.Event()  # the sender is stuck creating its producer
    producer.start()
    producer.submit("feedback", None, Event(n=1))
    producer.close(timeout=0.1)  # gives up waiting for the sender
    broker.gate.set()  # the connect finishes after close() returned
    producer._thread.join(WAIT_S)
    assert not producer._thread.is_alive()
    assert broker.made and all(p.closed for p in broker.made)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"started": False, "alive": False, "stopping": False}, None),
        ({"started": True, "alive": True, "stopping": False}, None),
        ({"started": True, "alive": False, "stopping": True}, None),
        ({"started": True, "alive": False, "stopping": False}, "not running"),
    ],
)
def test_delivery_problem(state: dict[str, bool], expected: str | None) -> None:
    problem = delivery_problem(**state, error=None, refused=None)
    assert (problem is None) if expected is None else (expected in (problem or ""))


def test_failed_connects_to_a_dead_broker_leak_no_sockets_or_threads(tmp_path: Path) -> None:
    """A real kafka-python client against a port no one listens on: every failed attempt
    closes its client at once, not at the next garbage collection. (The library's failed
    connect sockets are left to the collector: they hang on the exception's traceback.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ProducerConfig(
        bootstrap_servers=f"127.0.0.1:{port}", spool_dir=tmp_path, max_block_ms=200
    )
    p = EventProducer(config)
    threads = {t.name for t in threading.enumerate()}
    gc.collect()
    gc.disable()  # what is closed here is closed by the producer, not by the collector
    try:
        selectors = epoll_fds()
        for _ in range(3):
            p._next_try = 0.0
            assert p._ensure_producer() is None
        assert epoll_fds() == selectors  # each attempt's client (its selector) closed
    finally:
        gc.enable()
    p.close(timeout=5)
    assert {t.name for t in threading.enumerate()} <= threads


class HangingFuture:
    """A send to a broker that died with it in flight: an idempotent producer waits for
    its answer, so neither callback nor errback runs unless the producer is force-closed."""

    def __init__(self) -> None:
        self.errbacks: list[Callable[[BaseException], None]] = []

    def add_callback(self, f: Callable[[Any], None]) -> HangingFuture:
        return self

    def add_errback(self, f: Callable[[BaseException], None]) -> HangingFuture:
        self.errbacks.append(f)
        return self


class HangingSender:
    def __init__(self, fails_in_flight: bool) -> None:
        self.fails_in_flight = fails_in_flight
        self.in_flight: list[HangingFuture] = []
        self.stopped = False

    def force_close(self) -> None:
        self.stopped = True

    def join(self, timeout: float) -> None:
        if self.fails_in_flight:  # as kafka-python's does: the batches are aborted
            for future in self.in_flight:
                for errback in future.errbacks:
                    errback(RuntimeError("Producer is closed forcefully."))
            self.in_flight.clear()


class HangingKafkaProducer(FakeKafkaProducer):
    """kafka-python's: close(timeout=0) flushes first, so it raises while a send is in
    flight, until its sender is stopped."""

    fails_in_flight = True

    def __init__(self, **configs: Any) -> None:
        super().__init__(**configs)
        self._sender = HangingSender(self.fails_in_flight)

    def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        if self.broker.up:
            return super().send(topic, key, value)
        future = HangingFuture()
        self._sender.in_flight.append(future)
        return future

    def close(self, timeout: float | None = None) -> None:
        from kafka.errors import KafkaTimeoutError

        if self._sender.in_flight and not self._sender.stopped:
            raise KafkaTimeoutError("Timeout waiting for future")
        self.closed = True


@pytest.mark.parametrize("fails_in_flight", [True, False])
def test_a_send_in_flight_when_the_broker_dies_is_spooled_once_not_lost(
    tmp_path: Path, broker: FakeBroker, monkeypatch: pytest.MonkeyPatch, fails_in_flight: bool
) -> None:
    """The broker dies with a send in flight whose future its producer never resolves
    (an interaction: no client retries it). Dropping that producer closes it for good and
    spools the send, once, whether or not the forced close fails it."""
    monkeypatch.setattr(HangingKafkaProducer, "fails_in_flight", fails_in_flight)
    monkeypatch.setattr(producer_module, "KafkaProducer", HangingKafkaProducer)
    p = EventProducer(ProducerConfig(spool_dir=tmp_path, max_backoff_s=0.2)).start()
    try:
        assert p.submit("interactions", None, Event(n=0)).result(WAIT_S) == "sent"
        broker.up = False
        future = p.submit("interactions", None, Event(n=1))
        until(lambda: bool(broker.made[0]._sender.in_flight))
        assert not future.done()  # in flight, unanswered
        p._broken.set()  # what a failing send elsewhere does: the producer is dropped
        assert future.result(WAIT_S) == "spooled"
        assert len(p.spool) == 1 and broker.made[0].closed  # closed, not left running
        broker.up = True
        until(lambda: len(p.spool) == 0)
        assert [n for _, n in broker.received] == [0, 1]
    finally:
        p.close(timeout=5)
