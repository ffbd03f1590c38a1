"""The canary controller: its error rates by simulation, and each rule on a constructed case."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from serving.canary.controller import (
    Action,
    Arms,
    ArmSummary,
    Reason,
    RolloutState,
    decide,
    next_state,
)
from serving.canary.policy import CanaryPolicy
from serving.canary.sequential import (
    Moments,
    confidence_sequence,
    fixed_horizon_interval,
    srm_p_value,
)
from serving.canary.simulate import Run, Traffic, simulate

POLICY = CanaryPolicy()
# Twice the default traffic: the same statistics in half the intervals, to keep this fast.
BUSY = Traffic(rate=4.0)
AA_RUNS = 1000
WORSE = -0.3  # shift of the canary's fused scores (-0.29 on the mean after clipping)


@pytest.fixture(scope="module")
def aa_runs() -> list[Run]:
    return simulate(POLICY, BUSY, effect=0.0, runs=AA_RUNS, seed=11)


def _share(runs: list[Run], hit: str) -> float:
    return sum(getattr(r, hit) for r in runs) / len(runs)


def test_aa_false_rollback_rate_is_within_alpha(aa_runs: list[Run]) -> None:
    # 3 binomial standard errors at alpha: a controller exactly at alpha passes 99.9% of
    # the time. The confidence sequence is two-sided, so the harm side alone spends about
    # alpha/2: the rate is expected near 0.025.
    tolerance = 3 * math.sqrt(POLICY.alpha * (1 - POLICY.alpha) / AA_RUNS)
    assert _share(aa_runs, "rolled_back_on_evidence") <= POLICY.alpha + tolerance
    assert sum(r.action is Action.COMPLETE for r in aa_runs) >= 0.9 * AA_RUNS


def test_naive_interval_peeked_as_often_rolls_back_far_more(aa_runs: list[Run]) -> None:
    assert _share(aa_runs, "naive_rolled_back") > 2 * POLICY.alpha


def test_clearly_worse_canary_is_rolled_back_early() -> None:
    runs = simulate(POLICY, BUSY, effect=WORSE, runs=200, seed=12)
    rolled = [r for r in runs if r.rolled_back_on_evidence]
    assert len(rolled) >= 0.99 * len(runs)
    assert all(r.max_weight < 0.5 for r in rolled)
    assert sorted(r.exposed for r in rolled)[len(rolled) // 2] < 300


# ── Each rule on a constructed case ───────────────────────────────────────────────────────


def _arm(
    mean: float = 0.1, n: int = 400, weight: float = 0.05, total: int = 2000, **guard: float
) -> ArmSummary:
    """An arm with n scored conversations of that mean (sd 0.5), ``weight`` of this step's
    ``total`` conversations (the first step's canary share by default), and healthy
    guardrails unless overridden."""
    scores = Moments(n, n * mean, (n - 1) * 0.25 + n * mean * mean)
    fields: dict = dict(
        requests=1000,
        errors=10,
        thumbs_down=40,
        regenerates=80,
        answer_tokens=120 * 990,
        latency_p95_s=2.0,
        ttft_p95_s=0.3,
    )
    fields.update(guard)
    return ArmSummary(scores=scores, conversations=round(weight * total), **fields)


def _arms(canary: ArmSummary | None = None) -> Arms:
    return Arms(canary=canary or _arm(), stable=_arm(n=4000, weight=0.95))


START = RolloutState(started_at=0.0, step_started_at=0.0)
LATER = 600.0  # past min_step_s, well before max_duration_s


def test_equal_arms_with_enough_data_promote() -> None:
    decision = decide(POLICY, START, _arms(), LATER)
    assert (decision.action, decision.reason) == (Action.PROMOTE, Reason.NON_INFERIOR)
    assert decision.weight == POLICY.steps[1]
    json.dumps(decision.as_dict(), allow_nan=False)  # loggable as is


def test_decision_as_dict_has_no_infinities_while_unknown() -> None:
    decision = decide(POLICY, START, Arms(_arm(n=1), _arm(n=1, answer_tokens=0)), LATER)
    record = decision.as_dict()
    assert record["lower"] is record["upper"] is record["estimate"] is None
    json.dumps(record, allow_nan=False)


def test_promotion_walks_the_steps_and_completes() -> None:
    state, actions, weights = START, [], []
    for k, weight in enumerate(POLICY.steps):
        canary = _arm(n=1000, weight=weight)
        arms = Arms(canary, _arm(n=4000, weight=1 - weight))
        decision = decide(POLICY, state, arms, now=(k + 1) * POLICY.min_step_s)
        actions.append(decision.action)
        weights.append(decision.weight)
        state = next_state(state, decision)
    assert actions == [Action.PROMOTE] * 4 + [Action.COMPLETE]
    assert weights == [0.10, 0.25, 0.50, 1.0, 1.0]
    assert decision.final


def test_a_step_is_not_left_before_its_minimum_time() -> None:
    decision = decide(POLICY, START, _arms(), now=POLICY.min_step_s - 1)
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.STEP_MINIMUM)


def test_significantly_worse_canary_rolls_back_even_when_paused() -> None:
    arms = _arms(_arm(mean=-0.3, n=200))
    for paused in (False, True):
        state = RolloutState(0.0, 0.0, paused=paused)
        decision = decide(POLICY, state, arms, LATER)
        assert (decision.action, decision.reason) == (Action.ROLLBACK, Reason.HARM)
        assert decision.stats.interval.upper < 0


def test_paused_rollout_holds() -> None:
    decision = decide(POLICY, RolloutState(0.0, 0.0, paused=True), _arms(), LATER)
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.PAUSED)


def test_too_few_conversations_hold() -> None:
    decision = decide(POLICY, START, _arms(_arm(mean=-0.5, n=10)), LATER)
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.WARMING_UP)


def test_inconclusive_holds() -> None:
    decision = decide(POLICY, START, _arms(_arm(mean=0.05, n=100)), LATER)
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.INCONCLUSIVE)
    assert decision.stats.interval.lower <= -POLICY.margin < 0 < decision.stats.interval.upper


def test_sample_ratio_mismatch_holds() -> None:
    arms = _arms(_arm(weight=0.10))  # 10% of the conversations at a 5% step
    decision = decide(POLICY, START, arms, LATER)
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.SRM)
    assert decision.stats.srm_p_value is not None
    assert decision.stats.srm_p_value < POLICY.srm_p_value


def test_no_data_holds_and_never_rolls_back() -> None:
    for canary in (ArmSummary(), _arm(mean=-1.0)):
        arms = Arms(canary, ArmSummary())
        past_the_end = POLICY.max_duration_s + 1
        decision = decide(POLICY, START, arms, past_the_end)
        assert (decision.action, decision.reason) == (Action.HOLD, Reason.NO_DATA)


@pytest.mark.parametrize(
    "guard",
    [{"errors": 100}, {"latency_p95_s": 4.5}, {"ttft_p95_s": 0.7}, {"answer_tokens": 0}],
)
def test_severe_guardrail_breach_rolls_back_before_the_minimum_sample(guard: dict) -> None:
    canary = _arm(n=5, **guard)  # far fewer than min_conversations
    decision = decide(POLICY, START, _arms(canary), LATER)
    assert (decision.action, decision.reason) == (Action.ROLLBACK, Reason.GUARDRAIL_SEVERE)


def test_guardrails_wait_for_their_minimum_requests() -> None:
    canary = _arm(requests=POLICY.guardrail_min_requests - 1, errors=50)
    decision = decide(POLICY, START, _arms(canary), LATER)
    assert decision.action is not Action.ROLLBACK
    assert all(g.value is None for g in decision.stats.guardrails)


def test_a_step_is_not_passed_before_its_guardrails_are_evaluated() -> None:
    canary = _arm(requests=POLICY.guardrail_min_requests - 1)  # scores enough, requests not
    decision = decide(POLICY, START, _arms(canary), LATER)
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.STEP_MINIMUM)
    assert "guardrails" in decision.message
    n = POLICY.guardrail_min_requests  # the same rates as stable's, on fewer requests
    enough = _arm(requests=n, errors=n // 100, thumbs_down=n // 25, regenerates=n // 12,
                  answer_tokens=120 * (n - n // 100))  # fmt: skip
    assert decide(POLICY, START, _arms(enough), LATER).action is Action.PROMOTE


def test_ordinary_guardrail_breach_holds() -> None:
    decision = decide(POLICY, START, _arms(_arm(latency_p95_s=2.6)), LATER)  # ratio 1.3
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.GUARDRAIL)


@pytest.mark.parametrize("outcome", ["rollback", "complete"])
def test_max_duration_gives_the_configured_outcome(outcome: str) -> None:
    policy = CanaryPolicy(max_duration_action=outcome)
    arms = _arms(_arm(mean=0.05, n=100))  # inconclusive
    decision = decide(policy, START, arms, now=policy.max_duration_s)
    assert (decision.action, decision.reason) == (Action(outcome), Reason.MAX_DURATION)


# ── The statistics ───────────────────────────────────────────────────────────────────────


def _mixture_likelihood_ratio(d: float, v: float, theta0: float, tau: float) -> float:
    """Johari, Pekelis, Walsh (2022), normal mixture N(theta0, tau^2), Var(D) = v."""
    t2 = tau * tau
    return math.sqrt(v / (v + t2)) * math.exp(t2 * (d - theta0) ** 2 / (2 * v * (v + t2)))


def test_confidence_sequence_bounds_are_where_the_mixture_ratio_reaches_one_over_alpha() -> None:
    canary, stable = Moments.of([0.2, -0.4, 0.9, 0.1, -0.1] * 20), Moments.of([0.3, 0.5, -0.2] * 90)
    cs = confidence_sequence(canary, stable, POLICY.alpha, POLICY.mixture_sd)
    v = canary.variance / canary.count + stable.variance / stable.count
    for bound in (cs.lower, cs.upper):
        ratio = _mixture_likelihood_ratio(cs.estimate, v, bound, POLICY.mixture_sd)
        assert ratio == pytest.approx(1 / POLICY.alpha)
    naive = fixed_horizon_interval(canary, stable, POLICY.alpha)
    assert cs.lower < naive.lower < naive.estimate == cs.estimate < naive.upper < cs.upper


def test_intervals_are_unbounded_below_two_conversations() -> None:
    cs = confidence_sequence(Moments.of([0.5]), Moments.of([0.1, 0.2]), 0.05, 0.2)
    assert math.isnan(cs.estimate)
    assert (cs.lower, cs.upper) == (-math.inf, math.inf)


def test_srm_p_value() -> None:
    assert srm_p_value(50, 950, 0.05) == pytest.approx(1.0)
    assert srm_p_value(100, 900, 0.05) < 1e-9
    assert srm_p_value(3, 57, 0.05) is None  # expected canary count below 5
    assert srm_p_value(1000, 0, 1.0) is None


def test_policy_rejects_bad_settings() -> None:
    with pytest.raises(ValidationError):
        CanaryPolicy(steps=[0.1, 0.05, 1.0], step_min_conversations=[1, 2, 3])
    with pytest.raises(ValidationError):
        CanaryPolicy(steps=[0.5, 1.0])  # step_min_conversations still has five entries
    with pytest.raises(ValidationError):
        CanaryPolicy(alpah=0.1)  # type: ignore[call-arg]
