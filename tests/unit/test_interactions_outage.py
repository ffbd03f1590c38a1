"""Interaction events, not only feedback, survive a broker outage: a chat answered while
the broker is down leaves its interaction event in the spool, and it reaches the topic
once the broker is back (the real app and producer; the broker a fake KafkaProducer)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from streaming.events import TOPIC_INTERACTIONS
from streaming.producer import EventProducer, ProducerConfig
from tests.unit.serving_app import MODEL, serving
from tests.unit.test_producer_resilience import FakeBroker, broker, until

__all__ = ["broker"]  # the fixture, used by name


def chat() -> httpx.Response:
    from serving.app import api

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            return await c.post("/v1/chat/completions", json=body)

    return asyncio.run(go())


def test_a_chat_during_an_outage_is_delivered_after_it(tmp_path: Path, broker: FakeBroker) -> None:
    broker.up = False
    producer = EventProducer(ProducerConfig(spool_dir=tmp_path / "spool", max_backoff_s=0.2))
    with serving(tmp_path) as server:
        server.producer = producer.start()
        try:
            r = chat()
            assert r.status_code == 200, r.text
            until(lambda: len(producer.spool) == 1)  # kept on disk while the broker is down
            assert broker.received == []
            broker.up = True
            until(lambda: len(producer.spool) == 0)
            assert [topic for topic, _ in broker.received] == [TOPIC_INTERACTIONS]
        finally:
            producer.close(timeout=5)
