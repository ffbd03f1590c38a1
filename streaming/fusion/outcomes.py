"""The calibration target: what a settled response's *other* evidence says about whether
the user liked it.

An implicit signal's weight is its measured predictiveness of this target
(``calibration``). Votes (thumbs, ratings, comments) are the strongest evidence, but
users give them on a few percent of answers. An edit (the user rewrote the answer) is an
outcome too, and so, if configured, is a regenerate click (the user asked for another
one): each is a negative outcome for the answer, and one more response to learn from.

Why the regenerate click is not an outcome by default: both are one-sided (there is no
"liked" counterpart), and a regenerate click is a weak one (users regenerate mediocre
answers too). In the simulated population (bench/calibration.py) making it an outcome
lowered the weights of dwell and copy and the labels they make, and in a population that
dislikes most answers so did edits: a lift needs both kinds of outcome, and more of the
common kind mostly moves the base rate.

Leave-one-out: a signal is never compared with a target that contains it. The target of
signal S is made of every signal on the response but S, so the regenerate click (when an
outcome) learns from votes and edits only, and copy never from itself.

Pure: signals and rater trust in, a target out. The weighting rules are
``FusionConfig.calibration_outcome_weights`` and ``calibration_label_saturation``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streaming.fusion.config import FusionConfig
from streaming.fusion.signals import Signal
from streaming.fusion.stats import EPS, clamp

Trust = Callable[[str | None], float]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A response's calibration target: ``value`` in [-1, 1] (positive = the user liked
    the answer) and ``weight`` in (0, 1], how much the response counts: its evidence's
    total weight, at most 1 (one response is one observation of each signal on it)."""

    value: float
    weight: float


def is_outcome(name: str, config: FusionConfig) -> bool:
    """Whether signal ``name`` is part of targets (so its own target is a different one)."""
    return config.calibration_outcome_weights.get(name, 0.0) > 0.0


def outcome(
    signals: list[Signal], config: FusionConfig, trust: Trust, leave_out: str | None = None
) -> Outcome | None:
    """The target of a settled response for calibrating signal ``leave_out`` (None: the
    target all signals that are no outcome share), from every other signal on it; None
    when none of them is evidence.

    Each signal counts with ``calibration_outcome_weights[name] * strength * trust``:
    by default thumbs and ratings fully, an edit (negative by the share of words changed)
    and a comment as in fusion, implicit signals not at all (a regenerate click, -1, as
    configured). The weighted mean saturates at ``calibration_label_saturation``
    (rater normalization rarely leaves a vote at exactly ±1).
    """
    weights = config.calibration_outcome_weights
    weight = total = 0.0
    for s in signals:
        if s.name == leave_out:
            continue
        w = weights.get(s.name, 0.0) * s.strength
        if w <= 0.0:
            continue
        w *= trust(s.rater)
        weight += w
        total += w * s.value
    if weight <= EPS:
        return None
    return Outcome(clamp(total / weight / config.calibration_label_saturation), min(1.0, weight))
