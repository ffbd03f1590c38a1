"""Loop pairs: a chosen answer against a copy of it caught in a loop (trainer.loops)."""

from __future__ import annotations

import random

from streaming.events import ChatMessage, PreferencePair
from trainer.config import TrainConfig
from trainer.gate_checks import repetition
from trainer.loops import MIN_COPIES, loop_id, loop_pairs, looped, units
from trainer.train import _plan_dpo

LIST = "Pack these:\n\n- A tent\n- A sleeping bag\n- A stove\n- Water"


def _pair(i: int, chosen: str = LIST, weight: float = 1.0) -> PreferencePair:
    return PreferencePair(
        pair_id=f"p{i}",
        prompt=[ChatMessage(role="user", content=f"What do I take camping? ({i})")],
        chosen=chosen,
        rejected="Take a tent, a sleeping bag, a stove and water.",
        weight=weight,
        provenance="edit",
        chosen_response_id=f"r{i}-edit",
        rejected_response_id=f"r{i}",
        adapter="base",
    )


def test_units_are_lines_then_sentences_then_words() -> None:
    text = "Paris is the capital. It is large! It has the Seine."
    assert [LIST[a:b] for a, b in units(LIST)][1:3] == ["- A tent", "- A sleeping bag"]
    assert [text[a:b] for a, b in units(text)] == [
        "Paris is the capital.",
        "It is large!",
        "It has the Seine.",
    ]
    one = "the answer to this question is one that many ask"
    assert [one[a:b] for a, b in units(one)] == [
        "the answer to this question is",
        "one that many ask",
    ]


def test_a_loop_keeps_the_answer_up_to_where_it_starts() -> None:
    for seed in range(20):
        loop = looped(LIST, random.Random(seed))
        assert loop is not None and loop != LIST
        # The answer's own text, blank line included, then one of its lines again and again.
        assert loop.startswith("Pack these:\n\n")
        assert set(loop.split("\n")) <= set(LIST.split("\n"))
        repeated = loop.rstrip().split("\n")[-1]
        assert loop.count(repeated) >= MIN_COPIES + 1
        assert repetition(loop) > repetition(LIST)


def test_a_loop_is_about_as_long_as_its_answer() -> None:
    long = "\n".join(f"- Item number {i} of the list" for i in range(10))
    for seed in range(10):
        loop = looped(long, random.Random(seed))
        assert loop is not None
        assert loop.count("\n") == long.count("\n")


def test_an_answer_of_one_unit_makes_no_loop() -> None:
    assert looped("Yes", random.Random(0)) is None
    assert looped("", random.Random(0)) is None


def test_loop_pairs_weigh_their_source_and_are_seeded() -> None:
    pairs = [_pair(0, weight=2.0), _pair(1, chosen="Yes"), _pair(2)]
    loops = loop_pairs(pairs, 0.5, seed=3)
    assert [p.pair_id for p in loops] == ["p0~loop", "p2~loop"]  # "Yes" cannot loop
    assert [p.weight for p in loops] == [1.0, 0.5]
    assert all(p.chosen == LIST and p.rejected != LIST for p in loops)
    assert loops[0].rejected_response_id == loop_id("r0")
    assert loop_pairs(pairs, 0.5, seed=3) == loops
    assert loop_pairs(pairs, 0.0, seed=3) == []


def test_the_dpo_stage_trains_loops_as_cut_off_in_the_users_steps() -> None:
    pairs = [_pair(i) for i in range(40)]
    plain = _plan_dpo(pairs, TrainConfig(loop_weight=0), random.Random(0), frozenset())
    with_loops = _plan_dpo(pairs, TrainConfig(loop_weight=1.0), random.Random(0), frozenset())
    assert with_loops.steps == plain.steps  # loop pairs take a share, not more steps
    loops = [r for r in with_loops.rows if r["record"] >= len(pairs)]
    assert loops, "equal weights: about half the rows are loop pairs"
    assert all(not r["rejected_complete"] and r["chosen_complete"] for r in loops)
    assert all(r["rejected_complete"] for r in plain.rows)
