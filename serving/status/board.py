"""The status page's server side: the page itself, and its JSON made at most once per
``cache_s`` whatever the number of pages polling, off the event loop, one at a time.

The page (``serving/static/status.html``) is one self-contained file: its script and style
are inline and it fetches only ``v1/status`` from where it was served. Its
Content-Security-Policy allows exactly that (the inline parts by their hashes), so a
browser refuses anything else, off the machine or not.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from fastapi.responses import HTMLResponse

from serving.config import StatusConfig
from serving.protocol import APIError
from serving.status.assemble import assemble
from serving.status.models import StatusReport
from serving.status.sources import StatusSources
from streaming.events import now_ms

PAGE = ("static", "status.html")


@dataclass(frozen=True)
class Page:
    html: bytes
    csp: str


@cache
def page() -> Page:
    html = files("serving").joinpath(*PAGE).read_bytes()
    hashes = {
        tag: [_sha256(m.group(1)) for m in re.finditer(rb"<%b>(.*?)</%b>" % (tag, tag), html, re.S)]
        for tag in (b"script", b"style")
    }
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(hashes[b"script"]),
            "style-src " + " ".join(hashes[b"style"]),
            "connect-src 'self'",
            "img-src data:",  # the empty favicon: no request for /favicon.ico
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html, csp)


def _sha256(content: bytes) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(content).digest()).decode()}'"


class StatusBoard:
    def __init__(
        self, config: StatusConfig, sources: StatusSources, clock: Callable[[], int] = now_ms
    ) -> None:
        self.config = config
        self.sources = sources
        self.clock = clock
        self._latest: StatusReport | None = None
        self._running: asyncio.Future[StatusReport] | None = None

    def _enabled(self) -> None:
        if not self.config.enabled:
            raise APIError(404, "the status page is off (status.enabled)", code="not_found")

    def page(self) -> HTMLResponse:
        self._enabled()
        p = page()
        return HTMLResponse(
            p.html,
            headers={"Content-Security-Policy": p.csp, "Cache-Control": "no-cache"},
        )

    async def report(self, replica: Mapping[str, Any]) -> StatusReport:
        """The latest report if it is fresh enough, else a new one. While one is being
        made, every request waits for that one: a slow store never has more than one
        assembly running, however many pages poll."""
        self._enabled()
        latest = self._latest
        if latest is not None and self.clock() - latest.generated_ms < self.config.cache_s * 1000:
            return latest
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self._assemble, replica))
        try:
            return await asyncio.wait_for(asyncio.shield(self._running), self.config.timeout_s)
        except TimeoutError as exc:
            raise APIError(
                503,
                f"the status took over {self.config.timeout_s:g} s to read (a slow store?)",
                type_="server_error",
                code="status_timeout",
            ) from exc

    def _assemble(self, replica: Mapping[str, Any]) -> StatusReport:
        report = assemble(self.config, self.sources.read(replica, self.clock()))
        self._latest = report
        return report
