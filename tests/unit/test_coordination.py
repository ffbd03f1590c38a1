"""Coordinated raters (streaming.fusion.coordination): fresh ids in bursts, lockstep
voting and edit floods are scaled down; honest raters voting at their own times are not."""

from __future__ import annotations

import random

from streaming.fusion import FusionConfig
from streaming.fusion.coordination import Coordination

CONFIG = FusionConfig()
MINUTE = 60_000


def established(c: Coordination, rater: str) -> None:
    for _ in range(CONFIG.newcomer_chats):
        c.chat(rater)


def test_a_newcomer_counts_fully_while_newcomers_are_few() -> None:
    c = Coordination(CONFIG)
    for i in range(200):
        established(c, f"u{i}")
        c.vote(f"u{i}", i * 1000)
    c.chat("new")  # one chat: still a newcomer
    c.vote("new", 300_000)
    assert c.newcomer("new") and not c.newcomer("u1")
    assert c.factor("new") == c.factor("u1") == 1.0


def test_a_burst_of_fresh_ids_is_scaled_down_together_and_no_one_else() -> None:
    c = Coordination(CONFIG)
    for i in range(100):
        established(c, f"u{i}")
        c.vote(f"u{i}", i * 1000)
    for j in range(1000):  # a fresh id per vote, one chat each
        c.chat(f"sybil{j}")
        c.vote(f"sybil{j}", 100_000 + j * 50)
    budget = CONFIG.newcomer_share * 100
    assert c.newcomer_scale() == max(CONFIG.newcomer_floor, budget) / 1000
    assert c.factor("sybil3") == c.newcomer_scale() < 0.1
    assert c.factor("u3") == 1.0


def test_the_newcomer_window_forgets() -> None:
    c = Coordination(CONFIG)
    for j in range(1000):
        c.chat(f"sybil{j}")
        c.vote(f"sybil{j}", j)
    assert c.newcomer_scale() < 0.1
    c.vote("later", int(CONFIG.coordination_window_s * 1000) + 10_000)
    assert c.newcomer_scale() == 1.0


def test_a_ring_voting_in_the_same_second_again_and_again_is_lockstep() -> None:
    c = Coordination(CONFIG)
    ring = [f"ring{k}" for k in range(6)]
    for r in ring:
        established(c, r)
    for round_ in range(CONFIG.lockstep_repeats + 1):
        for k, r in enumerate(ring):
            c.vote(r, round_ * MINUTE + k * 10)  # all within one second
    c.vote("someone", 10 * MINUTE)  # closes the last bucket
    assert all(c.factor(r) == CONFIG.lockstep_factor for r in ring)
    assert c.flagged == len(ring)


def test_honest_raters_at_their_own_times_are_never_lockstep() -> None:
    """Many raters, each voting now and then at random: buckets of several raters happen,
    the same partners again and again do not."""
    c = Coordination(CONFIG)
    rng = random.Random(0)
    raters = [f"u{i}" for i in range(500)]
    for r in raters:
        established(c, r)
    times = sorted((rng.randrange(3600_000), r) for r in raters for _ in range(20))
    for ms, r in times:  # 10,000 votes in an hour: ~3 a second
        c.vote(r, ms)
    assert c.flagged == 0
    assert all(c.factor(r) == 1.0 for r in raters)


def test_one_raters_edit_flood_weighs_the_budget_together() -> None:
    c = Coordination(CONFIG)
    for k in range(CONFIG.edit_budget):
        c.edit("editor", k * MINUTE)
    assert c.edit_factor("editor") == 1.0
    for k in range(CONFIG.edit_budget, 4 * CONFIG.edit_budget):
        c.edit("editor", k * 1000 + 10 * MINUTE)
    assert c.edit_factor("editor") == 0.25
    assert c.edit_factor("someone else") == c.edit_factor(None) == 1.0


def test_anonymous_feedback_is_left_to_its_own_class() -> None:
    c = Coordination(CONFIG)
    for j in range(1000):
        c.vote(None, j)
    assert c.newcomer_scale() == 1.0 and c.factor(None) == 1.0


def test_one_principals_flood_weighs_as_much_as_all_the_others() -> None:
    c = Coordination(CONFIG)
    for i in range(100):
        c.vote(f"a{i}", i, principal="acme")
    assert c.principal_scale("acme") == 1.0  # the only principal: nothing to compare
    for i in range(25):
        c.vote(f"o{i}", 1000 + i, principal="other")
    assert c.principal_scale("acme") == 0.25  # 100 votes weigh as the others' 25
    assert c.principal_scale("other") == 1.0
    assert c.factor(None, principal="acme") == 0.25  # its anonymous feedback too
    assert c.factor("a1", principal="acme") == 0.25 * c.factor("a1")
    c.vote("late", int(CONFIG.coordination_window_s * 1000) + 5000, principal="acme")
    assert c.principal_scale("acme") == 1.0  # the window forgot the flood
