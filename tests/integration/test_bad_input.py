"""Bad input against the real stack gets a clear 4xx in the API's error shape and leaves no
damage: what was reported against a running stack (each answered 500, or was taken) is
replayed here. A non-ASCII feedback token or admin key, ``seed=2**64``, a conversation id
outside Latin-1 (streamed or not, in the body or the header), 1,000 ``stop`` strings, a
body that is not strict JSON, a chunked 20 MB body; the OpenAPI document self-contained.
tests/integration/test_api_contract.py runs Schemathesis over every route.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving.limits import LIMITS

MODEL = "livealign"
HI = [{"role": "user", "content": "hi"}]


def chat(http: httpx.Client, headers: dict[str, Any] | None = None, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": HI, "max_tokens": 2, **body}
    return http.post("/v1/chat/completions", json=payload, headers=headers)


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["message"] and error["type"]
    return error


@pytest.fixture(scope="module")
def answer(http: httpx.Client) -> dict[str, Any]:
    r = chat(http, conversation_id="conv-contract")
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()["livealign"]
    return info


def test_a_non_ascii_feedback_token_is_a_403(http: httpx.Client, answer: dict[str, Any]) -> None:
    for token in ("ключ.подпись", answer["feedback_token"] + "é", "\u00e9.\u00e9"):
        body = {"response_id": answer["response_id"], "feedback_token": token,
                "kind": "thumb", "value": 1}  # fmt: skip
        error = error_of(http.post("/v1/feedback", json=body), 403)
        assert "malformed" in error["message"]


def test_a_non_ascii_or_malformed_admin_key_is_a_401_or_403(http: httpx.Client) -> None:
    missing = http.get("/admin/adapters")
    error_of(missing, 401)
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    error_of(http.get("/admin/adapters", headers={"Authorization": "Basic eDp5"}), 401)
    for key in ("Bearer ключ".encode(), b"Bearer \xff\xfe", b"Bearer caf\xe9"):
        error_of(http.get("/admin/canary", headers={"Authorization": key}), 403)
    pin = {"X-LiveAlign-Arm": "stable", "X-LiveAlign-Admin-Key": "ключ".encode()}
    error_of(chat(http, headers=pin), 403)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"seed": 2**64}, "seed"),
        ({"stop": [f"s{i}" for i in range(1000)]}, "stop"),
        ({"conversation_id": "会话-1"}, "conversation_id"),
        ({"conversation_id": "c" * 1000}, "conversation_id"),
        ({"messages": HI * (LIMITS.max_messages + 1)}, "messages"),
        ({"max_tokens": 2**64}, "max_tokens"),
    ],
)
def test_chat_fields_out_of_bounds_are_a_400_naming_the_field(
    http: httpx.Client, body: dict[str, Any], field: str, stream: bool
) -> None:
    error = error_of(chat(http, **body, stream=stream), 400)
    assert field in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_id_header_outside_latin_1_or_the_charset_is_a_400(
    http: httpx.Client, stream: bool
) -> None:
    for value in ("会话".encode(), b"caf\xe9", b"a b"):
        r = chat(http, headers={"X-Conversation-Id": value}, stream=stream)
        assert "X-Conversation-Id" in error_of(r, 400)["message"]


def test_a_body_that_is_not_strict_json_is_a_400(http: httpx.Client) -> None:
    json_type = {"content-type": "application/json"}
    for path in ("/v1/chat/completions", "/v1/feedback"):
        for content in (b'{"model": "\\ud800"}', b'{"temperature": NaN}', b"[" * 100_000):
            r = http.post(path, content=content, headers=json_type)
            assert "JSON" in error_of(r, 400)["message"]


def _chunks(total: int, size: int = 1024 * 1024) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b" " * size


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
def test_a_chunked_20_mb_body_is_a_413_and_the_stack_still_serves(
    http: httpx.Client, path: str
) -> None:
    json_type = {"content-type": "application/json"}
    r = http.post(path, content=_chunks(20 * 1024 * 1024), headers=json_type)
    assert error_of(r, 413)["code"] == "too_large"
    declared = http.post(path, content=b" " * (LIMITS.max_body_bytes + 1), headers=json_type)
    assert error_of(declared, 413)["code"] == "too_large"
    assert chat(http).status_code == 200


def test_the_openapi_document_is_self_contained(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from [value] if key == "$ref" else refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in set(refs(doc)):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]
    assert "401" in doc["paths"]["/admin/adapters"]["get"]["responses"]
    assert "413" in doc["paths"]["/v1/feedback"]["post"]["responses"]
