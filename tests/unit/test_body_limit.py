"""serving.middleware.BodySizeLimit: a body over the limit is refused (413) as soon as it
passes the limit, chunked or with a Content-Length, without the rest being read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.limits import LIMITS
from serving.middleware import BodySizeLimit
from tests.unit.serving_app import serving

LIMIT = 64 * 1024
CHUNK = 16 * 1024
HUGE = 20 * 1024 * 1024


class Upload:
    """A request body of ``total`` bytes in chunks, counting what was taken of it."""

    def __init__(self, total: int, chunk: int = CHUNK) -> None:
        self.total, self.chunk, self.taken = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.taken < self.total:
            self.taken += self.chunk
            yield b"x" * self.chunk


async def _length(request: Request) -> JSONResponse:
    return JSONResponse({"read": len(await request.body())})


def plain_app() -> Starlette:
    return Starlette(
        routes=[Route("/", _length, methods=["POST"])],
        middleware=[Middleware(BodySizeLimit, max_bytes=LIMIT)],
    )


def post(app: object, content: object, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/", content=content, headers=headers)  # type: ignore[arg-type]

    return asyncio.run(go())


def test_a_chunked_20_mb_body_is_refused_after_the_limit_not_read_to_its_end() -> None:
    upload = Upload(HUGE)
    r = post(plain_app(), upload)
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "too_large" and str(LIMIT) in error["message"]
    assert upload.taken <= LIMIT + 2 * CHUNK  # not the 20 MB


def test_a_declared_content_length_over_the_limit_is_refused_before_any_read() -> None:
    upload = Upload(HUGE)
    r = post(plain_app(), upload, headers={"Content-Length": str(HUGE)})
    assert r.status_code == 413 and upload.taken == 0


def test_bodies_up_to_the_limit_pass_whole() -> None:
    assert post(plain_app(), Upload(LIMIT)).json() == {"read": LIMIT}
    assert post(plain_app(), b"y" * LIMIT).json() == {"read": LIMIT}
    assert post(plain_app(), b"").json() == {"read": 0}


def test_the_served_routes_refuse_a_body_over_the_api_limit_in_the_error_shape(
    tmp_path: Path,
) -> None:
    from serving.app import api

    with serving(tmp_path):
        for path in ("/v1/chat/completions", "/v1/feedback"):
            upload = Upload(HUGE, chunk=64 * 1024)

            async def go(path: str = path, upload: Upload = upload) -> httpx.Response:
                transport = httpx.ASGITransport(app=api)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    return await c.post(
                        path, content=upload, headers={"content-type": "application/json"}
                    )

            r = asyncio.run(go())
            assert r.status_code == 413, (path, r.text)
            assert r.json()["error"]["code"] == "too_large"
            assert upload.taken <= LIMITS.max_body_bytes + 2 * upload.chunk
