"""GET /healthz: 200 while accepted events are delivered or spooled, 503 with the reason
when they can be neither (the real app of serving.app on fakes: tests/unit/serving_app.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.unit.serving_app import serving


def get_healthz() -> httpx.Response:
    from serving.app import api

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get("/healthz")

    return asyncio.run(go())


def test_healthz_says_when_accepted_events_cannot_be_delivered(tmp_path: Path) -> None:
    with serving(tmp_path) as server:
        ok = get_healthz()
        assert ok.status_code == 200
        assert ok.json()["status"] == "ok" and ok.json()["delivery"] == "ok"
        assert ok.json()["spooled_events"] == 0  # the fields clients read are kept

        server.producer.problem = "producer sender thread is not running"
        degraded = get_healthz()
        assert degraded.status_code == 503
        body = degraded.json()
        assert body["status"] == "degraded"
        assert body["delivery"] == "producer sender thread is not running"
        assert body["adapter"] == ok.json()["adapter"]
