"""CORS for the feedback route: which other sites' pages may send feedback from a browser.

Only ``POST /v1/feedback`` takes cross-origin requests, and only from the configured
origins (``ServingConfig.feedback_origins``; none: the app's own pages only). No
credentials mode: the per-response feedback token in the body is the only credential a
page holds, so cookies never matter. The widget sends its JSON as ``text/plain``, which a
browser posts without a preflight (``navigator.sendBeacon`` can send nothing else across
origins); a client that sends ``application/json`` gets its preflight answered here.
"""

from __future__ import annotations

from collections.abc import Collection

# What the route reads a body as: JSON, declared as such or as text (a beacon, a
# preflight-free fetch). Forms, the other kinds a page can post without asking, are not.
BODY_TYPES = ("application/json", "text/plain")
PREFLIGHT_MAX_AGE_S = 600


def allowed(origin: str | None, origins: Collection[str]) -> bool:
    return origin is not None and origin in origins


def response_headers(origin: str | None, origins: Collection[str]) -> dict[str, str]:
    """The headers that let the page of ``origin`` read the answer; none for a request
    from elsewhere (the browser then hides the answer from it). ``Vary`` either way: a
    cache must not hand one origin's answer to another."""
    if not allowed(origin, origins):
        return {"Vary": "Origin"}
    assert origin is not None
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight_headers(origin: str | None, origins: Collection[str]) -> dict[str, str]:
    """The answer to an OPTIONS preflight: POST with a JSON content type (and, for a
    server-side caller's browser that sends its API key, Authorization)."""
    if not allowed(origin, origins):
        return {"Vary": "Origin"}
    return {
        **response_headers(origin, origins),
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type, Authorization",
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
    }


def body_type_ok(content_type: str | None) -> bool:
    """Whether the route reads a body of this Content-Type (none given: as JSON)."""
    if not content_type:
        return True
    return content_type.split(";", 1)[0].strip().lower() in BODY_TYPES
