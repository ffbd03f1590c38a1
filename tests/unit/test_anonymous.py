"""Anonymous feedback (events without a user) as one rater class: its own rate limit,
scale and low, learned, bounded trust; the rules alone, then through the processor."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from streaming.events import FeedbackKind
from streaming.fusion import Fuser, FusionConfig, Signal
from streaming.fusion.raters import ANONYMOUS, anonymous_trust
from streaming.fusion.stats import Moments
from streaming.processor import Processor
from tests.unit.test_processor_fast import config
from tests.unit.test_voice import drops, feedback, interaction, statuses


def thumb(value: float, rater: str | None = None) -> Signal:
    return Signal("thumb", value, 1.0, rater, True)


NAMED = [f"n{k}" for k in range(4)]


def settle(fuser: Fuser, good: bool, anonymous_agrees: bool) -> None:
    """One response: four named raters thumb it as it is, the anonymous class agrees with
    them or not."""
    vote = 1.0 if good else -1.0
    raw = [thumb(vote, r) for r in NAMED]
    raw.append(thumb(vote if anonymous_agrees else -vote))
    fuser.calibrate([fuser.observe(s) for s in raw])


# ---------------------------------------------------------------- rate limit


def test_an_anonymous_flood_beyond_the_class_budget_is_dropped() -> None:
    fuser = Fuser(FusionConfig(anonymous_rate_limit_per_min=50, rater_rate_limit_per_min=5))
    accepted = [fuser.allow(None, 1_000 + k) for k in range(200)]
    assert sum(accepted) == 50 and all(accepted[:50]) and not any(accepted[50:])
    # The class has its own budget: a named rater's is untouched by the flood...
    assert all(fuser.allow("named", 2_000) for _ in range(5))
    assert not fuser.allow("named", 2_000)
    # ... and the class's window slides like a rater's.
    assert fuser.allow(None, 61_000)


def test_an_anonymous_flood_is_dropped_and_counted_by_the_processor(tmp_path: Path) -> None:
    cfg = config(tmp_path, "flood")
    fusion = FusionConfig(rater_rate_limit_per_min=10_000, anonymous_rate_limit_per_min=20)
    processor = Processor(cfg.model_copy(update={"fusion": fusion}))
    before = drops("rate_limited")
    rids = [f"r{i}" for i in range(100)]
    processor.process([interaction(rid) for rid in rids])
    flood = [feedback(f"a{i}", rid, FeedbackKind.thumb, 1) for i, rid in enumerate(rids)]
    named = feedback("named", "r0", FeedbackKind.thumb, 1, "u")
    processor.process([*flood, named])
    assert drops("rate_limited") - before == 80
    status = statuses(processor)
    assert [status[f"a{i}"][0] for i in range(100)] == ["joined"] * 20 + ["dropped"] * 80
    assert status["a99"] == ("dropped", "rate_limited")
    assert status["named"] == ("joined", None)


# ---------------------------------------------------------------- trust


def test_anonymous_thumbs_weigh_less_than_a_named_raters_at_the_start() -> None:
    fuser = Fuser(FusionConfig())
    assert fuser.rater_weight(None) == pytest.approx(0.3)
    assert fuser.rater_weight(None) < fuser.rater_weight("newcomer") == 0.75
    anonymous = fuser.fuse(None, [fuser.observe(thumb(1.0))])
    named = fuser.fuse(None, [fuser.observe(thumb(1.0, "newcomer"))])
    assert anonymous.score == named.score == 1.0
    assert anonymous.confidence < 0.5 * named.confidence
    # Against each other on one response, the named thumb wins.
    assert fuser.fuse(None, [thumb(1.0, "newcomer"), thumb(-1.0)]).score > 0.3


def test_anonymous_trust_is_a_pure_function_of_agreement_within_its_bounds() -> None:
    cfg = FusionConfig(anonymous_prior_trust=0.3, anonymous_trust_floor=0.1,
                       anonymous_trust_cap=0.6)  # fmt: skip
    assert anonymous_trust(Moments(), cfg) == pytest.approx(0.3)
    agreeing, disagreeing = Moments(), Moments()
    previous_up, previous_down = 0.3, 0.3
    for _ in range(cfg.rater_memory):
        agreeing.push(1.0, cfg.rater_memory)
        disagreeing.push(-1.0, cfg.rater_memory)
        up, down = anonymous_trust(agreeing, cfg), anonymous_trust(disagreeing, cfg)
        assert previous_up <= up <= 0.6 and 0.1 <= down <= previous_down
        previous_up, previous_down = up, down
    assert (previous_up, previous_down) == (0.6, 0.1)  # at the bounds, not past them
    neutral = Moments()
    neutral.push(-0.2, cfg.rater_memory)  # exactly the prior's agreement: no move
    assert anonymous_trust(neutral, cfg) == pytest.approx(0.3)


def test_anonymous_trust_follows_agreement_with_the_named_consensus() -> None:
    cfg = FusionConfig()
    for agrees in (True, False):
        fuser = Fuser(cfg)
        rng = random.Random(5)
        start = fuser.rater_weight(None)
        for _ in range(300):
            settle(fuser, rng.random() < 0.6, anonymous_agrees=agrees)
        trust = fuser.rater_weight(None)
        if agrees:
            assert start < trust <= cfg.anonymous_trust_cap
            assert trust > 0.5
        else:
            assert cfg.anonymous_trust_floor * cfg.extreme_rater_floor <= trust < start
            assert trust < 0.1
        # Learned state round-trips under the reserved key.
        restored = Fuser(cfg)
        restored.load_state_dict(fuser.state_dict())
        assert restored.rater_weight(None) == trust
        assert ANONYMOUS in dict(fuser.state_dict()["raters"])


def test_anonymous_implicit_signals_are_not_its_own_consensus() -> None:
    """An anonymous thumb and anonymous copy clicks on the same responses, no named
    rater: nothing to agree with, so the class's trust does not move."""
    fuser = Fuser(FusionConfig())
    for _ in range(100):
        signals = [thumb(1.0), Signal("copy", 1.0, 1.0, None, False)]
        fuser.calibrate([fuser.observe(s) for s in signals])
    stats = fuser.raters.stats[ANONYMOUS]
    assert stats.agreement.n == 0  # (its weight fell: it always gives the same thumb)
    assert stats.trust(fuser.config) == pytest.approx(0.3)


