"""The chat API through the official OpenAI SDK, against the real stack."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from livealign.stack import LocalStack
from streaming.events import TOPIC_INTERACTIONS
from tests.integration.conftest import read_topic, with_ids

MODEL = "livealign"


def test_non_streamed_chat_carries_feedback_info_and_is_logged(
    client: OpenAI, stack: LocalStack
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        user="alice@example.com",
        extra_body={"conversation_id": "conv-test-1"},
    )
    completion = raw.parse()
    info = completion.model_extra["livealign"]
    assert completion.id == info["response_id"]
    assert info["conversation_id"] == "conv-test-1"
    assert (info["adapter"], info["arm"]) == ("base", "stable")
    assert raw.headers["X-LiveAlign-Response-Id"] == completion.id
    assert raw.headers["X-LiveAlign-Conversation-Id"] == "conv-test-1"
    assert raw.headers["X-LiveAlign-Feedback-Token"] == info["feedback_token"]
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8
    text = completion.choices[0].message.content
    assert text

    events = read_topic(
        stack.bootstrap, TOPIC_INTERACTIONS, with_ids("response_id", {completion.id})
    )
    [event] = [e for e in events if e["response_id"] == completion.id]
    assert event["_key"] == "conv-test-1"
    assert event["completion"] == text
    assert event["messages"] == [{"role": "user", "content": "Say hello."}]
    assert event["adapter"] == "base" and event["arm"] == "stable"
    assert event["completion_tokens"] == completion.usage.completion_tokens
    assert event["prompt_tokens"] == completion.usage.prompt_tokens
    assert event["latency_ms"] >= event["ttft_ms"] > 0
    assert event["user_hash"] and "alice" not in event["user_hash"]
    assert event["schema_version"] == 1


def test_streamed_chat_first_chunk_has_ids_and_text_matches_log(
    client: OpenAI, stack: LocalStack
) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Conversation-Id": "conv-stream-1"},
    )
    chunks = list(stream)
    info = chunks[0].model_extra["livealign"]
    assert info["conversation_id"] == "conv-stream-1"
    assert all(c.id == info["response_id"] for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finish if f] in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    events = read_topic(
        stack.bootstrap, TOPIC_INTERACTIONS, with_ids("response_id", {info["response_id"]})
    )
    [event] = [e for e in events if e["response_id"] == info["response_id"]]
    assert event["stream"] is True
    assert event["completion"] == text
    assert event["_key"] == "conv-stream-1"


def test_a_seed_makes_sampling_repeatable(client: OpenAI) -> None:
    def answer(seed: int) -> str | None:
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=12, temperature=1.0, seed=seed,
        )  # fmt: skip
        return completion.choices[0].message.content

    assert answer(7) == answer(7) != answer(8)


def test_server_makes_a_conversation_id_when_none_is_given(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert completion.model_extra["livealign"]["conversation_id"].startswith("conv-")


def test_models_health_and_metrics(client: OpenAI, http: httpx.Client) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert http.get("/healthz").json()["status"] == "ok"
    text = http.get("/metrics").text
    assert 'livealign_chat_requests_total{adapter="base",arm="stable"' in text
    assert "livealign_producer_sent_total" in text
    assert "/v1/feedback" in http.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "nope"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": " "}]}, 400, "non-empty"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9999},
            400,
            "context length",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "word " * 600}]},
            400,
            "context length",
        ),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ],
)
def test_bad_chat_requests_get_openai_style_errors(
    http: httpx.Client, body: dict[str, object], status: int, needle: str
) -> None:
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"]
    assert error["type"]


def test_bad_json_is_a_400(http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]["message"]


def test_sdk_raises_its_own_errors(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=100_000
        )
