"""The chat page in Debian's Chromium, on the fakes (tests/unit/serving_app.py): reached and
used with the keyboard alone, readable at a phone's width, and in compare mode the two
answers' versions hidden until the vote. Skipped where Playwright or /usr/bin/chromium
is missing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright")

from playwright.sync_api import Browser, Page

from tests.unit.chat_screenshot import ask
from tests.unit.serving_app import serving
from tests.unit.status_browser import CHROMIUM, chromium, served_app

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}")

# The label of the focused control, inside a widget's shadow root where it is in one.
FOCUSED = """() => {
  let el = document.activeElement;
  while (el && el.shadowRoot && el.shadowRoot.activeElement) el = el.shadowRoot.activeElement;
  return el ? (el.getAttribute("aria-label") || el.textContent.trim()) : null;
}"""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[Any, str, Browser]]:
    with serving(tmp_path) as server, served_app() as url, chromium() as browser:
        yield server, url, browser


def thumbs(server: Any) -> list[int]:
    return [e.value for t, _, e in server.producer.sent if "feedback" in t and e.kind == "thumb"]


def test_an_answer_is_asked_for_and_rated_with_the_keyboard_alone(
    app: tuple[Any, str, Browser],
) -> None:
    server, url, browser = app
    page = browser.new_page()
    page.goto(url)
    page.focus("#prompt")
    page.keyboard.type("Say hello.")
    page.keyboard.press("Enter")  # Enter sends
    page.wait_for_selector(".answer[data-done]")
    for _ in range(40):  # Tab on from the prompt to the answer's "Good" button
        if page.evaluate(FOCUSED) == "Good answer":
            break
        page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED) == "Good answer"
    page.keyboard.press("Space")
    for _ in range(100):  # the widget sends a batch within 2 s
        if thumbs(server):
            break
        page.wait_for_timeout(100)
    assert thumbs(server) == [1]


def overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than its viewport (0: no sideways scroll)."""
    width: int = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return width


@pytest.mark.parametrize("mode", ["chat", "compare"])
def test_it_fits_a_phone_width(app: tuple[Any, str, Browser], mode: str) -> None:
    _, url, browser = app
    page = browser.new_page(viewport={"width": 360, "height": 740})
    page.goto(url)
    page.click(f"[data-mode={mode}]")
    ask(page, "A question long enough to wrap on a narrow screen, with a few more words.", 1)
    if mode == "compare":
        page.wait_for_selector(".answers.pair .answer[data-done]:nth-of-type(2)")
    assert overflow(page) == 0
    # The feedback controls (in compare mode, the vote buttons) are all on the screen.
    controls = page.locator("livealign-feedback" if mode == "chat" else ".votes").first
    box = controls.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360


def test_compare_hides_which_version_answered_until_the_vote(
    app: tuple[Any, str, Browser],
) -> None:
    _, url, browser = app
    page = browser.new_page()
    page.goto(url)
    page.click("[data-mode=compare]")
    ask(page, "Which greeting is better?", 1)
    page.wait_for_selector(".answers.pair .answer[data-done]:nth-of-type(2)")
    headings = page.locator(".answers.pair .answer h2")
    assert headings.all_text_contents() == ["Answer A", "Answer B"]
    page.click("[data-verdict=tie]")
    named = headings.all_text_contents()
    assert all(h.startswith(("Answer A: ", "Answer B: ")) for h in named), named


# Every control's accessible name (aria-label, else its text, else the <label> it is in
# or that names it), in the page and in each widget's shadow root.
UNNAMED = """() => {
  const roots = [document, ...[...document.querySelectorAll("*")].map(e => e.shadowRoot)
    .filter(Boolean)];
  const named = (el) => (el.getAttribute("aria-label") || el.textContent || "").trim() ||
    (el.closest("label")?.textContent || "").trim() ||
    (el.id && el.getRootNode().querySelector(`label[for="${el.id}"]`));
  return roots.flatMap(r => [...r.querySelectorAll("button, textarea, input, select")])
    .filter(el => !el.hidden && !named(el)).map(el => el.outerHTML.slice(0, 80));
}"""


def test_every_control_has_a_name_a_screen_reader_can_read(
    app: tuple[Any, str, Browser],
) -> None:
    _, url, browser = app
    page = browser.new_page()
    page.goto(url)
    ask(page, "Say hello.", 1)
    page.locator("livealign-feedback").first.locator("[data-act=more]").click()
    assert page.evaluate(UNNAMED) == []
    page.click("[data-mode=compare]")
    ask(page, "Which greeting is better?", 2)
    assert page.evaluate(UNNAMED) == []
