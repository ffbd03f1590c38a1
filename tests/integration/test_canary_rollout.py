"""Canary rollouts end to end, on the real stack: simulated users chat through the API and
give feedback, the processor settles each response's outcome with its arm, and the canary
controller judges the arms on it. A version users dislike is rolled back before it reaches
50% and unloaded; one they like walks the steps to stable, through a controller killed and
started again mid-rollout; no chat request fails throughout.

"Like" is measurable on the tiny random model: the good adapter is trained (with the
trainer's own DPO + SFT) toward answering "Sure thing.", and says "Sure" in a good share
of its answers, while the base model (and a zero adapter, the same thing) almost never
does. The users give a thumb up to an answer with "Sure" in it, and down otherwise.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from livealign.stack import LocalStack
from serving.canary.actor import CanaryController
from serving.canary.policy import CanaryPolicy
from serving.config import ControllerConfig
from streaming.events import ChatMessage, PreferencePair
from trainer.config import TrainConfig
from trainer.registry import DataWindow, Registry
from trainer.train import train_policy

# Sized for seconds, not hours: a few scored conversations per arm and step.
POLICY = CanaryPolicy(
    steps=[0.2, 0.5, 1.0], interval_s=1.0, min_step_s=3.0, step_min_conversations=[15, 15, 15],
    min_conversations=15, guardrail_min_requests=15,
)  # fmt: skip
WINDOW = DataWindow(from_ms=0, to_ms=1, n_pairs=0, n_labels=0)


@pytest.fixture(scope="module")
def adapters(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = Path(stack.settings.cache_dir) / "tiny-llama"
    work = tmp_path_factory.mktemp("canary-adapters")
    pairs = [
        PreferencePair(
            pair_id=f"sure-{i}", prompt=[ChatMessage(role="user", content=f"Question {i}?")],
            chosen="Sure thing.", rejected="No.", weight=1.0, provenance="edit",
            rejected_response_id=f"r{i}", adapter="base",
        )
        for i in range(8)
    ]  # fmt: skip
    cfg = TrainConfig(batch_size=4, max_length=64, bf16=False, num_threads=1, seed=0,
                      max_steps=30, dpo_lr=2e-2, sft_weight=4.0)  # fmt: skip
    good = train_policy(base, None, pairs, [], work / "good", cfg).adapter_dir
    torch.manual_seed(0)
    zero = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8))
    zero.save_pretrained(work / "zero")  # B = 0: answers as the base model does
    return {"good": good, "zero": work / "zero"}


def publish(stack: LocalStack, src: Path) -> str:
    registry = Registry(stack.settings.registry_dir)
    base = str(Path(stack.settings.cache_dir) / "tiny-llama")
    return registry.publish(src, parent=None, base_model=base, data_window=WINDOW, metrics={}).ref


class Users:
    """Concurrent simulated users, each a new conversation: chat, then a thumb (up when
    the answer says "Sure") and dwell. Records every chat's status, arm and adapter."""

    def __init__(self, url: str, concurrency: int = 4) -> None:
        self.url, self.concurrency = url, concurrency
        self.chats: list[tuple[int, str, str]] = []  # (status, arm, adapter)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)
        ]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                conv = f"canary-{uuid.uuid4().hex[:12]}"
                body = {"model": "livealign", "max_tokens": 8, "temperature": 1.0,
                        "user": conv, "conversation_id": conv,
                        "messages": [{"role": "user", "content": "Question 3?"}]}  # fmt: skip
                try:
                    r = http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    self.chats.append((0, "", ""))
                    continue
                if r.status_code != 200:
                    self.chats.append((r.status_code, "", ""))
                    continue
                data = r.json()
                info = data["livealign"]
                self.chats.append((200, info["arm"], info["adapter"]))
                liked = "Sure" in data["choices"][0]["message"]["content"]
                events = [
                    {"kind": "thumb", "value": 1 if liked else -1},
                    {"kind": "dwell", "value": 30_000 if liked else 2_000},
                ]
                http.post("/v1/feedback", json={"events": [
                    {**e, "response_id": info["response_id"], "event_id": f"{conv}-{i}",
                     "feedback_token": info["feedback_token"]}
                    for i, e in enumerate(events)
                ]})  # fmt: skip

    def __enter__(self) -> Users:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def failed(self) -> list[tuple[int, str, str]]:
        return [c for c in self.chats if c[0] != 200]


