"""The status page on the real stack (Ray Serve with vLLM on the tiny model, the broker,
the stream processor in its own process), in Debian's Chromium: a few answers and their
feedback, settled by the processor, show on it with the fusion weights the processor
saved. The numbers it shows are those of the JSON it fetched (its own response, caught).

Skipped where Playwright or /usr/bin/chromium is missing."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from openai import OpenAI

pytest.importorskip("playwright")

from livealign.stack import LocalStack
from tests.unit.status_browser import CHROMIUM, chromium

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}")
ANSWERS = 4


def settled(http: httpx.Client, thumbs: int, timeout_s: float = 180.0) -> dict[str, Any]:
    """/v1/status once it counts ``thumbs`` thumbs on settled answers, with weights."""
    deadline = time.monotonic() + timeout_s
    while True:
        report: dict[str, Any] = http.get("/v1/status").json()
        kinds = {k["kind"]: k["events"] for k in (report["feedback"] or {}).get("kinds", [])}
        if kinds.get("thumb", 0) >= thumbs and report["fusion"] is not None:
            return report
        assert time.monotonic() < deadline, f"not settled in {timeout_s:.0f} s: {report}"
        time.sleep(1.0)


def test_the_page_shows_the_stacks_feedback_and_weights(
    stack: LocalStack, client: OpenAI, http: httpx.Client
) -> None:
    before = http.get("/v1/status").json()
    thumbs_before = {k["kind"]: k["events"] for k in before["feedback"]["kinds"]}["thumb"]
    for i in range(ANSWERS):
        completion = client.chat.completions.create(
            model="livealign",
            messages=[{"role": "user", "content": f"Name a colour ({i})."}],
            max_tokens=4,
            extra_body={"conversation_id": f"conv-status-{i}"},
        )
        info = completion.model_extra["livealign"]  # type: ignore[index]
        for kind, value in (("thumb", 1), ("click", "copy")):
            body = {"response_id": info["response_id"], "feedback_token": info["feedback_token"],
                    "kind": kind, "value": value}  # fmt: skip
            assert http.post("/v1/feedback", json=body).status_code == 202
    settled(http, thumbs_before + ANSWERS)

    with chromium() as browser:
        page = browser.new_page()
        requested: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        with page.expect_response(lambda r: r.url.endswith("/v1/status")) as caught:
            page.goto(f"{stack.url}/status")
        report = caught.value.json()
        page.wait_for_selector(f"body[data-generated='{report['generated_ms']}']")
        text = page.locator('[data-field="serving.stable"]').inner_text()
        assert text == report["serving"]["stable"]
        answers = page.locator('[data-field="feedback.answers"]').inner_text()
        assert int(answers.replace(",", "")) == report["feedback"]["answers"] >= ANSWERS
        for rate in report["feedback"]["kinds"]:
            row = page.locator(f'#feedback tr[data-kind="{rate["kind"]}"]')
            shown = row.locator('[data-field="events"]').inner_text()
            assert int(shown.replace(",", "")) == rate["events"]
        for scenario, weights in report["fusion"]["weights"].items():
            for signal, weight in weights.items():
                cell = page.locator(f'tr[data-signal="{signal}"] td[data-scenario="{scenario}"]')
                assert abs(float(cell.inner_text()) - weight) <= 0.0005 + 1e-9
        page.close()
    assert errors == []
    assert all(url.startswith(stack.url) for url in requested), requested
