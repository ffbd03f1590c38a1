"""Canary rollouts on simulated traffic: the controller's loop, with no stack.

Each interval: new conversations arrive (Poisson, ``Traffic.rate`` a second) and are routed
by their hash, uniform in [0, 1), to the canary when it is below the current step's weight
(sticky: a raised weight keeps every canary conversation on the canary). Their requests
count at once towards the guardrails; their score settles ``feedback_delay_s`` after they
started, and only ``scored_share`` of them ever get one. Then ``decide`` runs on what has
settled, and the weight follows its decision. Alongside, the naive fixed-horizon interval
is computed on the same data at the same times, to count how often a controller peeking at
it would have rolled back.

For speed, a run's randomness is drawn up front (``_Draws``), per interval and per hash
bin: the hashes between two consecutive step weights, so that bin j is canary traffic from
step j on. Each conversation's score is drawn for both versions with the same random
numbers, and the weight in force when it arrived picks which one counts.

Used by ``bench/canary.py --replay`` and by the tests; everything is seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from serving.canary.controller import (
    Action,
    Arms,
    ArmSummary,
    Reason,
    RolloutState,
    decide,
    next_state,
    ready,
)
from serving.canary.policy import CanaryPolicy
from serving.canary.sequential import Interval, Moments, fixed_horizon_interval

_N = NormalDist()
# Standard error of log(sample p95) times sqrt(n), per unit of log-latency spread, for a
# lognormal latency: sqrt(p (1 - p)) / density at the quantile (the sample quantile's CLT).
_P95_LOG_SE = math.sqrt(0.95 * 0.05) / _N.pdf(_N.inv_cdf(0.95))
_CHUNK = 60  # intervals drawn at a time


@dataclass(frozen=True)
class ScoreModel:
    """Per-conversation mean fused scores of scored conversations: a mixture of normals
    clipped to [-1, 1]. The default stands for what the fuser produces: a quarter of the
    scored conversations liked (thumbs up, kept answers), some disliked, most carrying
    only weak implicit signals. Mean 0.14, standard deviation 0.50."""

    weights: tuple[float, ...] = (0.25, 0.15, 0.60)  # liked, disliked, implicit only
    means: tuple[float, ...] = (0.75, -0.70, 0.10)
    sds: tuple[float, ...] = (0.15, 0.15, 0.25)

    def draw(self, rng: np.random.Generator, n: int, shifts: tuple[float, ...]) -> np.ndarray:
        """n scores for each shift of the components' means, [shift, n], from the same
        random numbers: the conversations are the same, only the version answering differs."""
        kind = np.searchsorted(np.cumsum(self.weights[:-1]), rng.random(n))
        x = np.asarray(self.means)[kind] + rng.standard_normal(n) * np.asarray(self.sds)[kind]
        return np.clip(x + np.asarray(shifts)[:, None], -1.0, 1.0)

    def mean(self, shift: float = 0.0) -> float:
        """The exact mean of ``draw`` at ``shift`` (clipping shrinks a shift a little)."""
        return sum(
            w * _clipped_normal_mean(m + shift, s)
            for w, m, s in zip(self.weights, self.means, self.sds, strict=True)
        )


@dataclass(frozen=True)
class Traffic:
    """The simulated deployment: the same for both arms, except for the canary's score."""

    rate: float = 2.0  # new conversations per second
    feedback_delay_s: float = 120.0  # a conversation's score settles this long after it starts
    scored_share: float = 0.5  # settled conversations that get a feedback-derived score
    requests_per_conversation: float = 2.5  # mean; 1 + Poisson
    error_rate: float = 0.01
    thumbs_down_rate: float = 0.04  # per answered request
    regenerate_rate: float = 0.08
    answer_tokens: float = 120.0  # mean completion tokens (sd half of it)
    latency_p95_s: float = 2.0
    ttft_p95_s: float = 0.3
    latency_log_sd: float = 0.5  # spread of log latency: how noisy a p95 of n requests is
    scores: ScoreModel = field(default_factory=ScoreModel)


@dataclass(frozen=True, slots=True)
class TracePoint:
    """One decision of a run, for a plot."""

    t: float
    weight: float  # the canary weight after the decision
    ready: bool  # both arms had min_conversations: the score could decide
    sequential: Interval
    naive: Interval


