"""The README's pictures of the chat page: ``python -m tests.unit.chat_screenshot``
writes monitoring/chat-page.png (an answer with its feedback controls: a thumb, stars, a
reason chip and an edit, its diff shown) and monitoring/chat-compare.png (compare mode
after a vote, the versions revealed); ``--out DIR`` elsewhere.

On the fakes (``tests.unit.serving_app``: every answer is "hello there"), in Debian's
Chromium at a phone-or-laptop width, so the same code draws the same pictures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import Page, ViewportSize

from tests.unit.serving_app import serving
from tests.unit.status_browser import chromium, served_app

OUT = Path(__file__).resolve().parents[2] / "monitoring"
VIEWPORT: ViewportSize = {"width": 1000, "height": 640}


def ask(page: Page, text: str, answers: int) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    page.wait_for_selector(f".answer[data-done]:nth-of-type({answers})")


def screenshots(out: Path) -> list[Path]:
    shots = [out / "chat-page.png", out / "chat-compare.png"]
    with (
        tempfile.TemporaryDirectory() as scratch,
        serving(Path(scratch)),
        served_app() as url,
        chromium() as browser,
    ):
        context = browser.new_context(viewport=VIEWPORT, locale="en-US", device_scale_factor=1)
        page = context.new_page()
        page.goto(url)
        ask(page, "Say hello, briefly.", 1)
        widget = page.locator("livealign-feedback").first
        widget.locator("[data-thumb='1']").click()
        widget.locator("[data-star='4']").click()
        widget.locator("[data-act=more]").click()
        widget.locator("[data-reason='Too short']").click()
        widget.locator("[data-act=edit]").click()
        page.locator(".answer .text").first.fill("hello there, and welcome")
        widget.locator("[data-act=edit]").click()
        widget.locator(".la-diff").wait_for()
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots[0]), full_page=True)

        page.click("[data-mode=compare]")
        ask(page, "Which greeting is better?", 1)
        page.wait_for_selector(".answers.pair .answer[data-done]:nth-of-type(2)")
        page.click("[data-verdict=better]")
        page.locator(".turn").last.screenshot(path=str(shots[1]))
        context.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder (default {OUT})")
    for path in screenshots(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
