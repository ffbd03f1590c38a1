"""A feedback batch waits for the broker or the spool once, for at most the delivery
timeout, however many of its events are still unanswered: waited for one after the
other, a batch of n such events kept its request n timeouts long (the chaos bench saw
two-event batches answered after 30 s, past its clients' timeout, while the broker was
down). The producer is a fake."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

import pytest

from serving import feedback as feedback_module
from serving import tokens
from serving.feedback import FeedbackDesk
from streaming.spool import SpoolFull

SECRET = b"s" * 32


class Producer:
    """Answers the events by value: 0 sent, 1 refused by the spool, anything else never."""

    def submit(self, topic: str, key: str | None, event: Any) -> Future[str]:
        future: Future[str] = Future()
        if event.value == 0:
            future.set_result("sent")
        elif event.value == 1:
            future.set_exception(SpoolFull("full"))
        return future


def item(event_id: str, value: int) -> dict[str, Any]:
    token = tokens.issue(SECRET, "r1", "c1", None, 3600)
    return {"response_id": "r1", "feedback_token": token, "kind": "dwell", "value": value,
            "event_id": event_id}  # fmt: skip


def test_one_wait_per_batch_and_each_event_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[tuple[int, float | None]] = []
    real_wait = asyncio.wait

    async def wait(futures: Any, timeout: float | None = None) -> Any:
        waits.append((len(futures), timeout))
        return await real_wait(futures, timeout=timeout)

    monkeypatch.setattr(feedback_module.asyncio, "wait", wait)
    desk = FeedbackDesk(Producer(), SECRET, max_batch=10, delivery_timeout_s=0.05)  # type: ignore[arg-type]
    batch = [item("sent", 0), item("full", 1), item("never-1", 2), item("never-2", 3)]
    result = asyncio.run(desk.accept(batch))
    assert waits == [(4, 0.05)]  # the whole batch, once, within the delivery timeout
    assert result.accepted == ["sent"]
    assert [(r.index, r.status, r.event_id) for r in result.rejected] == [
        (1, 503, "full"), (2, 503, "never-1"), (3, 503, "never-2"),
    ]  # fmt: skip
    assert "timeout" in result.rejected[1].error and "full" in result.rejected[0].error
