"""The reward model's temperature, fitted on held-out differences (trainer.reward_scale)."""

from __future__ import annotations

import math
import random

import pytest

from trainer.reward_scale import MAX_SCALE, MIN_SCALE, fit_scale


def _log_likelihood(a: float, diffs: list[float]) -> float:
    return sum(-math.log1p(math.exp(-a * d)) for d in diffs)


def test_recovers_the_true_scale_of_a_well_sampled_model() -> None:
    # Raw differences d, outcomes drawn with P(right) = sigmoid(4 d): a model that ranks
    # right but is four times too shy. The fitted factor is near 4.
    rng = random.Random(0)
    diffs = []
    for _ in range(4000):
        d = rng.uniform(0, 0.8)
        right = rng.random() < 1 / (1 + math.exp(-4 * d))
        diffs.append(d if right else -d)
    assert fit_scale(diffs) == pytest.approx(4.0, rel=0.15)


def test_is_the_likelihood_maximum_with_the_prior() -> None:
    diffs = [0.3, 0.1, -0.05, 0.2, 0.15, -0.1, 0.25]
    a = fit_scale(diffs)
    median = sorted(abs(d) for d in diffs)[len(diffs) // 2]
    with_prior = [*diffs, median, -median]
    best = _log_likelihood(a, with_prior)
    assert best >= _log_likelihood(a * 1.05, with_prior)
    assert best >= _log_likelihood(a / 1.05, with_prior)


def test_a_perfect_ranking_gets_a_finite_scale() -> None:
    # Without the prior the likelihood of an all-right set grows forever with the scale.
    a = fit_scale([0.1, 0.12, 0.09, 0.11, 0.1])
    assert 1.0 < a < MAX_SCALE


def test_shy_model_that_ranks_well_is_scaled_up() -> None:
    # The learning bench's case: most pairs ranked right, differences near 0.1.
    diffs = [0.1] * 22 + [-0.1] * 4
    a = fit_scale(diffs)
    # Calibrated: sigmoid(a * 0.1) is close to the share ranked right (22 + 1 of 28).
    assert 1 / (1 + math.exp(-a * 0.1)) == pytest.approx(23 / 28, abs=0.01)


def test_chance_ranking_gets_the_least_weight() -> None:
    assert fit_scale([0.2, -0.3, 0.1, -0.4, -0.2]) == MIN_SCALE


@pytest.mark.parametrize("diffs", [[], [0.5, 0.4], [0.0] * 10, [math.nan, 0.1, 0.2]])
def test_too_little_evidence_keeps_the_raw_scale(diffs: list[float]) -> None:
    assert fit_scale(diffs) == 1.0
