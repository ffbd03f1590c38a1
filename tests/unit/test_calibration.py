"""Calibration targets (``streaming.fusion.outcomes``) and what calibration learns from
simulated users: the target of a response from every other piece of its evidence, never
from the signal being calibrated; weights that track each signal's predictiveness; and a
lopsided population (most answers disliked) no longer burying dwell's lift."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from bench.calibration import POPULATIONS, simulate, targets
from streaming.fusion import Fuser, FusionConfig, Signal
from streaming.fusion.outcomes import Outcome, is_outcome, outcome

DEFAULTS = FusionConfig().calibration_outcome_weights


def config(**weights: float) -> FusionConfig:
    return FusionConfig(calibration_outcome_weights={**DEFAULTS, **weights})


def sig(name: str, value: float, strength: float = 1.0, rater: str | None = "u") -> Signal:
    explicit = name in ("thumb", "rating", "edit", "comment")
    return Signal(name, value, strength, rater, explicit)


def trusting(weight: float = 1.0) -> Callable[[str | None], float]:
    return lambda rater: weight


# ---------------------------------------------------------------- the target


def test_votes_and_edits_are_outcomes_implicit_signals_are_not_by_default() -> None:
    cfg = FusionConfig()
    assert outcome([sig("thumb", 1.0)], cfg, trusting()) == Outcome(1.0, 1.0)
    # A normalized rating of 0.25 is half way to a full like (saturation 0.5).
    assert outcome([sig("rating", 0.25)], cfg, trusting()) == Outcome(0.5, 1.0)
    edited = outcome([sig("edit", -0.6, strength=0.5)], cfg, trusting())
    assert edited is not None
    assert edited.value == -1.0 and edited.weight == pytest.approx(0.8 * 0.5)
    # Nothing but implicit signals: no target (the regenerate click is off by default).
    implicit = [sig("copy", 1.0), sig("dwell", 0.4), sig("regenerate", -1.0)]
    assert outcome(implicit, cfg, trusting()) is None
    assert not is_outcome("regenerate", cfg) and is_outcome("edit", cfg)


def test_regenerate_counts_when_configured_and_evidence_is_weighted() -> None:
    cfg = config(regenerate=0.5)
    assert outcome([sig("regenerate", -1.0)], cfg, trusting()) == Outcome(-1.0, 0.5)
    # A liked answer regenerated anyway: the thumb (1) outweighs the click (0.5).
    mixed = outcome([sig("thumb", 1.0), sig("regenerate", -1.0)], cfg, trusting())
    assert mixed is not None
    assert mixed.value == pytest.approx((1.0 - 0.5) / 1.5 / 0.5) and mixed.weight == 1.0
    # A rater trusted with little counts little, and one response is at most one.
    assert outcome([sig("thumb", -1.0)], cfg, trusting(0.2)) == Outcome(-1.0, 0.2)
    assert outcome([sig("thumb", 1.0), sig("rating", 1.0)], cfg, trusting()) == Outcome(1.0, 1.0)
    # Evidence from raters trusted with nothing, or of no strength: no target.
    assert outcome([sig("thumb", 1.0)], cfg, trusting(0.0)) is None
    assert outcome([sig("edit", 0.0, strength=0.0)], cfg, trusting()) is None


def test_a_signal_is_never_part_of_its_own_target() -> None:
    """Leave-one-out, for any mix of evidence: the target of S is the target of the same
    response without S, whatever S's outcome weight."""
    cfg = config(regenerate=1.0, copy=0.7, dwell=0.3)
    rng = random.Random(5)
    names = ["thumb", "rating", "edit", "regenerate", "copy", "dwell", "link"]
    for _ in range(300):
        signals = [
            sig(rng.choice(names), rng.uniform(-1, 1), rng.random(), rng.choice(["a", None]))
            for _ in range(rng.randrange(0, 5))
        ]
        trust = trusting(rng.uniform(0.2, 1.0))
        for left_out in ("regenerate", "copy", "dwell", "link"):
            without = [s for s in signals if s.name != left_out]
            assert outcome(signals, cfg, trust, leave_out=left_out) == outcome(without, cfg, trust)
    # A response whose only evidence is a regenerate click teaches dwell, never the
    # regenerate click itself.
    fuser = Fuser(config(regenerate=1.0))
    fuser.calibrate([sig("regenerate", -1.0), sig("dwell", -0.5)])
    learned = fuser.state_dict()["calibration"]
    assert "dwell" in learned and "regenerate" not in learned


def test_outcome_weights_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown signals"):
        config(regenrate=0.5)
    with pytest.raises(ValidationError, match="lacks"):
        FusionConfig(calibration_outcome_weights={"thumb": 1.0})
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        config(regenerate=1.5)
    with pytest.raises(ValidationError):
        FusionConfig(calibration_outcome_weight=DEFAULTS)  # type: ignore[call-arg]


