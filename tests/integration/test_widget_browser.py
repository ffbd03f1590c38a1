"""The chat page and the embeddable widget in Debian's Chromium, on the real stack (Ray
Serve with vLLM on the tiny model, the broker, the stream processor): each control's event
reaches the broker exactly once; an offline spell holds events in the page's queue and
delivers them once online; a vote right before the tab closes still arrives (beacon);
compare mode makes a pair in the store; the widget works on a page of another origin.

"Exactly once" is read on the broker itself, by event id, after the page's queue has
emptied (every event accepted) or the page has gone (its beacons sent).

Skipped where Playwright or /usr/bin/chromium is missing."""

from __future__ import annotations

import html
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

pytest.importorskip("playwright")

from playwright.sync_api import Browser, BrowserContext, Page

from livealign.stack import LocalStack
from streaming import store as s
from streaming.events import TOPIC_FEEDBACK
from streaming.store import PreferenceStore
from tests.integration.conftest import read_topic
from tests.unit.status_browser import CHROMIUM, chromium

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}")
# The page's queue: every localStorage entry the widget keeps, empty once all is accepted.
QUEUED = """() => Object.keys(localStorage).filter(k => k.startsWith("livealign.feedback:"))
    .reduce((n, k) => n + JSON.parse(localStorage.getItem(k)).length, 0)"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1000, "height": 900})
    yield ctx
    ctx.close()


def ask(page: Page, text: str, answers: int) -> list[str]:
    """Send ``text``; the response ids of the page's first ``answers`` answers, once done."""
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    done = page.locator(".answer[data-done]")
    page.wait_for_function(
        f"() => document.querySelectorAll('.answer[data-done]').length >= {answers}",
        timeout=120_000,
    )
    return [done.nth(i).get_attribute("data-response-id") or "" for i in range(answers)]


def drained(page: Page) -> None:
    """Until every event the page made was accepted by the server."""
    page.wait_for_function(f"() => ({QUEUED})() === 0", timeout=60_000)