@pytest.fixture
def controller(stack: LocalStack) -> Iterator[CanaryController]:
    config = ControllerConfig(
        registry_dir=stack.settings.registry_dir,
        store_url=stack.settings.processor_config(stack.bootstrap).store_url,
        bootstrap_servers=stack.bootstrap, policy=POLICY,
    )  # fmt: skip
    made = CanaryController(config)
    yield made
    made.close()
    registry = Registry(stack.settings.registry_dir)
    registry.set_state(stable=None, canary=None, action="rollback", reason="test over")


def run_until(controller: CanaryController, done: str, timeout: float) -> list[str]:
    """Tick every interval until a decision's action is ``done`` (or a final one)."""
    actions: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        decision = controller.tick()
        if decision is not None:
            actions.append(str(decision.action))
            if decision.action == done or decision.final:
                return actions
        time.sleep(POLICY.interval_s)
    raise AssertionError(f"no {done} within {timeout}s: {Counter(actions)}")


def served(http: httpx.Client, admin: dict[str, str]) -> dict[str, object]:
    loaded: dict[str, object] = http.get("/admin/canary", headers=admin).json()["replica"]
    return loaded


def wait_loaded(http: httpx.Client, admin: dict[str, str], canary: str | None) -> None:
    deadline = time.monotonic() + 30
    while served(http, admin)["canary"] != canary:
        assert time.monotonic() < deadline, f"canary {canary} not loaded: {served(http, admin)}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def admin(stack: LocalStack) -> dict[str, str]:
    key = stack.settings.serving_config(Path("."), "").admin_key
    assert key is not None
    return {"Authorization": f"Bearer {key.get_secret_value()}"}


def test_a_canary_users_dislike_is_rolled_back_before_half_and_unloaded(
    stack: LocalStack, http: httpx.Client, admin: dict[str, str], adapters: dict[str, Path],
    controller: CanaryController,
) -> None:  # fmt: skip
    registry = controller.registry
    good, bad = publish(stack, adapters["good"]), publish(stack, adapters["zero"])
    registry.set_state(stable=good, action="promote", reason="test: users like it")
    registry.set_state(canary=bad, action="publish", reason="test: as the trainer does")
    with Users(stack.url) as users:
        controller.tick()  # its trial begins at the first step
        wait_loaded(http, admin, bad)
        actions = run_until(controller, "rollback", timeout=240)
        wait_loaded(http, admin, None)  # unloaded within a poll or two
    assert actions[-1] == "rollback", actions
    weights = [c.canary_weight for c in registry.state().history if c.canary == bad]
    assert max(weights) < 0.5
    exposed = {a for s, arm, a in users.chats if arm == "canary"}
    assert exposed == {bad} and users.failed() == []
    assert registry.state().stable == good


def test_a_canary_users_like_walks_the_steps_through_a_controller_restart(
    stack: LocalStack, http: httpx.Client, admin: dict[str, str], adapters: dict[str, Path],
    controller: CanaryController,
) -> None:  # fmt: skip
    registry = controller.registry
    plain, good = publish(stack, adapters["zero"]), publish(stack, adapters["good"])
    registry.set_state(stable=plain, action="promote", reason="test")
    registry.set_state(canary=good, action="publish", reason="test: as the trainer does")
    with Users(stack.url) as users:
        controller.tick()
        wait_loaded(http, admin, good)
        assert run_until(controller, "promote", timeout=240)[-1] == "promote"
        assert registry.state().canary_weight == 0.5
        controller.close()  # killed mid-rollout; a new one resumes from the registry
        again = CanaryController(controller.config)
        try:
            actions = run_until(again, "complete", timeout=300)
        finally:
            again.close()
    assert actions[-1] == "complete", actions
    state = registry.state()
    assert (state.stable, state.canary) == (good, None)
    steps = [c.canary_weight for c in state.history if c.canary == good]
    assert steps == sorted(steps) and 0.2 in steps and 0.5 in steps  # each step, in order
    assert users.failed() == []
    assert {arm for _, arm, _ in users.chats} == {"stable", "canary"}


def test_the_controller_actor_runs_in_the_stacks_ray(stack: LocalStack, tmp_path: Path) -> None:
    """The Ray actor `livealign up` starts: it ticks (nothing to judge without a canary),
    and stop() ends its loop."""
    import ray

    from serving.canary.actor import CanaryActor

    config = ControllerConfig(
        registry_dir=tmp_path / "registry", store_url=f"sqlite:///{tmp_path / 'p.sqlite'}",
        policy=POLICY,
    )  # fmt: skip
    actor = CanaryActor.remote(config)  # type: ignore[attr-defined]
    try:
        assert ray.get(actor.tick.remote(), timeout=120) is None
        loop = actor.loop.remote()
        ray.get(actor.stop.remote(), timeout=30)
        ray.get(loop, timeout=30)
    finally:
        ray.kill(actor)
