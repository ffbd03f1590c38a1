"""For the status page in a real browser, on the fakes: ``serving.app.api`` served by
uvicorn on 127.0.0.1 and a free port (in a thread), and Debian's Chromium driven by
Playwright (never a downloaded browser: ``playwright install`` is not used)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from playwright.sync_api import Browser, sync_playwright

from serving.app import api
from streaming.broker import free_port

CHROMIUM = Path("/usr/bin/chromium")
# No network of its own (updates, sync, safe browsing): the page must work offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers: Chromium's tabs crash there
    "--no-first-run",
]


@contextmanager
def served_app(timeout_s: float = 30.0) -> Iterator[str]:
    """The app (answered by whatever ``tests.unit.serving_app.serving`` set up) at the
    base URL yielded; stopped on the way out."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-status", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