def test_state_saved_before_per_signal_targets_is_read() -> None:
    """The state an older processor saved (five statistics per signal, one label base
    rate) loads, keeps learning, and saves in the new layout."""
    old = {
        "version": 1,
        "raters": [],
        "calibration": {"dwell": [120, -0.1, 0.4, 0.2, 0.09], "copy": [30, 1.0, 1.0, 0.4, 1.0]},
        "label": [150, -0.2, 0.9],
    }
    fuser = Fuser(FusionConfig())
    fuser.load_state_dict(json.loads(json.dumps(old)))
    assert fuser.calibrator.base["dwell"].mean == -0.2
    assert 0.0 < fuser.calibrator.weights["dwell"] <= 1.0
    assert 0.0 < fuser.calibrator.weights["copy"] <= 1.0
    fuser.calibrate([sig("thumb", 1.0), sig("dwell", 0.6), sig("copy", 1.0)])
    state = fuser.state_dict()
    assert "label" not in state and len(state["calibration"]["dwell"]) == 8
    again = Fuser(FusionConfig())
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.state_dict() == state and again.weights() == fuser.weights()


# ---------------------------------------------------------------- simulated users


@pytest.mark.parametrize("kind", ["votes", "explicit", "every"])
def test_weights_track_predictiveness_with_realistic_users(kind: str) -> None:
    """livealign.users at realistic rates (bench/calibration.py): dwell (correlation with
    the hidden utility ~0.85) ends far above share (pure noise, ~0), copy (~0.3) above
    share too, whatever the target."""
    run = simulate(targets(kind), 1000, seed=3)
    truth, weights = run.predictiveness(), run.final()
    assert truth["dwell"] > 0.7 and abs(truth["share"]) < 0.1
    assert weights["dwell"] > weights["share"] + 0.4
    assert weights["copy"] > weights["share"]
    assert weights["share"] < 0.25


def test_a_lopsided_population_keeps_dwell() -> None:
    """Most answers disliked: dwell is short on nearly all of them, and the votes nearly
    all negative. Dwell still tells the few liked answers apart (correlation ~0.6), and
    keeps a clear weight (it fell to ~0.1 when the standard error was taken of x y rather
    than x (y - ybar))."""
    for seed in (0, 1):
        run = simulate(targets("explicit"), 1000, seed, words=POPULATIONS["mostly disliked"])
        weights = run.final()
        assert sum(run.utility) / len(run.utility) < 0.2
        assert weights["dwell"] > 0.35
        assert weights["dwell"] > weights["share"] + 0.25


def _in_test_stream(n: int, seed: int, fuser: Fuser) -> None:
    """Half the answers liked; dwell informative (±0.4, spread 0.3), share pure noise;
    a thumb on 3% of answers; the disliked ones regenerated 60% of the time (never a liked
    one) and edited 30% of the time."""
    rng = random.Random(seed)
    for _ in range(n):
        liked = rng.random() < 0.5
        user = f"u{rng.randrange(100)}"
        signals = [sig("dwell", max(-1.0, min(1.0, rng.gauss(0.4 if liked else -0.4, 0.3))))]
        if rng.random() < 0.4:
            signals.append(sig("share", 1.0, rater=user))
        if rng.random() < 0.03:
            signals.append(sig("thumb", 1.0 if liked else -1.0, rater=user))
        if not liked and rng.random() < 0.6:
            signals.append(sig("regenerate", -1.0, rater=user))
        if not liked and rng.random() < 0.3:
            signals.append(sig("edit", -1.0, rater=user))
        fuser.calibrate([fuser.observe(s) for s in signals])


def test_more_outcomes_teach_more_responses() -> None:
    """With few votes, edits and regenerate clicks are what most responses have: as
    outcomes they let the noise signal's weight fall from its prior far sooner. (They do
    not raise dwell's: outcomes that are only ever negative say little about a signal
    that must also point up; see bench/calibration.py.)"""
    for seed in range(3):
        votes = Fuser(config(edit=0.0, regenerate=0.0))
        every = Fuser(config(regenerate=1.0))
        _in_test_stream(300, seed, votes)
        _in_test_stream(300, seed, every)
        n_votes = votes.state_dict()["calibration"]["share"][0]
        n_every = every.state_dict()["calibration"]["share"][0]
        assert n_every > 5 * n_votes
        assert every.calibrator.weights["share"] < votes.calibrator.weights["share"] - 0.1
        assert every.calibrator.weights["dwell"] > every.calibrator.weights["share"]
