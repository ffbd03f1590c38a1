"""Bad input gets a clear 4xx in the API's error shape, never a 500, and leaves nothing
behind: the real app of serving.app (middleware, validation, routes, error rendering) on a
fake engine and producer (tests/unit/serving_app.py). Every bound is from serving.limits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving import tokens
from serving.limits import LIMITS
from tests.unit.serving_app import ADMIN_KEY, MODEL, SECRET, serving

HI = [{"role": "user", "content": "hi"}]


class Client:
    """Synchronous calls into the ASGI app (one event loop per call)."""

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        from serving.app import api

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.request(method, path, **kw)

        return asyncio.run(go())

    def chat(self, headers: dict[str, Any] | None = None, **body: Any) -> httpx.Response:
        return self.request(
            "POST", "/v1/chat/completions", json={"model": MODEL, "messages": HI, **body},
            headers=headers,
        )  # fmt: skip

    def raw(self, path: str, content: bytes) -> httpx.Response:
        headers = {"content-type": "application/json"}
        return self.request("POST", path, content=content, headers=headers)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with serving(tmp_path_factory.mktemp("serving")) as server:
        yield server


@pytest.fixture
def client(served: Any) -> Client:
    return Client()


def refused(r: httpx.Response, status: int, needle: str) -> dict[str, Any]:
    """The response is ``status`` in OpenAI's error shape, its message mentioning needle."""
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert needle in error["message"], error
    assert error["type"]
    return error


def test_a_good_request_is_answered_with_its_feedback_headers(client: Client) -> None:
    r = client.chat(conversation_id="conv-ok_1:a@b.c/d+e=f", seed=LIMITS.seed_max, stop=["x"] * 4)
    assert r.status_code == 200, r.text
    assert r.headers["X-LiveAlign-Conversation-Id"] == "conv-ok_1:a@b.c/d+e=f"
    assert r.json()["choices"][0]["message"]["content"] == "hello there"
    streamed = client.chat(stream=True, seed=LIMITS.seed_min, headers={"X-Conversation-Id": "c-1"})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert streamed.headers["X-LiveAlign-Conversation-Id"] == "c-1"


TOO_MANY = LIMITS.max_messages + 1
LONG = "x" * (LIMITS.max_message_chars + 1)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": LIMITS.seed_max + 1}, "seed"),
        ({"stop": ["s"] * 1000}, "stop"),
        ({"stop": ["x" * (LIMITS.max_stop_chars + 1)]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"messages": HI * TOO_MANY}, "messages"),
        ({"messages": [{"role": "user", "content": LONG}]}, "messages.0"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": LONG[:40_000]}] * 2}]},
         "at most"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 65}]},
         "messages.0"),
        ({"max_tokens": LIMITS.max_tokens + 1}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"model": "m" * (LIMITS.max_name_chars + 1)}, "model"),
        ({"user": "u" * (LIMITS.max_user_chars + 1)}, "user"),
        ({"conversation_id": "会话"}, "conversation_id"),
        ({"conversation_id": "conv 1"}, "conversation_id"),
        ({"conversation_id": "c" * (LIMITS.max_conversation_id_chars + 1)}, "conversation_id"),
        ({"conversation_id": "会话", "stream": True}, "conversation_id"),
    ],
)  # fmt: skip
def test_a_chat_field_out_of_bounds_is_a_400_naming_it(
    client: Client, served: Any, body: dict[str, Any], needle: str
) -> None:
    calls = len(served.engine.calls)
    refused(client.chat(**body), 400, needle)
    assert len(served.engine.calls) == calls  # nothing reached the engine


