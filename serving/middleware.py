"""HTTP plumbing under the routes: the body-size limit, strict JSON, and how an error is
rendered.

``BodySizeLimit`` counts a request's body as it arrives and refuses it (413) as soon as it
passes the limit, chunked or not: a 20 MB upload costs the replica at most the limit, not
20 MB read to the end first. (Ray Serve's proxy holds what arrived until the 413 is out;
uvicorn then reads the rest off the socket and drops it, so the connection stays usable.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import protocol
from serving.protocol import APIError


class ErrorJSONResponse(JSONResponse):
    """A JSON error body with non-ASCII escaped: a message quoting the client's input can
    always be encoded (Starlette's own encoder fails on a lone surrogate)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def error_response(err: APIError) -> ErrorJSONResponse:
    return ErrorJSONResponse(err.json(), status_code=err.status, headers=err.headers)


class StrictJSONRequest(Request):
    """A request whose ``json()`` is ``protocol.loads``: what FastAPI parses a typed body
    with. A refusal is raised as the stdlib's JSONDecodeError, which FastAPI reports as
    ``json_invalid`` (a 400 here) rather than as a body it could not read."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = protocol.loads(body)
            except ValueError as exc:
                raise json.JSONDecodeError(str(exc), body.decode(errors="replace"), 0) from exc
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose handler gets a ``StrictJSONRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body passed the limit, to stop the app reading. An
    HTTPException so that FastAPI passes it on rather than making it a 400 of its own."""

    code = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 in the API's error
    shape, its Content-Length judged before anything is read, a chunked body as soon as its
    chunks pass the limit. The 413 is sent from here, whatever the app makes of the
    exception that stops it reading; what it answers after that is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if not started:  # (an app answering before it read all: can't say)
                        await self._refuse(scope, receive, send)
                        refused = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the app's answer to a body it could not read: ours went out
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = APIError(413, str(BodyTooLarge(self.max_bytes).detail), code=BodyTooLarge.code)
        await error_response(err)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                return None  # malformed: the server refuses it before we are called
            # More digits than any real length has (and int() refuses thousands of them).
            return int(value) if len(value) <= 18 else 10**18
    return None
