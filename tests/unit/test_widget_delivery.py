"""The widget's delivery rules in Debian's Chromium, against the app on the fakes
(tests/unit/serving_app.py, served by uvicorn on 127.0.0.1): batches of at most 25
events, each event with its event_id from the start; a 503 is retried with the same
event_id until the server takes it; a 4xx is dropped with a console warning; the queue
lives in localStorage. The real broker and stack: tests/integration/test_widget_browser.py.

Skipped where Playwright or /usr/bin/chromium is missing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright")

from playwright.sync_api import Page, Request

from serving import tokens
from streaming.spool import SpoolError
from tests.unit.serving_app import SECRET, serving
from tests.unit.status_browser import CHROMIUM, chromium, served_app

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}")
QUEUED = """() => Object.keys(localStorage).filter(k => k.startsWith("livealign.feedback:"))
    .reduce((n, k) => n + JSON.parse(localStorage.getItem(k)).length, 0)"""


class Site:
    def __init__(self, server: Any, page: Page) -> None:
        self.server, self.page = server, page
        self.batches: list[list[str]] = []  # event ids of each POST, in order
        self.warnings: list[str] = []
        page.on("request", self._request)
        page.on("console", lambda m: self.warnings.append(m.text) if m.type == "warning" else None)

    def _request(self, request: Request) -> None:
        if request.url.split("?")[0].endswith("/v1/feedback") and request.post_data:
            self.batches.append([e["event_id"] for e in json.loads(request.post_data)["events"]])

    def send(self, n: int, kind: str = "dwell", value: Any = 1000) -> list[str]:
        """``n`` events from the widget's JS API; their event ids."""
        rid = "chatcmpl-test"
        token = tokens.issue(SECRET, rid, "conv-test", None, 3600)
        ids: list[str] = self.page.evaluate(
            """async ([rid, token, n, kind, value]) => {
                 const w = await import("/widget.js");
                 return Array.from({length: n}, () => w.send(rid, token, kind, value).event_id);
               }""",
            [rid, token, n, kind, value],
        )
        return ids

    def drained(self) -> None:
        self.page.wait_for_function(f"() => ({QUEUED})() === 0", timeout=30_000)

    def sent(self) -> list[str]:
        return [e.event_id for topic, _, e in self.server.producer.sent if "feedback" in topic]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with serving(tmp_path) as server, served_app() as url, chromium() as browser:
        page = browser.new_page()
        page.goto(url)
        yield Site(server, page)


def test_events_go_in_batches_of_at_most_25_each_once(site: Site) -> None:
    ids = site.send(30)
    site.drained()
    assert [len(b) for b in site.batches] == [25, 5]
    assert sorted(site.sent()) == sorted(ids)  # every one, once


def test_a_503_is_retried_with_the_same_event_id(site: Site) -> None:
    producer = site.server.producer
    submit = producer.submit

    def unavailable(topic: str, key: str | None, event: Any) -> Future[Any]:
        failed: Future[Any] = Future()
        failed.set_exception(SpoolError("spool full"))
        return failed

    producer.submit = unavailable
    with site.page.expect_response(lambda r: r.status == 503, timeout=30_000):
        [event_id] = site.send(1)
    assert site.page.evaluate(f"({QUEUED})()") == 1  # kept for the retry
    producer.submit = submit
    site.drained()
    assert site.sent() == [event_id]
    assert len(site.batches) >= 2 and all(b == [event_id] for b in site.batches)


def test_a_4xx_is_dropped_with_a_warning(site: Site) -> None:
    with site.page.expect_response(lambda r: r.status == 422, timeout=30_000):
        site.send(1, kind="thumb", value=7)
    site.drained()
    assert site.sent() == []
    assert any("refused (422)" in w for w in site.warnings), site.warnings
    assert len(site.batches) == 1  # not retried
