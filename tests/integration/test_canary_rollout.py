"""Canary rollouts end to end, on the real stack: simulated users chat through the API and
give feedback, the processor settles each response's outcome with its arm, and the canary
controller judges the arms on it. A version users dislike is rolled back before it reaches
50% and unloaded; one they like walks the steps to stable, through a controller killed and
started again mid-rollout; no chat request fails throughout.

The adapters and the users are the live benchmark's (``bench/canary_live.py``): users
like answers that say "thing", which the good adapter always says and the zero adapter (the
base model) never.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.canary_live import Users, make_adapters
from bench.canary_live import publish as publish_to
from livealign.stack import LocalStack
from serving.canary.actor import CanaryController
from serving.canary.policy import CanaryPolicy, Limit
from serving.config import ControllerConfig
from trainer.registry import Registry

# Sized for seconds, not hours: a few scored conversations per arm and step. The p95 of a
# few dozen requests is their slowest one or two, so on a busy test machine one stalled
# request could double an arm's p95 by chance: latency rolls back only at 4x here (its
# thresholds are tested on constructed arms in tests/unit/test_canary.py).
POLICY = CanaryPolicy(
    steps=[0.2, 0.5, 1.0], interval_s=1.0, min_step_s=3.0, step_min_conversations=[15, 15, 15],
    min_conversations=15, guardrail_min_requests=30,
    latency_p95_ratio=Limit(hold=1.25, rollback=4.0), ttft_p95_ratio=Limit(hold=1.25, rollback=4.0),
)  # fmt: skip


@pytest.fixture(scope="module")
def adapters(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_adapters(base_of(stack), tmp_path_factory.mktemp("canary-adapters"))


def base_of(stack: LocalStack) -> Path:
    return Path(stack.settings.cache_dir) / "tiny-llama"


def publish(stack: LocalStack, src: Path) -> str:
    return publish_to(Registry(stack.settings.registry_dir), src, base_of(stack))


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
    """Tick every interval until a decision's action is ``done`` (or a final one); the
    actions, each with its reason (``rollback:harm``)."""
    actions: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        decision = controller.tick()
        if decision is not None:
            actions.append(f"{decision.action}:{decision.reason}")
            if str(decision.action) == done or decision.final:
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
    # On the users' feedback: their scores (harm) or, first, their thumbs-down guardrail.
    last = registry.decisions(last=1)[0]
    feedback = last["reason"] == "harm" or "thumbs_down_rate" in str(last["message"])
    assert actions[-1].startswith("rollback") and feedback, last
    weights = [c.canary_weight for c in registry.state().history if c.canary == bad]
    assert max(weights) < 0.5
    exposed = {c[2] for c in users.chats if c[1] == "canary"}
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
        actions = run_until(controller, "promote", timeout=240)
        assert actions[-1] == "promote:non_inferior", registry.decisions(last=1)
        assert registry.state().canary_weight == 0.5
        controller.close()  # killed mid-rollout; a new one resumes from the registry
        again = CanaryController(controller.config)
        try:
            actions = run_until(again, "complete", timeout=300)
        finally:
            again.close()
    assert actions[-1] == "complete:non_inferior", actions
    state = registry.state()
    assert (state.stable, state.canary) == (good, None)
    steps = [c.canary_weight for c in state.history if c.canary == good]
    assert steps == sorted(steps) and 0.2 in steps and 0.5 in steps  # each step, in order
    assert users.failed() == []
    assert {c[1] for c in users.chats} == {"stable", "canary"}


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