@dataclass(frozen=True)
class Run:
    """How one simulated rollout ended."""

    action: Action  # the last decision's (hold only if max_duration_s never came)
    reason: Reason
    ended_at: float  # seconds since the start
    exposed: int  # conversations routed to the canary
    max_weight: float  # the highest canary weight it reached
    naive_rolled_back: bool  # the naive interval was below 0 at some decision
    trace: tuple[TracePoint, ...] = ()

    @property
    def rolled_back_on_evidence(self) -> bool:
        """Rolled back by the score or a guardrail, not because time ran out."""
        return self.action is Action.ROLLBACK and self.reason is not Reason.MAX_DURATION


def simulate(
    policy: CanaryPolicy, traffic: Traffic, effect: float, runs: int, seed: int
) -> list[Run]:
    """``runs`` independent rollouts of a canary whose scores are shifted by ``effect``."""
    return [simulate_run(policy, traffic, effect, run_rng(seed, i)) for i in range(runs)]


def run_rng(seed: int, run: int) -> np.random.Generator:
    """The generator of run ``run`` of ``simulate(..., seed)``: to replay one with a trace."""
    return np.random.default_rng([seed, run])


def simulate_run(
    policy: CanaryPolicy,
    traffic: Traffic,
    effect: float,
    rng: np.random.Generator,
    trace: bool = False,
) -> Run:
    dt = policy.interval_s
    ticks = math.ceil(policy.max_duration_s / dt)
    delay = int(traffic.feedback_delay_s // dt)  # whole intervals; some settle one later
    settling = np.zeros((2, ticks + delay + 2, 3))  # [arm, tick it settles at, moments]
    settled = np.zeros((2, 3))
    totals = np.zeros((2, 5))  # [arm, (requests, errors, thumbs down, regenerations, tokens)]
    conversations = np.zeros(2)  # this step's, per arm
    exposed, max_weight, naive = 0, 0.0, False
    points: list[TracePoint] = []
    state = RolloutState(started_at=0.0, step_started_at=0.0)
    for i in range(ticks):
        if i % _CHUNK == 0:  # drawn as needed: most runs end long before max_duration_s
            draws = _Draws.of(policy, traffic, effect, min(_CHUNK, ticks - i), rng)
        d, j = i % _CHUNK, state.step  # bins 0..j go to the canary
        max_weight = max(max_weight, policy.steps[j])
        exposed += int(draws.new[d, j])
        _book(conversations, draws.new[d], draws.new[d], j)
        _book(totals, draws.guard[d], draws.guard[d], j)
        stable_version, canary_version = draws.scores[d]
        _book(settling[:, i + delay : i + delay + 2], stable_version, canary_version, j)
        settled += settling[:, i]
        arms = Arms(
            canary=_summary(settled[1], totals[1], conversations[1], draws.p95[d, 1], traffic),
            stable=_summary(settled[0], totals[0], conversations[0], draws.p95[d, 0], traffic),
        )
        decision = decide(policy, state, arms, now=(i + 1) * dt)
        shadow = fixed_horizon_interval(arms.canary.scores, arms.stable.scores, policy.alpha)
        can_decide = ready(policy, decision.stats)
        naive = naive or (can_decide and shadow.upper < 0)
        if trace:
            seq = decision.stats.interval
            points.append(TracePoint(decision.at, decision.weight, can_decide, seq, shadow))
        if decision.final or i == ticks - 1:
            return Run(
                decision.action,
                decision.reason,
                decision.at,
                exposed,
                max_weight,
                naive,
                tuple(points),
            )
        if decision.action is Action.PROMOTE:
            conversations[:] = 0
        state = next_state(state, decision)
    raise ValueError("max_duration_s must be at least one interval")


@dataclass(frozen=True)
class _Draws:
    """One run's randomness, cumulated over the hash bins (axis 1): ``x[i, j]`` is what
    interval i brought in bins 0..j, i.e. to the canary at step j; ``x[i, -1]`` is all.
    Scores come in both versions (stable's, canary's): each arm takes its own."""

    new: np.ndarray  # [tick, bin] new conversations
    guard: np.ndarray  # [tick, bin, (requests, errors, thumbs down, regenerations, tokens)]
    scores: np.ndarray  # [tick, version, bin, settle delay (+0, +1), (count, sum, sum sq)]
    p95: np.ndarray  # [tick, arm, (latency, ttft)] standard normal noise of the p95s

    @classmethod
    def of(
        cls,
        policy: CanaryPolicy,
        traffic: Traffic,
        effect: float,
        ticks: int,
        rng: np.random.Generator,
    ) -> _Draws:
        dt = policy.interval_s
        bins = np.diff([0.0, *policy.steps, 1.0])  # the last is never canary
        new = rng.multinomial(rng.poisson(traffic.rate * dt, ticks), bins)
        requests = new + rng.poisson(new * (traffic.requests_per_conversation - 1))
        errors = rng.binomial(requests, traffic.error_rate)
        answered = requests - errors
        tokens = rng.normal(
            answered * traffic.answer_tokens, np.sqrt(answered) * traffic.answer_tokens / 2
        )
        guard = np.stack(
            (
                requests,
                errors,
                rng.binomial(answered, traffic.thumbs_down_rate),
                rng.binomial(answered, traffic.regenerate_rate),
                np.maximum(tokens, 0.0),
            ),
            axis=-1,
        )
        scores = _scores(traffic, effect, rng.binomial(new, traffic.scored_share), dt, rng)
        p95 = rng.standard_normal((ticks, 2, 2))
        return cls(new.cumsum(1), guard.cumsum(1), scores.cumsum(2), p95)


def _scores(
    traffic: Traffic, effect: float, scored: np.ndarray, dt: float, rng: np.random.Generator
) -> np.ndarray:
    """Moments of the scored conversations, [tick, version, bin, settle delay, moments]."""
    cell = np.repeat(np.arange(scored.size), scored.ravel())  # each one's (tick, bin), flat
    # It settles one interval later when it started less than the delay's remainder before
    # the decision (a start is uniform over its interval).
    late = rng.random(cell.size) < (traffic.feedback_delay_s % dt) / dt
    slot, slots = cell * 2 + late, scored.size * 2  # flat (tick, bin, settle delay)
    out = np.empty((2, 3, slots))  # [version, moment, slot]
    for version, x in enumerate(traffic.scores.draw(rng, cell.size, shifts=(0.0, effect))):
        for moment, weights in enumerate((None, x, x * x)):
            out[version, moment] = np.bincount(slot, weights, minlength=slots)
    return out.reshape(2, 3, *scored.shape, 2).transpose(2, 0, 3, 4, 1)


def _book(into: np.ndarray, stable: np.ndarray, canary: np.ndarray, step: int) -> None:
    """Add one interval's bin-cumulated draws at ``step`` to ``into`` (stable, canary): the
    canary gets bins 0..step of its own version, stable the rest of its own."""
    into[0] += stable[-1] - stable[step]
    into[1] += canary[step]


def _summary(
    settled: np.ndarray,
    totals: np.ndarray,
    conversations: float,
    p95_noise: np.ndarray,
    traffic: Traffic,
) -> ArmSummary:
    requests, errors, thumbs_down, regenerates, tokens = (int(v) for v in totals)
    latency, ttft = (
        _p95(true, noise, requests, traffic)
        for true, noise in zip((traffic.latency_p95_s, traffic.ttft_p95_s), p95_noise, strict=True)
    )
    return ArmSummary(
        scores=Moments(int(settled[0]), float(settled[1]), float(settled[2])),
        conversations=int(conversations),
        requests=requests,
        errors=errors,
        thumbs_down=thumbs_down,
        regenerates=regenerates,
        answer_tokens=tokens,
        latency_p95_s=latency,
        ttft_p95_s=ttft,
    )


def _p95(true_p95: float, noise: float, requests: int, traffic: Traffic) -> float | None:
    """A sample p95 of ``requests`` latencies, from standard normal ``noise``. Drawn afresh
    at every decision: noisier than a real running p95, whose errors persist."""
    if requests == 0:
        return None
    return true_p95 * math.exp(noise * _P95_LOG_SE * traffic.latency_log_sd / math.sqrt(requests))


def _clipped_normal_mean(mean: float, sd: float) -> float:
    """E[clip(X, -1, 1)] for X ~ N(mean, sd²)."""
    a, b = (-1 - mean) / sd, (1 - mean) / sd
    inside = mean * (_N.cdf(b) - _N.cdf(a)) + sd * (_N.pdf(a) - _N.pdf(b))
    return -_N.cdf(a) + inside + (1 - _N.cdf(b))
