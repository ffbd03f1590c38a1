"""Anytime-valid inference on the score difference canary - stable, and the naive test.

The unit is the conversation (conversations are what the router assigns, by hash): the
caller averages a conversation's response scores into one value, and each arm is summed up
by ``Moments`` (count, sum, sum of squares of those values), which it can keep up to date
one settled conversation at a time. Only settled conversations with a score count.

The confidence sequence
-----------------------
With D = mean(canary) - mean(stable) and V = s_canary^2 / n_canary + s_stable^2 / n_stable
(Welch's variance of D, sample variances plugged in), the likelihood ratio of the mSPRT
with a normal mixing distribution N(theta0, tau^2) over the true difference is, in the
Gaussian approximation D ~ N(theta, V),

    L(theta0) = sqrt(V / (V + tau^2)) * exp(tau^2 (D - theta0)^2 / (2 V (V + tau^2)))

(Johari, Pekelis, Walsh, "Always valid inference: continuous monitoring of A/B tests",
Operations Research 70(3), 2022: their normal mSPRT for two streams, with arms of equal
size n and V = 2 sigma^2 / n). L(theta) is a martingale under theta, so by Ville's
inequality P(some t has L_t(theta) >= 1/alpha) <= alpha, and the theta0 with
L(theta0) < 1/alpha form a (1 - alpha) confidence sequence:

    D +- sqrt(V (V + tau^2) / tau^2 * log((V + tau^2) / (V alpha^2))).

With V = sigma^2 / t and tau^2 = rho^2 sigma^2 this is Robbins' normal-mixture boundary as
the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences" (arXiv:2103.06476):
mu_hat +- sigma_hat sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha))
(the authors' R code calls it ``std_conjmix_margin``); they show that plugging in the
sample variance keeps the time-uniform coverage asymptotically. Written on V (the
information is 1/V) rather than on t, it covers arms of unequal and changing sizes: the
canary's weight grows step by step, and D on the information scale keeps independent
increments (the "canonical joint distribution" of group-sequential analysis, Jennison &
Turnbull, "Group sequential methods", 2000, ch. 11).

tau is ``CanaryPolicy.mixture_sd``. At a given V the half-width is smallest for
tau^2 / V = -W_{-1}(-alpha^2 / e) - 1 (W_{-1}: the lower branch of Lambert's W; this is
Waudby-Smith et al.'s choice of rho for a target time), 8.2 at alpha = 0.05: the sequence
is tightest where the standard error of D is about tau / 2.9.

The naive test
--------------
``fixed_horizon_interval`` is the textbook two-sample z interval D +- z_{1 - alpha/2}
sqrt(V). It is valid at one sample size fixed in advance; a controller that looks at it
every interval and acts the first time it excludes 0 rolls back far more often than
alpha (``bench/canary.py`` measures how much), which is why the controller uses the
confidence sequence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class Moments:
    """Count, sum and sum of squares of one arm's per-conversation mean scores.

    The fields add up: the caller keeps a running total as conversations settle.
    """

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float]) -> Moments:
        xs = list(values)
        return cls(len(xs), math.fsum(xs), math.fsum(x * x for x in xs))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); NaN below two values."""
        if self.count < 2:
            return math.nan
        return max(0.0, (self.total_sq - self.total * self.mean) / (self.count - 1))


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate of canary - stable with its bounds; NaN/±inf while an arm has < 2."""

    estimate: float
    lower: float
    upper: float


_UNKNOWN = Interval(math.nan, -math.inf, math.inf)


def difference(canary: Moments, stable: Moments) -> tuple[float, float]:
    """D = mean(canary) - mean(stable) and its variance V (Welch)."""
    estimate = canary.mean - stable.mean
    variance = canary.variance / canary.count + stable.variance / stable.count
    return estimate, variance


def mixture_half_width(variance: float, alpha: float, mixture_sd: float) -> float:
    """Half-width of the normal-mixture confidence sequence at Var(D) = ``variance``."""
    v = max(variance, 1e-300)  # V = 0 (constant scores) has half-width 0 in the limit
    tau2 = mixture_sd * mixture_sd
    return math.sqrt(v * (v + tau2) / tau2 * math.log((v + tau2) / (v * alpha * alpha)))


def confidence_sequence(
    canary: Moments, stable: Moments, alpha: float, mixture_sd: float
) -> Interval:
    """(1 - alpha) confidence sequence of canary - stable, valid at all times at once."""
    if min(canary.count, stable.count) < 2:
        return _UNKNOWN
    estimate, variance = difference(canary, stable)
    half = mixture_half_width(variance, alpha, mixture_sd)
    return Interval(estimate, estimate - half, estimate + half)


def fixed_horizon_interval(canary: Moments, stable: Moments, alpha: float) -> Interval:
    """Two-sided (1 - alpha) z interval of canary - stable: valid at one fixed n only."""
    if min(canary.count, stable.count) < 2:
        return _UNKNOWN
    estimate, variance = difference(canary, stable)
    half = _NORMAL.inv_cdf(1 - alpha / 2) * math.sqrt(variance)
    return Interval(estimate, estimate - half, estimate + half)


def srm_p_value(canary: int, stable: int, weight: float) -> float | None:
    """Chi-square (1 df) p-value of the arms' conversation counts against ``weight``.

    None when the test does not apply: an expected count below 5 (the chi-square
    approximation's usual floor), which includes weight 1, where stable gets nothing.
    """
    n = canary + stable
    expected = n * weight
    if min(expected, n - expected) < 5:
        return None
    chi2 = (canary - expected) ** 2 / (expected * (1 - weight))
    return math.erfc(math.sqrt(chi2 / 2))
