"""The trainer's sampling path in serving, on a fake engine: k samples per prompt with the
adapter's LoRA, bounded, under a timeout, and never user traffic (no event, no chat
metric, no canary arm)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind

from serving.adapters import AdapterManager, Slot
from serving.config import SamplingLimits
from serving.sampling import SampleRequest, SamplingError, params, sample

LORA = LoRARequest(lora_name="livealign@2", lora_int_id=7, lora_path="/nonexistent")


class FakeEngine:
    """Renders one token per word and answers ``n`` samples "sample i" (finished)."""

    def __init__(self, model_dir: Path, delay_s: float = 0.0) -> None:
        self.config = SimpleNamespace(model_path=str(model_dir), max_model_len=32)
        self.sampling_defaults = {"temperature": 0.2, "top_p": 0.9}
        self.delay_s = delay_s
        self.calls: list[tuple[list[int], Any, LoRARequest | None]] = []

    def render(self, messages: list[Any]) -> list[int]:
        return [1] * len(" ".join(m.content for m in messages).split())

    async def generate(
        self, ids: list[int], sp: Any, request_id: str, lora: LoRARequest | None = None
    ) -> AsyncIterator[Any]:
        self.calls.append((ids, sp, lora))
        await asyncio.sleep(self.delay_s)
        outputs = [SimpleNamespace(text=f"sample {i}", finish_reason="stop") for i in range(sp.n)]
        yield SimpleNamespace(outputs=outputs, finished=True)


def manager(tmp_path: Path, engine: FakeEngine) -> AdapterManager:
    (tmp_path / "config.json").write_text("{}")
    adapters = AdapterManager(engine, None, b"salt")
    adapters.stable = Slot("livealign@2", LORA)  # as if loaded from the registry
    return adapters


def body(**kw: Any) -> dict[str, Any]:
    prompts = [[{"role": "user", "content": "hi there"}], [{"role": "user", "content": "yo"}]]
    return {"adapter": "livealign@2", "prompts": prompts, "k": 3, "max_tokens": 8, **kw}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_k_samples_per_prompt_with_the_adapters_lora_and_no_user_traffic(
    tmp_path: Path,
) -> None:
    engine = FakeEngine(tmp_path)
    adapters = manager(tmp_path, engine)
    before = metric("livealign_sampler_samples_total", adapter="livealign@2")
    chats = metric("livealign_chat_requests_total", adapter="livealign@2", arm="stable",
                   stream="false", status="ok")  # fmt: skip
    out = asyncio.run(sample(engine, adapters, body(temperature=0.9), SamplingLimits()))
    assert out["adapter"] == "livealign@2"
    assert [[s["text"] for s in p] for p in out["samples"]] == [
        ["sample 0", "sample 1", "sample 2"]
    ] * 2
    assert all(lora is LORA for _, _, lora in engine.calls)
    sp = engine.calls[0][1]
    assert (sp.n, sp.temperature, sp.output_kind) == (3, 0.9, RequestOutputKind.FINAL_ONLY)
    assert metric("livealign_sampler_samples_total", adapter="livealign@2") == before + 6
    assert metric("livealign_chat_requests_total", adapter="livealign@2", arm="stable",
                  stream="false", status="ok") == chats  # fmt: skip
    assert adapters.stable.in_flight == 0  # the slot was held, and is released


def test_limits_and_unknown_adapters_are_refused(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    adapters = manager(tmp_path, engine)
    limits = SamplingLimits(max_prompts=1, max_k=2, max_tokens=4)
    for bad, why in [
        (body(), "prompts = 2: at most 1"),
        (body(prompts=[[{"role": "user", "content": "x"}]]), "k = 3: at most 2"),
        (body(adapter="livealign@9"), "not loaded"),
        (body(k=0), "k"),
        (body(mystery=1), "mystery"),
    ]:
        with pytest.raises(SamplingError, match=why):
            asyncio.run(
                sample(engine, adapters, bad, limits if "at most" in why else SamplingLimits())
            )
    assert engine.calls == []
    # The base model is always there, whatever the slots hold.
    out = asyncio.run(sample(engine, adapters, body(adapter="base"), SamplingLimits()))
    assert len(out["samples"]) == 2 and engine.calls[-1][2] is None


def test_a_slow_call_times_out_at_the_callers_deadline(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, delay_s=5.0)
    adapters = manager(tmp_path, engine)
    with pytest.raises(SamplingError, match=r"timed out after 0\.05 s"):
        asyncio.run(sample(engine, adapters, body(timeout_s=0.05), SamplingLimits()))
    assert adapters.stable.in_flight == 0


def test_params_clamp_to_the_context_and_default_to_the_models_sampling() -> None:
    req = SampleRequest.model_validate(body(max_tokens=100))
    sp = params(req, prompt_len=20, max_model_len=32, defaults={"temperature": 0.2, "top_p": 0.9})
    assert sp is not None and sp.max_tokens == 12 and (sp.temperature, sp.top_p) == (0.2, 0.9)
    assert params(req, prompt_len=32, max_model_len=32, defaults={}) is None
