"""What the browser widget needs of the feedback route, on the real app with fakes
(tests/unit/serving_app.py): a JSON body sent as text/plain (a beacon's, no preflight),
CORS for the configured origins only, a per-response token as the only credential with
API keys on (charged under the principal it was issued to), a compare vote as two
events; the chat page and /widget.js served, the widget small enough."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from monitoring import metrics as m
from serving import auth
from serving.feedback import mirror_id
from serving.pages import read
from tests.unit.serving_app import MODEL, serving
from tests.unit.test_serving_input import HI, Client

OTHER_SITE = "http://127.0.0.1:9999"


def answer(headers: dict[str, str] | None = None, conversation: str = "conv-w") -> dict[str, Any]:
    body = {"model": MODEL, "messages": HI, "conversation_id": conversation, "user": "ann"}
    r = Client().request("POST", "/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()["livealign"]
    return info


def item(info: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"response_id": info["response_id"], "feedback_token": info["feedback_token"],
            **fields}  # fmt: skip


def post(body: Any, content_type: str = "text/plain;charset=UTF-8", **headers: str) -> Any:
    return Client().request(
        "POST", "/v1/feedback?via=widget-beacon", content=json.dumps(body).encode(),
        headers={"content-type": content_type, **headers},
    )  # fmt: skip


def feedback_sent(server: Any) -> list[Any]:
    return [e for topic, _, e in server.producer.sent if topic.endswith("feedback")]


@pytest.fixture
def served(tmp_path: Path) -> Any:
    with serving(tmp_path) as server:
        server.config = server.config.model_copy(update={"feedback_origins": [OTHER_SITE]})
        yield server


def test_a_beacons_text_plain_json_is_accepted_and_counted_as_the_widgets(served: Any) -> None:
    info = answer()
    before = m.WIDGET_EVENTS.labels("thumb", "beacon", "accepted")._value.get()
    r = post({"events": [item(info, kind="thumb", value=1, event_id="fb-b1")]})
    assert r.status_code == 202, r.text
    assert [e.event_id for e in feedback_sent(served)] == ["fb-b1"]
    assert m.WIDGET_EVENTS.labels("thumb", "beacon", "accepted")._value.get() == before + 1


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_form_post_is_refused_and_sends_nothing(served: Any, content_type: str) -> None:
    info = answer()
    r = post(item(info, kind="thumb", value=1), content_type=content_type)
    assert r.status_code == 415
    assert feedback_sent(served) == []


def test_text_that_is_not_json_is_a_400(served: Any) -> None:
    r = Client().request(
        "POST", "/v1/feedback", content=b"thumb=1", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_cors_for_the_configured_origin_only(served: Any) -> None:
    info = answer()
    ok = post(item(info, kind="thumb", value=1), origin=OTHER_SITE)
    assert ok.status_code == 202 and ok.headers["access-control-allow-origin"] == OTHER_SITE
    # An error is readable by that page too, so the widget tells a 4xx from a 503.
    bad = post(item(info, kind="thumb", value=7), origin=OTHER_SITE)
    assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == OTHER_SITE
    stranger = post(item(info, kind="thumb", value=1), origin="http://evil.example")
    assert "access-control-allow-origin" not in stranger.headers
    assert stranger.headers["vary"] == "Origin"
    pre = Client().request(
        "OPTIONS", "/v1/feedback",
        headers={"origin": OTHER_SITE, "access-control-request-method": "POST"},
    )  # fmt: skip
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == OTHER_SITE
    assert "POST" in pre.headers["access-control-allow-methods"]
    refused = Client().request("OPTIONS", "/v1/feedback", headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in refused.headers


def test_a_compare_vote_is_two_events_one_on_each_answer(served: Any) -> None:
    a, b = answer(), answer()
    other = {"other_response_id": b["response_id"], "other_feedback_token": b["feedback_token"]}
    vote = item(a, kind="compare", value="better", event_id="fb-c1", **other)
    before = m.COMPARE_VOTES.labels("better")._value.get()
    r = post(vote)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == ["fb-c1"]
    sent = [
        (e.event_id, e.response_id, e.value, e.other_response_id) for e in feedback_sent(served)
    ]
    assert sent == [
        ("fb-c1", a["response_id"], "better", b["response_id"]),
        (mirror_id("fb-c1"), b["response_id"], "worse", a["response_id"]),
    ]
    assert m.COMPARE_VOTES.labels("better")._value.get() == before + 1


def test_a_compare_needs_both_tokens_and_one_conversation(served: Any) -> None:
    a, b = answer(), answer(conversation="conv-elsewhere")
    forged = item(a, kind="compare", value="better", other_response_id=b["response_id"],
                  other_feedback_token=a["feedback_token"])  # fmt: skip
    assert post(forged).status_code == 403
    apart = item(a, kind="compare", value="better", other_response_id=b["response_id"],
                 other_feedback_token=b["feedback_token"])  # fmt: skip
    r = post(apart)
    assert r.status_code == 422 and "one conversation" in r.text
    assert feedback_sent(served) == []


def test_with_keys_on_a_valid_token_alone_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    key = auth.add_key(path, "acme", feedback_per_minute=2)
    with serving(tmp_path, api_keys_file=path) as server:
        info = answer({"Authorization": f"Bearer {key}"})
        # No key, no valid token: a 401 as before.
        assert (
            post(item(info, kind="thumb", value=1) | {"feedback_token": "x.y"}).status_code == 401
        )
        assert post({"kind": "thumb"}).status_code == 401
        # The token alone: accepted, as the principal it was issued to ...
        assert post(item(info, kind="thumb", value=1)).status_code == 202
        assert [e.principal for e in feedback_sent(server)] == ["acme"]
        # ... and charged to it: its limit is 2 a minute.
        assert post(item(info, kind="dwell", value=10)).status_code == 202
        over = post(item(info, kind="dwell", value=20))
        assert over.status_code == 429 and over.headers["Retry-After"]


def test_the_chat_page_and_widget_are_served(served: Any) -> None:
    page = Client().request("GET", "/")
    assert page.status_code == 200 and "<title>LiveAlign chat</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    widget = Client().request("GET", "/widget.js")
    assert widget.headers["content-type"].startswith("text/javascript")
    assert widget.headers["access-control-allow-origin"] == "*"
    assert "customElements.define" in widget.text
    for name in ("chat.js", "chat.css"):
        assert Client().request("GET", f"/{name}").status_code == 200


def test_the_widget_is_at_most_10_kb_gzipped() -> None:
    size = len(gzip.compress(read("widget.js"), compresslevel=9))
    assert size <= 10 * 1024, f"widget.js is {size} bytes gzipped"
