"""The canary decision: promote, hold, roll back or complete. Pure: no I/O, no clock.

Every interval the caller summarizes what each arm did (``ArmSummary``) and calls
``decide(policy, state, arms, now)``; it applies the ``Decision`` (routing weight, registry)
and carries the rollout on with ``next_state(state, decision)``. ``decide`` computes the
statistics once (``measure``), then asks the rules below in this order; the first that
speaks decides:

 1. no data from an arm                → hold      (absent data never rolls back)
 2. a severe guardrail breach          → rollback  (at once, before min_conversations)
 3. sample-ratio mismatch              → hold      (an alert: the data cannot be trusted)
 4. significantly worse: CS upper < 0  → rollback
 5. paused by an operator              → hold      (rules 2 and 4 still protect users)
 6. max_duration_s exceeded            → the configured outcome
 7. an ordinary guardrail breach       → hold      (a concern, not proof: keep the
                                                    exposure small and look again)
 8. fewer than min_conversations       → hold
 9. CS lower ≤ -margin                 → hold      (not yet shown non-inferior)
10. the step's minimum count or time,  → hold      (a step is never passed unguarded)
    or too few requests for guardrails
11. otherwise                          → promote, or complete after the last step

CS is the (1 - alpha) confidence sequence of the mean fused score, canary - stable, over
settled and scored conversations (``sequential``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, NamedTuple

from serving.canary.policy import CanaryPolicy, Limit
from serving.canary.sequential import Interval, Moments, confidence_sequence, srm_p_value


class Action(StrEnum):
    PROMOTE = "promote"  # go to the next step's weight
    HOLD = "hold"  # stay at this step's weight
    ROLLBACK = "rollback"  # weight 0; stable stays stable
    COMPLETE = "complete"  # the canary becomes stable


class Reason(StrEnum):
    NO_DATA = "no_data"
    GUARDRAIL_SEVERE = "guardrail_severe"
    SRM = "srm"
    HARM = "harm"
    PAUSED = "paused"
    MAX_DURATION = "max_duration"
    GUARDRAIL = "guardrail"
    WARMING_UP = "warming_up"
    INCONCLUSIVE = "inconclusive"
    STEP_MINIMUM = "step_minimum"
    NON_INFERIOR = "non_inferior"


# The reasons a rollout can be rolled back for (rules 2, 4 and 6 below): the metrics
# export these series at 0 while a canary is on trial, so a rollback's first count shows.
ROLLBACK_REASONS = (Reason.GUARDRAIL_SEVERE, Reason.HARM, Reason.MAX_DURATION)


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """What one arm did. Counts run since the rollout started, except ``conversations``.

    ``scores``: the per-conversation mean fused scores of settled conversations that have
    a score (conversations without any feedback-derived score are left out, not counted
    as 0). ``conversations``: new conversations routed to the arm since the current step
    began (for the sample-ratio check against this step's weight). Latencies are p95s
    over the requests counted here, None while unknown.

    Pooling the steps assumes the users' mix does not drift while the weight changes; if
    it does (time of day), the pooled difference is biased and per-step summaries would
    be needed.
    """

    scores: Moments = field(default_factory=Moments)
    conversations: int = 0
    requests: int = 0
    errors: int = 0
    thumbs_down: int = 0
    regenerates: int = 0
    answer_tokens: int = 0  # completion tokens over answered (non-error) requests
    latency_p95_s: float | None = None
    ttft_p95_s: float | None = None

    @property
    def answered(self) -> int:
        return self.requests - self.errors


@dataclass(frozen=True, slots=True)
class Arms:
    canary: ArmSummary
    stable: ArmSummary


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Where a rollout stands. Times are seconds on the caller's clock (any origin)."""

    started_at: float
    step_started_at: float
    step: int = 0  # index into CanaryPolicy.steps
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Guardrail:
    """One guardrail's value (canary against stable, higher is worse; None: not enough
    requests yet) and its thresholds."""

    name: str
    value: float | None
    limit: Limit

    @property
    def breached(self) -> bool:
        return self.value is not None and self.value > self.limit.hold

    @property
    def severe(self) -> bool:
        return self.value is not None and self.value > self.limit.rollback


@dataclass(frozen=True, slots=True)
class Stats:
    """The numbers behind a decision."""

    weight: float  # this step's canary weight
    n_canary: int  # settled, scored conversations
    n_stable: int
    interval: Interval  # the confidence sequence of canary - stable
    srm_p_value: float | None
    guardrails: tuple[Guardrail, ...]
    guarded: bool = True  # both arms have the requests the guardrails need


class Verdict(NamedTuple):
    action: Action
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: Reason  # machine-friendly code
    message: str  # one human sentence
    at: float  # the ``now`` it was taken at
    weight: float  # the canary weight once it is applied
    stats: Stats

    @property
    def final(self) -> bool:
        """The rollout is over (rolled back or completed)."""
        return self.action in (Action.ROLLBACK, Action.COMPLETE)

    def as_dict(self) -> dict[str, Any]:
        """Flat and JSON-safe (unknown values are None): for a log line or metrics."""
        s = self.stats
        return {
            "action": str(self.action),
            "reason": str(self.reason),
            "message": self.message,
            "at": self.at,
            "weight": self.weight,
            "step_weight": s.weight,
            "n_canary": s.n_canary,
            "n_stable": s.n_stable,
            "estimate": _known(s.interval.estimate),
            "lower": _known(s.interval.lower),
            "upper": _known(s.interval.upper),
            "srm_p_value": s.srm_p_value,
            "guardrails": {g.name: _known(g.value) for g in s.guardrails},
        }


def decide(policy: CanaryPolicy, state: RolloutState, arms: Arms, now: float) -> Decision:
    """The decision at time ``now`` (see the module docstring for the order of the rules)."""
    stats = measure(policy, state, arms)
    verdict = (
        _no_data(arms)
        or _severe_breach(stats)
        or _sample_ratio_mismatch(policy, stats)
        or _harm(policy, stats)
        or _paused(state)
        or _timed_out(policy, state, now)
        or _guardrail_breach(stats)
        or _warming_up(policy, stats)
        or _inconclusive(policy, stats)
        or _step_unfinished(policy, state, stats, now)
        or _pass_step(policy, state, stats)
    )
    weight = _weight_after(policy, state, verdict.action)
    return Decision(*verdict, at=now, weight=weight, stats=stats)


def next_state(state: RolloutState, decision: Decision) -> RolloutState:
    """The state once ``decision`` is applied: a promotion starts the next step."""
    if decision.action is Action.PROMOTE:
        return replace(state, step=state.step + 1, step_started_at=decision.at)
    return state


def measure(policy: CanaryPolicy, state: RolloutState, arms: Arms) -> Stats:
    canary, stable = arms.canary, arms.stable
    weight = policy.steps[state.step]
    return Stats(
        weight=weight,
        n_canary=canary.scores.count,
        n_stable=stable.scores.count,
        interval=confidence_sequence(canary.scores, stable.scores, policy.alpha, policy.mixture_sd),
        srm_p_value=srm_p_value(canary.conversations, stable.conversations, weight),
        guardrails=guardrails(policy, canary, stable),
        guarded=min(canary.requests, stable.requests) >= policy.guardrail_min_requests,
    )


def ready(policy: CanaryPolicy, stats: Stats) -> bool:
    """Both arms have the settled conversations the score needs before any decision on it."""
    return min(stats.n_canary, stats.n_stable) >= policy.min_conversations


def guardrails(
    policy: CanaryPolicy, canary: ArmSummary, stable: ArmSummary
) -> tuple[Guardrail, ...]:
    """Every guardrail's value; the names are the policy's fields holding their limits."""
    c, s = canary, stable
    values = {
        "error_rate": _delta(_rate(c.errors, c.requests), _rate(s.errors, s.requests)),
        "latency_p95_ratio": _ratio(c.latency_p95_s, s.latency_p95_s),
        "ttft_p95_ratio": _ratio(c.ttft_p95_s, s.ttft_p95_s),
        "thumbs_down_rate": _delta(
            _rate(c.thumbs_down, c.answered), _rate(s.thumbs_down, s.answered)
        ),
        "regenerate_rate": _delta(
            _rate(c.regenerates, c.answered), _rate(s.regenerates, s.answered)
        ),
        "answer_length_fold": _fold(
            _ratio(_rate(c.answer_tokens, c.answered), _rate(s.answer_tokens, s.answered))
        ),
    }
    enough = min(c.requests, s.requests) >= policy.guardrail_min_requests
    return tuple(
        Guardrail(name, value if enough else None, getattr(policy, name))
        for name, value in values.items()
    )


# ── The rules, in the order decide() asks them ───────────────────────────────────────────


def _no_data(arms: Arms) -> Verdict | None:
    empty = [
        name
        for name, arm in (("canary", arms.canary), ("stable", arms.stable))
        if arm.requests == 0 and arm.scores.count == 0
    ]
    if not empty:
        return None
    return Verdict(Action.HOLD, Reason.NO_DATA, f"No data from the {' and '.join(empty)} arm.")


def _severe_breach(stats: Stats) -> Verdict | None:
    severe = [g for g in stats.guardrails if g.severe]
    if not severe:
        return None
    which = _describe(severe, severe=True)
    return Verdict(Action.ROLLBACK, Reason.GUARDRAIL_SEVERE, f"Severe guardrail breach: {which}.")


def _sample_ratio_mismatch(policy: CanaryPolicy, stats: Stats) -> Verdict | None:
    p = stats.srm_p_value
    if p is None or p >= policy.srm_p_value:
        return None
    return Verdict(
        Action.HOLD,
        Reason.SRM,
        f"Sample-ratio mismatch: this step's conversation counts do not fit weight "
        f"{stats.weight:.0%} (p = {p:.2g}); routing or logging is broken.",
    )


def _harm(policy: CanaryPolicy, stats: Stats) -> Verdict | None:
    if not ready(policy, stats) or stats.interval.upper >= 0:
        return None
    return Verdict(
        Action.ROLLBACK, Reason.HARM, f"Canary is worse than stable: {_cs(policy, stats)} < 0."
    )


def _paused(state: RolloutState) -> Verdict | None:
    return Verdict(Action.HOLD, Reason.PAUSED, "Paused by an operator.") if state.paused else None


def _timed_out(policy: CanaryPolicy, state: RolloutState, now: float) -> Verdict | None:
    if now - state.started_at < policy.max_duration_s:
        return None
    action = Action(policy.max_duration_action)
    return Verdict(
        action,
        Reason.MAX_DURATION,
        f"No conclusion within {policy.max_duration_s:.0f} s; configured outcome: {action}.",
    )


def _guardrail_breach(stats: Stats) -> Verdict | None:
    breached = [g for g in stats.guardrails if g.breached]
    if not breached:
        return None
    return Verdict(Action.HOLD, Reason.GUARDRAIL, f"Guardrail breach: {_describe(breached)}.")


def _warming_up(policy: CanaryPolicy, stats: Stats) -> Verdict | None:
    if ready(policy, stats):
        return None
    return Verdict(
        Action.HOLD,
        Reason.WARMING_UP,
        f"{stats.n_canary} canary and {stats.n_stable} stable scored conversations; "
        f"{policy.min_conversations} each before deciding on the score.",
    )


def _inconclusive(policy: CanaryPolicy, stats: Stats) -> Verdict | None:
    if stats.interval.lower > -policy.margin:
        return None
    return Verdict(
        Action.HOLD,
        Reason.INCONCLUSIVE,
        f"Not yet shown non-inferior: {_cs(policy, stats)} reaches -{policy.margin:g}.",
    )


def _step_unfinished(
    policy: CanaryPolicy, state: RolloutState, stats: Stats, now: float
) -> Verdict | None:
    need, have = policy.step_min_conversations[state.step], min(stats.n_canary, stats.n_stable)
    waited = now - state.step_started_at
    if have >= need and waited >= policy.min_step_s and stats.guarded:
        return None
    if have >= need and waited >= policy.min_step_s:
        # A step is not passed on the score alone: its guardrails must have had a look.
        return Verdict(
            Action.HOLD,
            Reason.STEP_MINIMUM,
            f"Step {stats.weight:.0%} waits for the guardrails: "
            f"{policy.guardrail_min_requests} requests per arm before they are evaluated.",
        )
    return Verdict(
        Action.HOLD,
        Reason.STEP_MINIMUM,
        f"Step {stats.weight:.0%} needs {need} scored conversations per arm and "
        f"{policy.min_step_s:.0f} s; it has {have} and {waited:.0f} s.",
    )


def _pass_step(policy: CanaryPolicy, state: RolloutState, stats: Stats) -> Verdict:
    last = state.step == len(policy.steps) - 1
    then = "the canary becomes stable" if last else f"on to {policy.steps[state.step + 1]:.0%}"
    return Verdict(
        Action.COMPLETE if last else Action.PROMOTE,
        Reason.NON_INFERIOR,
        f"Non-inferior: {_cs(policy, stats)} > -{policy.margin:g}; {then}.",
    )


# ── Helpers ──────────────────────────────────────────────────────────────────────────────


def _weight_after(policy: CanaryPolicy, state: RolloutState, action: Action) -> float:
    match action:
        case Action.PROMOTE:
            return policy.steps[state.step + 1]
        case Action.ROLLBACK:
            return 0.0
        case Action.COMPLETE:
            return 1.0
        case Action.HOLD:
            return policy.steps[state.step]


def _describe(breaches: list[Guardrail], severe: bool = False) -> str:
    return ", ".join(
        f"{g.name} {g.value:.3g} > {g.limit.rollback if severe else g.limit.hold:g}"
        for g in breaches
    )


def _cs(policy: CanaryPolicy, stats: Stats) -> str:
    cs = stats.interval
    return (
        f"the {1 - policy.alpha:.0%} confidence sequence of canary - stable "
        f"[{cs.lower:+.3f}, {cs.upper:+.3f}] (estimate {cs.estimate:+.3f})"
    )


def _known(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _rate(events: int, trials: int) -> float | None:
    return events / trials if trials > 0 else None


def _delta(canary: float | None, stable: float | None) -> float | None:
    return None if canary is None or stable is None else canary - stable


def _ratio(canary: float | None, stable: float | None) -> float | None:
    return None if canary is None or stable is None or stable <= 0 else canary / stable


def _fold(ratio: float | None) -> float | None:
    if ratio is None:
        return None
    return math.inf if ratio <= 0 else max(ratio, 1 / ratio)  # empty answers: infinitely short
