"""The trainer's sampling path over the running stack: from a Ray task, as the trainer
actor calls it, the serving deployment returns k samples per prompt from a loaded LoRA
adapter, and none of it is user traffic (no chat request counted, no interaction logged).
The registry is left as it was found (base)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from livealign.stack import APP_NAME, LocalStack
from serving.config import DEPLOYMENT_NAME
from streaming.events import TOPIC_INTERACTIONS, ChatMessage
from tests.integration.conftest import read_topic, with_ids
from tests.integration.test_hot_swap import publish, wait_serving
from trainer.registry import Registry
from trainer.sampler import ServeSampler


def metric_sum(http: httpx.Client, name: str, **labels: str) -> float:
    """Sum of a counter's samples in serving's /metrics, over those matching ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                total += s.value
    return total


def sample_in_ray(ref: str, prompts: list[list[ChatMessage]], k: int) -> list[list[Any]]:
    """ServeSampler.sample in a Ray worker, where the trainer actor runs it."""
    task = ray.remote(num_cpus=0)(
        lambda: ServeSampler(APP_NAME).sample(ref, prompts, k, 8, 1.0, 120.0)
    )
    return list(ray.get(task.remote(), timeout=180))


@pytest.mark.timeout(600)
def test_the_sampling_path_gives_k_samples_of_an_adapter_and_logs_no_interaction(
    stack: LocalStack,
    http: httpx.Client,
    registry: Registry,
    admin: dict[str, str],
    tmp_path: Path,
) -> None:
    ref = publish(registry, stack, tmp_path, seed=13)
    registry.set_state(stable=ref, action="publish", reason="test: the teacher samples it")
    try:
        wait_serving(http, ref)
        probe = f"teacher probe {uuid.uuid4().hex}"
        prompts = [[ChatMessage(role="user", content=f"{probe} {i}")] for i in range(2)]
        chats = metric_sum(http, "livealign_chat_requests_total")
        sampled = metric_sum(http, "livealign_sampler_samples_total", adapter=ref)

        samples = sample_in_ray(ref, prompts, k=3)
        assert [len(per_prompt) for per_prompt in samples] == [3, 3]
        assert all(s.text and s.finish_reason in ("stop", "length") for p in samples for s in p)
        assert metric_sum(http, "livealign_sampler_samples_total", adapter=ref) == sampled + 6
        assert metric_sum(http, "livealign_chat_requests_total") == chats  # not user traffic

        # The adapter's LoRA is applied: with one seed, base and the adapter answer apart.
        handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
        body = {"prompts": [[m.model_dump() for m in prompts[0]]], "k": 2, "max_tokens": 8,
                "temperature": 1.0, "seed": 5}  # fmt: skip
        answers = {
            adapter: handle.sample.remote({**body, "adapter": adapter}).result(timeout_s=120)
            for adapter in (ref, "base")
        }
        assert answers[ref]["samples"] != answers["base"]["samples"]
        with pytest.raises(Exception, match="not loaded"):
            handle.sample.remote({**body, "adapter": "livealign@999"}).result(timeout_s=60)

        # No interaction was logged: a chat sent after it arrives, the probe never does.
        marker = http.post(
            "/v1/chat/completions",
            json={"model": "livealign", "messages": [{"role": "user", "content": "marker"}],
                  "max_tokens": 2},
        ).json()["id"]  # fmt: skip
        events = read_topic(stack.bootstrap, TOPIC_INTERACTIONS, with_ids("response_id", {marker}))
        assert marker in {e["response_id"] for e in events}
        assert not [e for e in events if probe in json.dumps(e["messages"])]
    finally:
        r = http.post("/admin/adapters/base/rollback", headers=admin)
        assert r.status_code == 200, r.text
