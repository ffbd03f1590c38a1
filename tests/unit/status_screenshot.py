"""The README's picture of the status page: ``python -m tests.unit.status_screenshot``
writes monitoring/status-page.png (``--out`` elsewhere).

The page as a browser shows it, on the fakes with a day of realistic data
(``tests.unit.status_data``: five versions, one of them the canary at 25%), at a fixed
"now" and in UTC, so the same code draws the same picture.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import ViewportSize

from serving.config import StatusConfig
from streaming.store import PreferenceStore
from tests.unit import status_data
from tests.unit.serving_app import serving
from tests.unit.status_browser import chromium, served_app

OUT = Path(__file__).resolve().parents[2] / "monitoring" / "status-page.png"
VIEWPORT: ViewportSize = {"width": 1360, "height": 900}


def screenshot(out: Path) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        with serving(root, StatusConfig(cache_s=0)) as server:
            store = PreferenceStore(server.config.store_url)
            status_data.fill(root / "adapters", server.adapters.registry, store)
            store.close()
            status_data.follow(server.adapters, server.adapters.registry)
            server.board.clock = lambda: status_data.NOW_MS
            with served_app() as url, chromium() as browser:
                context = browser.new_context(
                    viewport=VIEWPORT, timezone_id="UTC", locale="en-US", device_scale_factor=1
                )
                page = context.new_page()
                page.goto(f"{url}/status")
                page.wait_for_selector(f"body[data-generated='{status_data.NOW_MS}']")
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
                context.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where (default {OUT})")
    print(screenshot(parser.parse_args().out))


if __name__ == "__main__":
    main()
