"""The reward model's scale, calibrated on held-out user pairs.

A reward model trained with the Bradley-Terry loss claims P(a better than b) =
sigmoid(r(a) - r(b)), but one trained for a few dozen steps on a hundred pairs need not
mean its scale: on learning-bench data a `bold` reward model (held-out accuracy 0.92)
fitted a factor of 1.47 and a `summary` one (0.94) a factor of 9.53, so a margin in raw
units ("1.0 log-odds, 73%") meant a different probability for each. Temperature
scaling (one factor ``a``: P = sigmoid(a * (r(a) - r(b))), fitted by maximum likelihood
on the held-out pairs) makes the differences mean what they claim, so the teacher's
margin and the gate's tie margin are probabilities again. Scaling keeps the ranking.

A perfectly ranked held-out set has no finite maximum (the larger ``a``, the likelier),
so two pseudo-pairs at the median difference, one ranked right and one wrong, are added:
a prior of one wrong call in two, which a few held-out pairs cannot outvote by much.

Pure arithmetic: the trainer fits it, tests call it directly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Bounds on the factor, so that no held-out set can make a reward model claim certainty
# (x50 turns a difference of 0.1 into 5 log-odds, 99.3%) or silence it entirely.
MIN_SCALE = 0.1
MAX_SCALE = 50.0
# Fewer held-out pairs than this: the raw scale is kept (1.0); a factor fitted on two
# or three differences is noise.
MIN_PAIRS = 4


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit_scale(differences: Sequence[float]) -> float:
    """The factor ``a`` that makes sigmoid(a * d) the best-calibrated probability that the
    chosen answer is better, for held-out differences d = r(chosen) - r(rejected)."""
    diffs = [d for d in differences if math.isfinite(d)]
    if len(diffs) < MIN_PAIRS:
        return 1.0
    median = statistics.median(abs(d) for d in diffs)
    if median == 0:
        return 1.0
    diffs += [median, -median]  # the prior: one right, one wrong

    def slope(a: float) -> float:
        # d/da of sum(log sigmoid(a * d)): decreasing in a (the likelihood is concave).
        return sum(d * _sigmoid(-a * d) for d in diffs)

    if slope(MIN_SCALE) <= 0:  # ranked no better than chance: as little weight as allowed
        return MIN_SCALE
    if slope(MAX_SCALE) >= 0:
        return MAX_SCALE
    low, high = MIN_SCALE, MAX_SCALE
    for _ in range(60):  # bisection to ~1e-16 of the range
        mid = (low + high) / 2
        low, high = (mid, high) if slope(mid) > 0 else (low, mid)
    return (low + high) / 2