def test_anonymous_ratings_are_normalized_on_the_class_scale() -> None:
    fuser = Fuser(FusionConfig())
    for _ in range(40):
        fuser.observe(Signal("rating", 1.0, 1.0, None, True))  # the class always gives 5
    assert fuser.observe(Signal("rating", 1.0, 1.0, None, True)).value < 0.5
    assert fuser.observe(Signal("rating", 1.0, 1.0, "newcomer", True)).value == 1.0


def test_a_named_rater_is_unaffected_by_the_anonymous_class() -> None:
    """The same named history, with and without anonymous feedback (agreeing, then
    contradicting, then a flood) on other responses: the named raters end the same."""
    cfg = FusionConfig(anonymous_rate_limit_per_min=10)
    plain, mixed = Fuser(cfg), Fuser(cfg)
    rng = random.Random(9)
    for k in range(200):
        good = rng.random() < 0.6
        named = [thumb(1.0 if good else -1.0, r) for r in NAMED]
        for fuser in (plain, mixed):
            fuser.calibrate([fuser.observe(s) for s in named])
        mixed.calibrate([mixed.observe(thumb(-1.0 if k % 2 else 1.0))])
        for _ in range(20):
            mixed.allow(None, 1_000 + k)
    named_rows = {r: st for r, st in plain.state_dict()["raters"]}
    assert {r: st for r, st in mixed.state_dict()["raters"] if r != ANONYMOUS} == named_rows
    for r in NAMED:
        assert mixed.rater_weight(r) == plain.rater_weight(r)
    assert mixed.rater_weight("newcomer") == 0.75
    assert all(mixed.allow("newcomer", 2_000) for _ in range(cfg.rater_rate_limit_per_min))


def test_anonymous_trust_bounds_must_hold_the_prior() -> None:
    with pytest.raises(ValidationError, match="anonymous_trust_floor"):
        FusionConfig(anonymous_prior_trust=0.7, anonymous_trust_cap=0.6)
    with pytest.raises(ValidationError, match="anonymous_trust_floor"):
        FusionConfig(anonymous_trust_floor=0.4)
