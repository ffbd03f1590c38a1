"""A rollout's changes to the registry: the only place that writes canary state.

The trainer publishes a new version into the registry's canary slot at weight 0 with no
rollout; ``start`` gives it the policy's first step. From then on ``apply`` carries out
the controller's decisions, and the operator's commands (``complete``, ``abort``,
``pause``, ``set_weight``) change the same state.json the same way. Serving follows
the refs and the weight; the controller resumes from the rollout after a restart.

Every change names the canary it is about (``expect_canary``): a decision about a canary
that an operator or the trainer replaced meanwhile is refused, not applied to the new one.
"""

from __future__ import annotations

from serving.canary.controller import Action, Decision, RolloutState
from serving.canary.policy import CanaryPolicy
from trainer.registry import Registry, RegistryError, RegistryState, Rollout


def controller_state(rollout: Rollout) -> RolloutState:
    """The registry's rollout as the decision logic sees it (seconds, epoch origin)."""
    return RolloutState(
        started_at=rollout.started_ms / 1000,
        step_started_at=rollout.step_started_ms / 1000,
        step=rollout.step,
        paused=rollout.paused,
    )


def start(registry: Registry, policy: CanaryPolicy, now_ms: int) -> RegistryState:
    """Begin the trial of the canary the trainer published: the first step's weight."""
    state = registry.state()
    if state.canary is None or state.rollout is not None:
        return state
    return registry.set_state(
        canary_weight=policy.steps[0],
        rollout=Rollout(started_ms=now_ms, step=0, step_started_ms=now_ms),
        action="canary_start",
        reason=f"rollout started at {policy.steps[0]:.0%}",
        expect_canary=state.canary,
    )


def apply(registry: Registry, canary: str, decision: Decision) -> RegistryState | None:
    """Carry out a decision about ``canary``; None for a hold (nothing changes)."""
    reason = f"{decision.reason}: {decision.message}"
    match decision.action:
        case Action.HOLD:
            return None
        case Action.ROLLBACK:
            return registry.set_state(
                canary=None, action="rollback", reason=reason, expect_canary=canary
            )
        case Action.COMPLETE:
            return registry.set_state(
                stable=canary, action="promote", reason=reason, expect_canary=canary
            )
        case Action.PROMOTE:
            rollout = _rollout(registry, canary)
            step = rollout.step + 1
            return registry.set_state(
                canary_weight=decision.weight,
                rollout=rollout.model_copy(
                    update={"step": step, "step_started_ms": int(decision.at * 1000)}
                ),
                action="canary_step",
                reason=reason,
                expect_canary=canary,
            )


def complete(registry: Registry, reason: str) -> RegistryState:
    """An operator makes the canary stable now."""
    canary = _canary(registry)
    return registry.set_state(stable=canary, action="promote", reason=reason, expect_canary=canary)


def abort(registry: Registry, reason: str) -> RegistryState:
    """An operator rolls the canary back now."""
    canary = _canary(registry)
    return registry.set_state(canary=None, action="rollback", reason=reason, expect_canary=canary)


def pause(registry: Registry, paused: bool, reason: str) -> RegistryState:
    """Stop (or resume) promotions; the controller still rolls back a harmful canary."""
    canary = _canary(registry)
    rollout = _rollout(registry, canary).model_copy(update={"paused": paused})
    return registry.set_state(
        rollout=rollout,
        action="canary_pause" if paused else "canary_resume",
        reason=reason,
        expect_canary=canary,
    )


def set_weight(
    registry: Registry, policy: CanaryPolicy, weight: float, now_ms: int, reason: str
) -> RegistryState:
    """An operator moves the rollout to the step of this weight (one of the policy's
    steps, so the controller's sample-ratio check knows the weight), starting it now;
    promotions go on from there."""
    if weight not in policy.steps:
        steps = ", ".join(f"{w:g}" for w in policy.steps)
        raise ValueError(f"weight {weight:g} is not a step of the policy ({steps})")
    canary = _canary(registry)
    rollout = _rollout(registry, canary).model_copy(
        update={"step": policy.steps.index(weight), "step_started_ms": now_ms}
    )
    return registry.set_state(
        canary_weight=weight,
        rollout=rollout,
        action="canary_weight",
        reason=reason,
        expect_canary=canary,
    )


def _canary(registry: Registry) -> str:
    canary = registry.state().canary
    if canary is None:
        raise RegistryError("no canary is on trial")
    return canary


def _rollout(registry: Registry, canary: str) -> Rollout:
    state = registry.state()
    if state.canary != canary or state.rollout is None:
        raise RegistryError(f"{canary} has no rollout in progress")
    return state.rollout