def on_broker(
    stack: LocalStack, rids: set[str], want: Counter[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The feedback records about ``rids`` once they hold at least ``want`` (a count per
    (kind, value); a value of "*": any)."""

    def have(records: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
        mine = [r for r in records if r["response_id"] in rids]
        got: Counter[tuple[str, str]] = Counter()
        for r in mine:
            got[(r["kind"], str(r["value"]))] += 1
            got[(r["kind"], "*")] += 1
        return got

    records = read_topic(stack.bootstrap, TOPIC_FEEDBACK, lambda rs: not want - have(rs), 90)
    assert not want - have(records), f"missing on the broker: {want - have(records)}"
    return [r for r in records if r["response_id"] in rids]


def once_each(records: list[dict[str, Any]]) -> None:
    counts = Counter(r["event_id"] for r in records)
    assert [e for e, n in counts.items() if n > 1] == [], "an event reached the broker twice"


def select_half(page: Page, selector: str) -> None:
    page.evaluate(
        """(sel) => { const node = document.querySelector(sel).firstChild;
           const range = document.createRange();
           range.setStart(node, 0); range.setEnd(node, Math.max(1, node.length >> 1));
           const s = document.getSelection(); s.removeAllRanges(); s.addRange(range); }""",
        selector,
    )


def test_every_control_reaches_the_broker_exactly_once(
    stack: LocalStack, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(stack.url)
    [rid] = ask(page, "Tell me about rivers.", 1)
    card = page.locator(".answer").first
    widget = card.locator("livealign-feedback")
    widget.locator("[data-thumb='1']").click()
    widget.locator("[data-thumb='-1']").click()  # changed: a second thumb, the latest wins
    widget.locator("[data-star='2']").click()
    widget.locator("[data-star='2']").press("ArrowRight")  # the keyboard: now 3 stars
    widget.locator("[data-act=more]").click()
    widget.locator("[data-reason='Wrong']").click()
    widget.locator("textarea").fill("Not what I asked.")
    widget.locator("[data-act=comment]").click()
    widget.locator("[data-act=copy]").click()
    select_half(page, "#answer-1")
    page.keyboard.press("Control+C")  # the browser's own copy of a selection
    widget.locator("[data-act=edit]").click()
    card.locator(".text").fill("A corrected answer about rivers.")
    widget.locator("[data-act=edit]").click()
    assert widget.locator(".la-diff ins").first.inner_text().strip()  # the change, shown
    card.locator("button", has_text="Regenerate").click()
    first, sibling = _two(page)
    assert first == rid and sibling != rid
    drained(page)
    page.close()  # dwell goes when the page is hidden: by beacon
    want = Counter(
        {("thumb", "1"): 1, ("thumb", "-1"): 1, ("rating", "2"): 1, ("rating", "3"): 1,
         ("comment", "Reasons: wrong. Not what I asked."): 1, ("click", "copy"): 2,
         ("edit", "A corrected answer about rivers."): 1, ("click", "regenerate"): 1,
         ("dwell", "*"): 1}
    )  # fmt: skip
    records = on_broker(stack, {rid}, want)
    once_each(records)
    explicit = Counter((r["kind"], str(r["value"])) for r in records if r["kind"] != "dwell")
    assert explicit == Counter({k: n for k, n in want.items() if k[0] != "dwell"}), explicit
    shares = sorted(r.get("copied_share") for r in records if r["value"] == "copy")
    assert shares[0] is not None and 0 < shares[0] < 1 and shares[1] == 1.0
    conversations = {r["conversation_id"] for r in records}
    assert len(conversations) == 1  # the regenerated sibling is in the same conversation
    on_broker(stack, {sibling}, Counter({("dwell", "*"): 1}))


def _two(page: Page) -> list[str]:
    page.wait_for_function(
        "() => document.querySelectorAll('.answer[data-done]').length >= 2", timeout=120_000
    )
    done = page.locator(".answer[data-done]")
    return [done.nth(i).get_attribute("data-response-id") or "" for i in range(2)]


def test_offline_events_wait_in_the_queue_and_arrive_once(
    stack: LocalStack, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(stack.url)
    [rid] = ask(page, "Name a mountain.", 1)
    context.set_offline(True)
    with page.expect_event("requestfailed", timeout=30_000):
        page.locator("livealign-feedback [data-thumb='1']").click()
        page.locator("livealign-feedback [data-star='5']").click()
    assert page.evaluate(f"({QUEUED})()") == 2  # kept, not lost
    context.set_offline(False)
    drained(page)
    records = on_broker(stack, {rid}, Counter({("thumb", "1"): 1, ("rating", "5"): 1}))
    once_each([r for r in records if r["kind"] in ("thumb", "rating")])
    assert len([r for r in records if r["kind"] in ("thumb", "rating")]) == 2


def test_a_vote_right_before_the_tab_closes_arrives(
    stack: LocalStack, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(stack.url)
    [rid] = ask(page, "Name a lake.", 1)
    page.locator("livealign-feedback [data-thumb='-1']").click()
    page.close()  # before the batch's 2 s: only the beacon can carry it
    records = on_broker(stack, {rid}, Counter({("thumb", "-1"): 1}))
    assert len([r for r in records if r["kind"] == "thumb"]) == 1


def test_compare_mode_makes_a_pair_in_the_store(stack: LocalStack, context: BrowserContext) -> None:
    page = context.new_page()
    page.goto(stack.url)
    page.click("[data-mode=compare]")
    left, right = ask(page, "Which sea is the largest?", 2)
    headings = page.locator(".answers.pair h2").all_inner_texts()
    assert headings == ["Answer A", "Answer B"]  # no identities before the vote
    page.click("[data-verdict=better]")  # A (left) is better
    revealed = page.locator(".answers.pair h2").all_inner_texts()
    assert all(":" in h for h in revealed), revealed  # the versions, after it
    drained(page)
    records = on_broker(stack, {left, right}, Counter({("compare", "better"): 1,
                                                       ("compare", "worse"): 1}))  # fmt: skip
    once_each([r for r in records if r["kind"] == "compare"])
    store = PreferenceStore(stack.settings.processor_config(stack.bootstrap).store_url)
    try:
        deadline = time.monotonic() + 120
        while True:
            with store.engine.connect() as conn:
                rows = conn.execute(select(s.pairs).where(s.pairs.c.provenance == "compare")).all()
            mine = [
                r for r in rows if {r.chosen_response_id, r.rejected_response_id} == {left, right}
            ]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    finally:
        store.close()
    assert len(mine) == 1, "no compare pair in the store"
    assert (mine[0].chosen_response_id, mine[0].rejected_response_id) == (left, right)
    assert mine[0].weight > 0


@contextmanager
def host_site(origin: str, page_html: str) -> Iterator[str]:
    """Another site (another port: another origin) serving one page."""
    body = page_html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = urlsplit(origin).port
    assert port is not None
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="host-site", daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_widget_works_embedded_on_another_origin(
    stack: LocalStack, http: httpx.Client, context: BrowserContext
) -> None:
    # Another site's own chat backend got this answer, and puts it on its page with
    # the widget: the response id and token are all the page holds.
    reply = http.post(
        "/v1/chat/completions",
        json={"model": "livealign", "messages": [{"role": "user", "content": "Hi there."}],
              "max_tokens": 8},
    ).json()  # fmt: skip
    info = reply["livealign"]
    text = html.escape(reply["choices"][0]["message"]["content"] or "(empty)")
    [origin] = stack.settings.feedback_origins
    page_html = f"""<!doctype html><html><body>
<p id="answer">{text} <a href="#more">more</a></p>
<livealign-feedback response-id="{info["response_id"]}" token="{info["feedback_token"]}"
  for="answer"></livealign-feedback>
<script type="module" src="{stack.url}/widget.js"></script></body></html>"""
    with host_site(origin, page_html):
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(origin)
        page.locator("livealign-feedback [data-thumb='1']").click()
        page.evaluate(
            """() => { const s = document.getSelection();
               s.selectAllChildren(document.getElementById("answer")); }"""
        )
        page.keyboard.press("Control+C")
        page.click("#answer a")
        drained(page)
        page.close()
    want = Counter({("thumb", "1"): 1, ("click", "copy"): 1, ("click", "link"): 1,
                    ("dwell", "*"): 1})  # fmt: skip
    records = on_broker(stack, {info["response_id"]}, want)
    once_each(records)
    assert len(records) == 4, records
    assert errors == [], errors  # no CORS refusal, no script error