@pytest.mark.parametrize(
    ("headers", "status", "needle"),
    [
        ({"X-Conversation-Id": "会话".encode()}, 400, "X-Conversation-Id"),  # UTF-8 bytes
        ({"X-Conversation-Id": b"caf\xe9"}, 400, "X-Conversation-Id"),  # Latin-1 bytes
        ({"X-Conversation-Id": "c" * 129}, 400, "X-Conversation-Id"),
        ({"X-LiveAlign-Arm": "both"}, 400, "X-LiveAlign-Arm"),
        ({"X-LiveAlign-Arm": "stable"}, 403, "admin key"),
        ({"X-LiveAlign-Arm": "stable", "X-LiveAlign-Admin-Key": "ключ".encode()}, 403, "admin"),
        ({"X-LiveAlign-Arm": "stable", "X-LiveAlign-Admin-Key": b"\xff\xfe"}, 403, "admin"),
        ({"X-LiveAlign-Arm": "canary", "X-LiveAlign-Admin-Key": ADMIN_KEY}, 409, "no canary"),
    ],
)
def test_bad_chat_headers_are_4xx(
    client: Client, headers: dict[str, Any], status: int, needle: str
) -> None:
    refused(client.chat(headers=headers), status, needle)
    assert client.chat(headers=headers, stream=True).status_code == status


def test_an_operator_pin_with_the_key_is_served(client: Client) -> None:
    r = client.chat(headers={"X-LiveAlign-Arm": "stable", "X-LiveAlign-Admin-Key": ADMIN_KEY})
    assert r.status_code == 200 and r.headers["X-LiveAlign-Arm"] == "pinned"


@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "livealign", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "livealign", "messages": [{"role": "user", "content": "hi"}], '
        b'"user": "\\udfff"}',
        b'{"model": "livealign", "messages": [{"role": "user", "content": "hi"}], '
        b'"stop": ["\\ud800"]}',
        b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "livealign", "messages": [{"role": "user", "content": "hi"}], '
        b'"temperature": NaN}',
        b'{"model": "livealign", "messages": [{"role": "user", "content": "hi"}], '
        b'"top_p": Infinity}',
        b"[" * 50_000 + b"]" * 50_000,  # nesting the stdlib parser cannot recurse into
        b'{"model": "livealign", "messages": [{"role": "user", "content": "\xff"}]}',
        b"{not json",
        b"",
    ],
)
def test_chat_bodies_that_are_not_clean_json_are_400(client: Client, content: bytes) -> None:
    r = client.raw("/v1/chat/completions", content)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]


def event(**kw: Any) -> dict[str, Any]:
    token = tokens.issue(SECRET, "chatcmpl-1", "conv-1", None, ttl_s=60)
    return {"response_id": "chatcmpl-1", "feedback_token": token, "kind": "thumb", "value": 1, **kw}


def test_feedback_with_a_good_token_is_accepted(client: Client, served: Any) -> None:
    r = client.request("POST", "/v1/feedback", json=event(event_id="fb-ok"))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == ["fb-ok"]


@pytest.mark.parametrize(
    "token",
    ["\u0442oken.abc", "abc.d\u0435f", "a.b.c", ".abc", "abc.", "a b.c", "\x00.\x01", "ab==.cd"],
)
def test_a_malformed_or_non_ascii_feedback_token_is_a_403(client: Client, token: str) -> None:
    r = client.request("POST", "/v1/feedback", json=event(feedback_token=token))
    refused(r, 403, "malformed")


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"response_id": "\\ud800", "feedback_token": "a.b", "kind": "thumb", "value": 1}', 400),
        (b'{"response_id": "r", "feedback_token": "\\ud800.b", "kind": "thumb", "value": 1}', 400),
        (b'{"response_id": "r", "feedback_token": "a.b", "kind": "dwell", "value": NaN}', 400),
        (b'{"response_id": "r", "feedback_token": "a.b", "kind": "dwell", "value": 1e400}', 422),
        (b'{"response_id": "r", "feedback_token": "a.b", "kind": "thumb", "value": 1, '
         b'"\\ud800": 1}', 400),
        (b'{"response_id": "r", "feedback_token": "a.b", "kind": "thumb", "value": 1, '
         b'"\xc3\xa9": 1}', 422),
        (b'{"response_id": "r", "feedback_token": "a.b", "kind": "thumb", "value": 1, '
         b'"client_ts": 1e999}', 422),
        (b'{"response_id": "r", "feedback_token": "a.b", "kind": {}, "value": 1}', 422),
        (b'{"events": [{"response_id": "r", "feedback_token": "a.b", "kind": [], "value": 1}]}',
         422),
        (b"[" * 50_000 + b"]" * 50_000, 400),
        (b"\xff", 400),
        (b"", 400),
    ],
)  # fmt: skip
def test_feedback_bodies_that_are_not_clean_json_or_values_are_4xx(
    client: Client, served: Any, content: bytes, status: int
) -> None:
    sent = len(served.producer.sent)
    r = client.raw("/v1/feedback", content)
    assert r.status_code == status, r.text
    answer = r.json()  # a single event's error, or a batch's result
    assert answer["error"]["message"] if "error" in answer else answer["rejected"][0]["error"]
    assert len(served.producer.sent) == sent  # nothing went to the broker


