"""The status page in Debian's Chromium, driven by Playwright, against the app served by
uvicorn on 127.0.0.1 on the fakes, with a day of realistic data (tests/unit/status_data.py):
it renders, every number it shows is the JSON API's (to the digits it shows), it fetches
again by itself and shows the new numbers once the data changed, and it asks nothing of
any other host.

Skipped where Playwright or /usr/bin/chromium is missing (the dev extra installs the one,
``make system`` the other)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("playwright")

from playwright.sync_api import Locator, Page, expect

from serving.config import StatusConfig
from streaming import store as s
from streaming.store import PreferenceStore
from tests.unit import status_data
from tests.unit.serving_app import serving
from tests.unit.status_browser import CHROMIUM, chromium, served_app

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}")

NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
DASH = "—"
# What each kind of number is shown to: 3 decimals, a percentage to 1 decimal, "per 100"
# to 1 decimal, seconds to 2. A shown number is the API's if it is within half a unit.
SCORE, SHARE, PER_100, SECONDS = 0.0005, 0.0005, 0.0005, 0.005


class Site:
    def __init__(self, url: str, server: Any, page: Page) -> None:
        self.url, self.server, self.page = url, server, page
        self.requested: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requested.append(r.url))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self) -> None:
        self.page.goto(f"{self.url}/status")
        self.page.wait_for_selector(f"body[data-generated='{status_data.NOW_MS}']")

    def report(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/v1/status", timeout=30)
        answer.raise_for_status()
        report: dict[str, Any] = answer.json()
        return report


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with serving(tmp_path, StatusConfig(cache_s=0, refresh_s=0.2)) as server:
        store = PreferenceStore(server.config.store_url)
        status_data.fill(tmp_path / "adapters", server.adapters.registry, store)
        store.close()
        status_data.follow(server.adapters, server.adapters.registry)
        server.board.clock = lambda: status_data.NOW_MS
        with served_app() as url, chromium() as browser:
            page = browser.new_page()
            yield Site(url, server, page)
            page.close()


def shown(cell: Locator, percent: bool = False) -> float | None:
    """The number a cell shows (its first one), a percentage as a fraction; None for —."""
    text = cell.inner_text().strip()
    if text == DASH:
        return None
    found = NUMBER.search(text)
    assert found, f"no number in {text!r}"
    value = float(found.group().replace(",", ""))
    return value / 100 if percent else value


def near(got: float | None, want: float | None, within: float) -> bool:
    if got is None or want is None:
        return got is want
    return abs(got - want) <= within + 1e-9


def test_the_page_shows_the_apis_numbers(site: Site) -> None:
    site.open()
    report, page = site.report(), site.page
    assert page.locator('[data-field="serving.stable"]').inner_text() == report["serving"]["stable"]
    assert page.locator('[data-field="serving.canary"]').inner_text() == report["serving"]["canary"]
    for v in report["versions"]:
        row = page.locator(f'#versions tr[data-ref="{v["ref"]}"]')
        assert shown(row.locator('[data-field="live.answers"]')) == v["live"]["answers"]
        assert near(shown(row.locator('[data-field="live.mean"]')), v["live"]["mean"], SCORE)
        assert shown(row.locator('[data-field="n_pairs"]')) == v["n_pairs"]
        for key in ("reward_accuracy", "pref_accuracy", "win_rate", "nll_increase"):
            assert near(shown(row.locator(f'[data-field="gate.{key}"]')), v["gate"][key], SCORE)
        assert v["role"].replace("_", " ") in row.inner_text()
    canary = report["canary"]
    assert near(shown(page.locator('[data-field="canary.weight"]'), True), canary["weight"], SHARE)
    for arm in canary["arms"]:
        row = page.locator(f'#arms tr[data-arm="{arm["arm"]}"]')
        assert shown(row.locator('[data-field="conversations"]')) == arm["conversations"]
        assert near(shown(row.locator('[data-field="mean_score"]')), arm["mean_score"], SCORE)
        assert near(shown(row.locator('[data-field="share"]'), True), arm["share"], SHARE)
        latency = shown(row.locator('[data-field="latency_p95_s"]'))
        assert near(latency, arm["latency_p95_s"], SECONDS)
    estimate = shown(page.locator('[data-field="decision.estimate"]'))
    assert near(estimate, canary["decision"]["estimate"], SCORE)
    assert shown(page.locator('[data-field="feedback.answers"]')) == report["feedback"]["answers"]
    for rate in report["feedback"]["kinds"]:
        row = page.locator(f'#feedback tr[data-kind="{rate["kind"]}"]')
        assert shown(row.locator('[data-field="events"]')) == rate["events"]
        per_100 = shown(row.locator('[data-field="per_answer"]'))
        assert near(per_100 and per_100 / 100, rate["per_answer"], PER_100)
    for scenario, weights in report["fusion"]["weights"].items():
        for signal, weight in weights.items():
            cell = page.locator(
                f'#fusion tr[data-signal="{signal}"] td[data-scenario="{scenario}"]'
            )
            assert near(shown(cell), weight, SCORE)
    # The chart: one line per adapter, one dot per point.
    assert page.locator("#chart path").count() == len({p["adapter"] for p in report["series"]})
    assert page.locator("#chart circle").count() == len(report["series"]) > 0
    assert page.locator("#rounds tbody tr").count() == len(report["rounds"])
    assert site.errors == []  # a refused script or style would be a console error
    assert all(url.startswith(site.url) for url in site.requested), site.requested


def test_the_page_refreshes_itself(site: Site) -> None:
    site.open()
    page, registry = site.page, site.server.adapters.registry
    weight = page.locator('[data-field="canary.weight"]')
    answers = page.locator('#versions tr[data-ref="livealign@5"] [data-field="live.answers"]')
    expect(weight).to_have_text("25.0%")
    before = shown(answers)
    assert before is not None
    registry.set_state(canary_weight=0.5, action="canary_step", reason="the test")
    store = PreferenceStore(site.server.config.store_url)
    with store.transaction() as tx:
        late = status_data.NOW_MS - 5 * status_data.MINUTE
        store.upsert(tx, s.outcomes, [{
            "response_id": "a-new-answer", "conversation_id": "c", "adapter": "livealign@5",
            "arm": "canary", "created_ms": late, "score": 0.9, "confidence": 0.7,
            "n_signals": 2, "thumbs_up": 1, "thumbs_down": 0, "regenerated": False,
            "error": False, "completion_tokens": 50, "latency_ms": 900.0, "ttft_ms": 90.0,
            "updated_ms": late,
        }])  # fmt: skip
    store.close()
    # No reload: the page fetches again by itself (every 0.2 s here).
    expect(weight).to_have_text("50.0%", timeout=30_000)
    expect(answers).to_have_text(f"{int(before) + 1:,}", timeout=30_000)
    assert site.report()["canary"]["weight"] == 0.5
    assert site.errors == []
