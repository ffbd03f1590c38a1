"""The feedback API against the real stack: every kind accepted and delivered to Kafka,
every kind of bad input refused with the right status, forged and expired tokens too."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from openai import OpenAI

from livealign.stack import LocalStack
from serving import tokens
from streaming.events import TOPIC_FEEDBACK
from tests.integration.conftest import read_topic, with_ids


@pytest.fixture(scope="module")
def answer(client: OpenAI) -> dict[str, Any]:
    completion = client.chat.completions.create(
        model="livealign",
        messages=[{"role": "user", "content": "Tell me a fact."}],
        max_tokens=8,
        user="bob",
        extra_body={"conversation_id": "conv-feedback"},
    )
    info: dict[str, Any] = completion.model_extra["livealign"]
    return info


GOOD = [
    ("thumb", 1), ("thumb", -1), ("rating", 1), ("rating", 5), ("edit", "A better answer."),
    ("comment", "too long, but correct"), ("click", "copy"), ("click", "regenerate"),
    ("click", "link"), ("click", "share"), ("dwell", 0), ("dwell", 4200),
]  # fmt: skip


def event(answer: dict[str, Any], kind: str, value: object, **extra: object) -> dict[str, Any]:
    return {
        "response_id": answer["response_id"],
        "feedback_token": answer["feedback_token"],
        "kind": kind,
        "value": value,
        **extra,
    }


def test_every_kind_is_accepted_and_reaches_kafka(
    http: httpx.Client, answer: dict[str, Any], stack: LocalStack
) -> None:
    ids = []
    for n, (kind, value) in enumerate(GOOD):
        r = http.post("/v1/feedback", json=event(answer, kind, value, event_id=f"good-{n}"))
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == [f"good-{n}"]
        ids.append(f"good-{n}")
    records = read_topic(stack.bootstrap, TOPIC_FEEDBACK, with_ids("event_id", set(ids)))
    got = {r["event_id"]: r for r in records if r["event_id"] in ids}
    assert set(got) == set(ids)
    for n, (kind, value) in enumerate(GOOD):
        r = got[f"good-{n}"]
        assert (r["kind"], r["value"]) == (kind, value)
        assert r["response_id"] == answer["response_id"]
        assert r["conversation_id"] == "conv-feedback"
        assert r["_key"] == "conv-feedback"
        assert r["user_hash"] and r["user_hash"] != "bob"


def test_server_makes_an_event_id_when_none_is_given(
    http: httpx.Client, answer: dict[str, Any]
) -> None:
    r = http.post("/v1/feedback", json=event(answer, "thumb", 1))
    assert r.status_code == 202
    assert r.json()["accepted"][0].startswith("fb-")


BAD = [
    ("thumb", 0, "thumb"), ("thumb", 2, "thumb"), ("thumb", "up", "thumb"),
    ("rating", 0, "rating"), ("rating", 6, "rating"), ("rating", 3.5, "rating"),
    ("edit", "", "edit"), ("comment", "   ", "comment"), ("click", "hover", "click"),
    ("dwell", -1, "dwell"), ("dwell", "long", "dwell"), ("smile", 1, "kind"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "value", "needle"), BAD)
def test_bad_values_are_422_naming_the_field(
    http: httpx.Client, answer: dict[str, Any], kind: str, value: object, needle: str
) -> None:
    r = http.post("/v1/feedback", json=event(answer, kind, value))
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert needle in message


def test_missing_field_and_bad_json(http: httpx.Client, answer: dict[str, Any]) -> None:
    body = event(answer, "thumb", 1)
    del body["response_id"]
    r = http.post("/v1/feedback", json=body)
    assert r.status_code == 422 and "response_id" in r.json()["error"]["message"]
    r = http.post("/v1/feedback", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_forged_foreign_and_expired_tokens_are_403(
    http: httpx.Client, answer: dict[str, Any], client: OpenAI, stack: LocalStack
) -> None:
    forged = tokens.issue(b"not-the-secret", answer["response_id"], "conv-feedback", None, 60)
    r = http.post("/v1/feedback", json={**event(answer, "thumb", 1), "feedback_token": forged})
    assert r.status_code == 403 and "does not match" in r.json()["error"]["message"]

    other = client.chat.completions.create(
        model="livealign", messages=[{"role": "user", "content": "x"}], max_tokens=2
    ).model_extra["livealign"]
    foreign = {**event(answer, "thumb", 1), "feedback_token": other["feedback_token"]}
    r = http.post("/v1/feedback", json=foreign)
    assert r.status_code == 403

    secret = stack.settings.serving_config(stack.settings.cache_dir, "").feedback_secret
    expired = tokens.issue(
        secret.get_secret_value().encode(), answer["response_id"], "conv-feedback", None,
        ttl_s=60, now=time.time() - 3600,
    )  # fmt: skip
    r = http.post("/v1/feedback", json={**event(answer, "thumb", 1), "feedback_token": expired})
    assert r.status_code == 403 and "expired" in r.json()["error"]["message"]

    r = http.post("/v1/feedback", json={**event(answer, "thumb", 1), "feedback_token": "garbage"})
    assert r.status_code == 403 and "malformed" in r.json()["error"]["message"]


def test_batch_with_bad_items_accepts_the_good_ones(
    http: httpx.Client, answer: dict[str, Any], stack: LocalStack
) -> None:
    batch = {
        "events": [
            event(answer, "thumb", 1, event_id="batch-ok-1"),
            event(answer, "rating", 9, event_id="batch-bad-1"),
            {**event(answer, "click", "copy", event_id="batch-bad-2"), "feedback_token": "x.y"},
            event(answer, "dwell", 1500, event_id="batch-ok-2"),
        ]
    }
    r = http.post("/v1/feedback", json=batch)
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == ["batch-ok-1", "batch-ok-2"]
    assert [(x["index"], x["status"]) for x in body["rejected"]] == [(1, 422), (2, 403)]
    assert "rating" in body["rejected"][0]["error"]
    records = read_topic(
        stack.bootstrap, TOPIC_FEEDBACK, with_ids("event_id", {"batch-ok-1", "batch-ok-2"})
    )
    assert not {"batch-bad-1", "batch-bad-2"} & {r["event_id"] for r in records}


def test_oversized_bodies_and_batches_are_413(http: httpx.Client, answer: dict[str, Any]) -> None:
    r = http.post("/v1/feedback", json={"events": [event(answer, "thumb", 1)] * 101})
    assert r.status_code == 413 and "at most 100" in r.json()["error"]["message"]
    r = http.post("/v1/feedback", json=event(answer, "comment", "x" * 2_000_000))
    assert r.status_code == 413