def test_a_feedback_batch_over_the_limit_is_a_413(client: Client) -> None:
    batch = {"events": [event()] * (LIMITS.max_feedback_batch + 1)}
    refused(client.request("POST", "/v1/feedback", json=batch), 413, "at most")


ADMIN_ROUTES = [
    ("GET", "/admin/adapters"),
    ("GET", "/admin/canary"),
    ("POST", "/admin/canary/pause"),
    ("POST", "/admin/adapters/base/rollback"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Basic YWRtaW46YWRtaW4=", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Bearer ключ".encode(), 403),
        (b"Bearer \xff\xfe\x00", 403),
        ("Bearer " + "k" * 10_000, 403),
        ("Bearer wrong", 403),
        (f"Bearer {ADMIN_KEY}x", 403),
    ],
)
def test_admin_credentials_missing_malformed_or_wrong_are_401_or_403(
    client: Client, method: str, path: str, authorization: Any, status: int
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = client.request(method, path, headers=headers)
    refused(r, status, "admin API")
    if status == 401:
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_admin_with_the_key_is_served(client: Client) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert client.request("GET", "/admin/adapters", headers=admin).status_code == 200
    assert client.request("GET", "/admin/canary", headers=admin).status_code == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/admin/adapters/livealign@²/promote", 400),  # isdigit() but not int()
        ("/admin/adapters/livealign@٣/promote", 400),
        (f"/admin/adapters/livealign@{'9' * 5000}/promote", 400),
        ("/admin/adapters/livealign@1/explode", 400),
        ("/admin/adapters/livealign@7/promote", 404),
    ],
)
def test_admin_adapter_refs_out_of_bounds_are_4xx(client: Client, path: str, status: int) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert client.request("POST", path, headers=admin).status_code == status


def test_set_weight_with_a_bad_body_is_422(client: Client) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    for body in (b"{oops", b'{"weight": NaN}', b'{"weight": "\\ud800"}', b"[" * 50_000):
        r = client.request("POST", "/admin/canary/set-weight", content=body, headers=admin)
        assert r.status_code == 422, r.text


def test_unknown_routes_and_methods_answer_in_the_error_shape(client: Client) -> None:
    refused(client.request("GET", "/nope"), 404, "Not Found")
    r = client.request("GET", "/v1/chat/completions")
    refused(r, 405, "Method Not Allowed")
    assert r.headers["Allow"] == "POST"


@pytest.mark.parametrize(
    "content", ["a\x00b", [{"type": "text", "text": "ok"}, {"type": "text", "text": "\x00"}]]
)
def test_a_nul_in_a_message_is_a_400_and_nothing_is_logged(
    client: Client, served: Any, content: Any
) -> None:
    before = len(served.producer.sent)
    r = client.chat(messages=[{"role": "user", "content": content}])
    refused(r, 400, "NUL")
    assert len(served.producer.sent) == before  # no interaction the store could not hold


@pytest.mark.parametrize(("field", "value"), [("value", "a\x00b"), ("event_id", "e\x00")])
def test_feedback_with_a_nul_is_a_422_not_accepted_then_dead_lettered(
    client: Client, field: str, value: str
) -> None:
    body = {**event(kind="comment", value="fine"), field: value}
    r = client.request("POST", "/v1/feedback", json=body)
    refused(r, 422, "NUL")
