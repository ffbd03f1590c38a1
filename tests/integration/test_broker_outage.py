"""Broker stopped while feedback keeps arriving, then restarted: every accepted event
arrives exactly once. Runs last (file name order is not relied on: it restarts the
broker, which forgets everything, so it reads only its own events)."""

from __future__ import annotations

from typing import Any

import httpx
from openai import OpenAI

from livealign.stack import LocalStack
from streaming.events import TOPIC_FEEDBACK
from streaming.topics import ensure_topics
from tests.integration.conftest import read_topic, with_ids


def send(http: httpx.Client, info: dict[str, Any], ids: list[str]) -> list[str]:
    events = [
        {
            "response_id": info["response_id"],
            "feedback_token": info["feedback_token"],
            "kind": "dwell",
            "value": 100 + i,
            "event_id": event_id,
        }
        for i, event_id in enumerate(ids)
    ]
    r = http.post("/v1/feedback", json={"events": events})
    assert r.status_code == 202, r.text
    accepted: list[str] = r.json()["accepted"]
    return accepted


def test_outage_loses_nothing_and_duplicates_nothing(
    client: OpenAI, http: httpx.Client, stack: LocalStack
) -> None:
    assert stack.broker is not None
    info = client.chat.completions.create(
        model="livealign", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    ).model_extra["livealign"]

    before = send(http, info, [f"pre-{i}" for i in range(20)])
    seen = read_topic(stack.bootstrap, TOPIC_FEEDBACK, with_ids("event_id", set(before)))

    stack.broker.stop()
    during = []
    for round_ in range(3):  # feedback keeps arriving while the broker is down
        during += send(http, info, [f"down-{round_}-{i}" for i in range(10)])
    assert len(during) == 30
    assert http.get("/healthz").json()["spooled_events"] > 0

    stack.broker.start()
    ensure_topics(stack.bootstrap, stack.settings.partitions)  # memory storage forgot them
    after = send(http, info, [f"post-{i}" for i in range(10)])

    wanted = set(during) | set(after)
    seen += read_topic(stack.bootstrap, TOPIC_FEEDBACK, with_ids("event_id", wanted), timeout=90)
    ids = [r["event_id"] for r in seen if r["event_id"] in wanted | set(before)]
    assert sorted(ids) == sorted(before + during + after)  # each exactly once
    assert http.get("/healthz").json()["spooled_events"] == 0
