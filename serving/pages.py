"""The chat page (``GET /``) and the feedback widget (``GET /widget.js``): static files
in ``serving/static``, read once, served with the headers each needs.

The chat page loads only its own files (a Content-Security-Policy of 'self'): no inline
script, no secret in its source (with API keys on it asks the user for a key, kept in
``sessionStorage``). The widget is public by design: any origin may load it (CORS ``*``,
it holds nothing), and whether that origin may then *send* feedback is the feedback
route's CORS (``serving.cors``).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi.responses import HTMLResponse, Response

CHAT_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
ASSETS = {  # name -> media type
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
    "widget.js": "text/javascript; charset=utf-8",
}


@cache
def read(name: str) -> bytes:
    return files("serving").joinpath("static", name).read_bytes()


def chat_page() -> HTMLResponse:
    return HTMLResponse(
        read("chat.html"),
        headers={"Content-Security-Policy": CHAT_CSP, "Cache-Control": "no-cache"},
    )


def asset(name: str) -> Response:
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name == "widget.js":
        headers["Access-Control-Allow-Origin"] = "*"  # a module script from another site
    return Response(read(name), media_type=ASSETS[name], headers=headers)
