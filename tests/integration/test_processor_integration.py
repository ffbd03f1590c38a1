"""The stream processor over the real broker: late interactions, duplicates, a processor
killed mid-stream and restarted, and two processors sharing one consumer group.

Each test uses its own consumer group and store, and its own conversation ids; the
processor also sees the rest of the session's events, which only adds realism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table

from livealign.stack import LocalStack
from streaming import store as s
from streaming.events import (
    ChatMessage,
    FeedbackEvent,
    FeedbackKind,
    InteractionEvent,
    now_ms,
)
from streaming.store import PreferenceStore


def interaction(
    rid: str, conv: str, prompt: str = "Explain DNS.", text: str = "DNS maps names."
) -> InteractionEvent:
    return InteractionEvent(
        response_id=rid, conversation_id=conv, user_hash="u-1", model="livealign",
        adapter="base", arm="stable", messages=[ChatMessage(role="user", content=prompt)],
        completion=text, prompt_tokens=5, completion_tokens=4, ttft_ms=1, latency_ms=2,
        created_ms=now_ms(),
    )  # fmt: skip


def feedback(
    eid: str, rid: str, conv: str, kind: str, value: object, rater: str = "r-1"
) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=eid, response_id=rid, conversation_id=conv, user_hash=rater,
        kind=FeedbackKind(kind), value=value, received_ms=now_ms(),  # type: ignore[arg-type]
    )  # fmt: skip


class ProcessorProc:
    """``livealign processor`` in its own process, as in production."""

    def __init__(self, stack: LocalStack, group: str, store_url: str, log: Path) -> None:
        cmd = [
            sys.executable, "-m", "livealign.cli", "processor", "--kafka", stack.bootstrap,
            "--store", store_url, "--group", group, "--session-timeout-ms", "6000",
            "--home", str(stack.settings.home),
        ]  # fmt: skip
        self.log = log
        env = {**os.environ, "LIVEALIGN_SETTLE_S": "1"}  # feedback windows close at once
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def processors(stack: LocalStack, tmp_path: Path) -> Iterator[Callable[..., ProcessorProc]]:
    started: list[ProcessorProc] = []
    group = f"test-{uuid.uuid4().hex[:8]}"

    def start(name: str = "p") -> ProcessorProc:
        proc = ProcessorProc(
            stack, group, f"sqlite:///{tmp_path / 'prefs.sqlite'}", tmp_path / f"{name}.log"
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def send_edited(send: Callable[..., None], rid: str, conv: str, i: int) -> None:
    """An answer and the user's rewrite of it: one edit pair expected."""
    send(interaction(rid, conv, prompt=f"Question {i}?", text=f"Answer {i}."))
    rewrite = f"A much better answer number {i}, rewritten."
    send(feedback(f"e-{rid}", rid, conv, "edit", rewrite, rater=f"editor-{i}"))


def rows_of(store: PreferenceStore, table: Table, prefix: str) -> list[dict[str, Any]]:
    """Rows about responses whose id starts with ``prefix`` (this test's own)."""
    col = "rejected_response_id" if table is s.pairs else "response_id"
    return [r for r in store.all(table) if str(r[col]).startswith(prefix)]


def wait_for(check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


def db(tmp_path: Path) -> PreferenceStore:
    return PreferenceStore(f"sqlite:///{tmp_path / 'prefs.sqlite'}")


def test_late_interaction_duplicates_and_edits(
    stack: LocalStack,
    send: Callable[..., None],
    processors: Callable[..., ProcessorProc],
    tmp_path: Path,
) -> None:
    conv = f"conv-{uuid.uuid4().hex[:8]}"
    processors()
    # Feedback first; its interaction only later: it must be held, then joined.
    send(feedback("fb-early-1", "r-late", conv, "thumb", -1))
    send(
        feedback(
            "fb-early-2", "r-late", conv, "edit", "DNS translates domain names to IP addresses."
        )
    )
    send(
        feedback(
            "fb-early-2", "r-late", conv, "edit", "DNS translates domain names to IP addresses."
        )
    )  # dup
    send(feedback("fb-orphan", "r-never", conv, "thumb", 1))
    time.sleep(2)
    send(interaction("r-late", conv))
    store = db(tmp_path)
    wait_for(lambda: store.count(s.pairs) >= 1 and store.count(s.labels) >= 1)
    time.sleep(3)  # let any wrongly repeated work land before counting
    rows = {r["event_id"]: r for r in store.all(s.feedback)}
    assert rows["fb-early-1"]["status"] == "joined" and rows["fb-early-2"]["status"] == "joined"
    assert rows["fb-orphan"]["status"] == "pending"  # grace period (300 s) not over yet
    [pair] = [p for p in store.all(s.pairs) if p["rejected_response_id"] == "r-late"]
    assert pair["provenance"] == "edit" and pair["chosen"].startswith("DNS translates")
    assert pair["rejected"] == "DNS maps names."
    [label] = [x for x in store.all(s.labels) if x["response_id"] == "r-late"]
    assert label["desirable"] is False or label["desirable"] == 0


def test_killed_processor_restarts_with_exactly_one_record_per_input(
    send: Callable[..., None], processors: Callable[..., ProcessorProc], tmp_path: Path
) -> None:
    n = 300
    prefix = f"r-{uuid.uuid4().hex[:8]}"
    first = processors("first")
    for i in range(n):
        rid, conv = f"{prefix}-{i}", f"{prefix}-conv-{i % 17}"
        send_edited(send, rid, conv, i)
        send(feedback(f"t-{rid}", rid, conv, "thumb", -1, rater=f"rater-{i}"))
    store = db(tmp_path)
    wait_for(lambda: len(rows_of(store, s.pairs, prefix)) > 20, timeout=120)
    first.kill()  # mid-stream, no chance to commit or clean up
    processors("second")
    wait_for(lambda: len(rows_of(store, s.pairs, prefix)) >= n, timeout=180)
    time.sleep(3)  # anything processed twice would land now
    pairs = rows_of(store, s.pairs, prefix)
    assert len(pairs) == n and len({p["rejected_response_id"] for p in pairs}) == n
    assert len(rows_of(store, s.feedback, prefix)) == 2 * n
    assert all(r["status"] == "joined" for r in rows_of(store, s.feedback, prefix))
    labels = rows_of(store, s.labels, prefix)
    assert len(labels) == len({r["response_id"] for r in labels}) > 0


def test_two_processors_share_the_partitions_and_one_takes_over(
    send: Callable[..., None], processors: Callable[..., ProcessorProc], tmp_path: Path
) -> None:
    a, b = processors("a"), processors("b")
    time.sleep(8)  # both join the group (Tansu takes half the session timeout)
    prefix = f"r2-{uuid.uuid4().hex[:8]}"
    for i in range(40):  # many conversation ids: both partitions get traffic
        send_edited(send, f"{prefix}-{i}", f"{prefix}-conv-{i}", i)
    store = db(tmp_path)
    wait_for(lambda: len(rows_of(store, s.pairs, prefix)) == 40, timeout=120)
    for proc in (a, b):
        assert "partitions assigned: [(" in proc.log.read_text(), proc.log.read_text()
    b.stop()
    for i in range(40, 60):
        send_edited(send, f"{prefix}-{i}", f"{prefix}-conv-{i}", i)
    wait_for(lambda: len(rows_of(store, s.pairs, prefix)) == 60, timeout=120)
    assert a.proc.poll() is None
