"""The canary controller's I/O side on a real registry and store (no broker, no Ray):
the trainer's canary gets its trial, decisions are applied and logged, a restarted
controller resumes from the registry, operators' commands change the same state."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from serving.canary import rollout
from serving.canary.actor import CanaryController
from serving.canary.outcomes import p95, summarize
from serving.canary.policy import CanaryPolicy
from serving.config import ControllerConfig
from streaming import store as s
from streaming.events import ResponseOutcome
from streaming.store import PreferenceStore
from tests.unit.test_registry import make_adapter, publish
from trainer.registry import Registry, RegistryError

T0 = 1_700_000_000_000  # epoch ms: the rollout's clock in these tests
POLICY = CanaryPolicy(
    steps=[0.1, 0.5, 1.0], step_min_conversations=[30, 30, 30], min_step_s=60,
    min_conversations=30, guardrail_min_requests=30,
)  # fmt: skip


@pytest.fixture
def controller(tmp_path: Path) -> CanaryController:
    registry = Registry(tmp_path / "registry")
    for name in ("a", "b"):
        publish(registry, make_adapter(tmp_path / name))
    registry.set_state(stable="livealign@1", action="publish")
    config = ControllerConfig(
        registry_dir=registry.root, store_url=f"sqlite:///{tmp_path / 'prefs.sqlite'}",
        policy=POLICY,
    )  # fmt: skip
    return CanaryController(config)


def settle(store: PreferenceStore, arm: str, adapter: str, scores: list[float], t: int) -> None:
    """Settled outcomes, one conversation each, created at ``t``."""
    rows = [
        s.outcome_row(
            ResponseOutcome(
                response_id=f"{adapter}-{arm}-{t}-{i}", conversation_id=f"c-{arm}-{t}-{i}",
                adapter=adapter, arm=arm, created_ms=t, score=score, confidence=0.8,
                n_signals=2, thumbs_up=0, thumbs_down=0, regenerated=False, error=False,
                completion_tokens=20, latency_ms=500.0, ttft_ms=50.0,
            ),
            t,
        )
        for i, score in enumerate(scores)
    ]  # fmt: skip
    with store.transaction() as tx:
        store.upsert_outcomes(tx, rows)


def scores(mean: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [max(-1.0, min(1.0, rng.gauss(mean, 0.3))) for _ in range(n)]


def test_no_canary_no_decision(controller: CanaryController) -> None:
    assert controller.tick(T0) is None
    assert controller.registry.decisions() == []


def test_the_trainers_canary_gets_its_first_step_and_no_data_holds(
    controller: CanaryController,
) -> None:
    controller.registry.set_state(canary="livealign@2", action="publish")  # as the trainer
    decision = controller.tick(T0)
    assert decision is not None and decision.action == "hold" and decision.reason == "no_data"
    state = controller.registry.state()
    assert state.canary_weight == 0.1 and state.rollout is not None
    assert state.rollout.started_ms == T0 and state.rollout.step == 0
    [logged] = controller.registry.decisions()
    assert logged["canary"] == "livealign@2" and logged["action"] == "hold"


def test_a_worse_canary_is_rolled_back(controller: CanaryController) -> None:
    controller.registry.set_state(canary="livealign@2", action="publish")
    controller.tick(T0)
    settle(controller.store, "stable", "livealign@1", scores(0.4, 60, 1), T0 + 1)
    settle(controller.store, "canary", "livealign@2", scores(-0.3, 60, 2), T0 + 1)
    decision = controller.tick(T0 + 30_000)
    assert decision is not None and (decision.action, decision.reason) == ("rollback", "harm")
    state = controller.registry.state()
    assert (state.stable, state.canary, state.canary_weight) == ("livealign@1", None, 0.0)
    assert state.history[-1].action == "rollback"
    assert controller.tick(T0 + 60_000) is None  # nothing left to judge


def test_a_good_canary_walks_the_steps_and_a_restart_resumes(
    controller: CanaryController, tmp_path: Path
) -> None:
    controller.registry.set_state(canary="livealign@2", action="publish")
    controller.tick(T0)
    settle(controller.store, "stable", "livealign@1", scores(0.3, 80, 3), T0 + 1)
    settle(controller.store, "canary", "livealign@2", scores(0.3, 80, 4), T0 + 1)
    early = controller.tick(T0 + 30_000)  # the step's minimum time is not over
    assert early is not None and early.reason == "step_minimum"
    promoted = controller.tick(T0 + 61_000)
    assert promoted is not None and promoted.action == "promote"
    state = controller.registry.state()
    assert state.canary_weight == 0.5 and state.rollout and state.rollout.step == 1
    # Killed and started again: it goes on from step 1, neither repeating nor skipping.
    again = CanaryController(controller.config)
    held = again.tick(T0 + 62_000)
    assert held is not None and held.action == "hold" and again.registry.state().rollout.step == 1  # type: ignore[union-attr]
    assert again.tick(T0 + 122_000).action == "promote"  # type: ignore[union-attr]
    done = again.tick(T0 + 183_000)
    assert done is not None and done.action == "complete"
    state = again.registry.state()
    assert (state.stable, state.canary) == ("livealign@2", None)
    actions = [d["action"] for d in again.registry.decisions()]
    assert actions == ["hold", "hold", "promote", "hold", "promote", "complete"]


def test_a_decision_about_a_replaced_canary_is_not_applied(controller: CanaryController) -> None:
    registry = controller.registry
    registry.set_state(canary="livealign@2", action="publish")
    controller.tick(T0)
    rollout.abort(registry, "operator")
    with pytest.raises(RegistryError, match="canary is None"):
        registry.set_state(canary_weight=0.5, action="canary_step", expect_canary="livealign@2")


def test_operator_commands(controller: CanaryController) -> None:
    registry = controller.registry
    with pytest.raises(RegistryError, match="no canary"):
        rollout.pause(registry, True, "operator")
    registry.set_state(canary="livealign@2", action="publish")
    controller.tick(T0)
    assert rollout.pause(registry, True, "look at it").rollout.paused  # type: ignore[union-attr]
    assert not rollout.pause(registry, False, "ok").rollout.paused  # type: ignore[union-attr]
    state = rollout.set_weight(registry, POLICY, 0.5, T0 + 5, "operator")
    assert state.canary_weight == 0.5 and state.rollout and state.rollout.step == 1
    with pytest.raises(ValueError, match="not a step"):
        rollout.set_weight(registry, POLICY, 0.3, T0 + 6, "operator")
    done = rollout.complete(registry, "operator")
    assert (done.stable, done.canary, done.canary_weight, done.rollout) == (
        "livealign@2",
        None,
        0.0,
        None,
    )


def test_arms_count_their_own_version_only_and_pinned_never() -> None:
    def row(arm: str, adapter: str, conv: str, score: float | None, **kw: object) -> dict:
        base = dict(arm=arm, adapter=adapter, conversation_id=conv, score=score, error=False,
                    thumbs_down=0, regenerated=False, completion_tokens=10, latency_ms=100.0,
                    ttft_ms=10.0)  # fmt: skip
        return {**base, **kw}

    rows = [
        row("canary", "v2", "c1", 0.5), row("canary", "v2", "c1", 0.1),  # one conversation
        row("canary", "v2", "c2", None, thumbs_down=1),  # unscored: requests, not scores
        row("canary", "v2", "c3", None, error=True, latency_ms=9e9),  # failed
        row("pinned", "v2", "c4", -1.0), row("stable", "v2", "c5", -1.0),  # never counted
        row("stable", "v1", "c6", 0.2, regenerated=True),
    ]  # fmt: skip
    arms = summarize(rows, "v2", "v1", {"canary": 3, "stable": 1})
    c, st = arms.canary, arms.stable
    assert (c.scores.count, c.scores.mean) == (1, pytest.approx(0.3))
    assert (c.requests, c.errors, c.thumbs_down, c.answer_tokens) == (4, 1, 1, 30)
    assert c.latency_p95_s == pytest.approx(0.1)  # the failed request's latency is not in
    assert (st.requests, st.regenerates, st.scores.count, st.conversations) == (1, 1, 1, 1)
    assert p95([]) is None and p95([float(i) for i in range(1, 101)]) == 95.0
