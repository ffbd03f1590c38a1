"""bench/poisoning.py's world, small: attacks go through the processor's own pipeline, and
the coordination rules are what keeps Sybils, lockstep rings and edit spam from writing
the training data (without them the same attacks move it several times as far)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import poisoning as p

USERS, SHARE, CHATS = 40, 0.2, 20  # below ~40 users, newcomer_floor alone lets Sybils in


def shift(attack: p.Attack, tmp_path: Path, fusion: p.FusionConfig | None = None) -> float:
    """How far the attack moves the lean its kind of record shows (labels for votes,
    pairs for edits), against the attack-free run of the same honest users."""
    key = "pair_lean" if attack == "edit_spam" else "label_lean"
    leans = []
    for run_attack in ("none", attack):
        world = p.build(run_attack, USERS, SHARE, CHATS, seed=0)
        workdir = tmp_path / run_attack
        workdir.mkdir(parents=True)
        leans.append(p.lean(p.run(world, workdir, fusion))[key])
    return leans[1] - leans[0]


def test_the_honest_users_are_the_same_with_or_without_an_attack() -> None:
    quiet, attacked = (p.build(a, USERS, SHARE, CHATS, seed=0) for a in ("none", "sybil"))
    honest = {r for _, r in attacked.events if b"attacker" not in r.value}
    assert honest == {r for _, r in quiet.events}
    assert attacked.n_chats > quiet.n_chats


@pytest.mark.parametrize("attack", ["sybil", "lockstep", "edit_spam"])
def test_coordination_holds_an_attack_back(attack: p.Attack, tmp_path: Path) -> None:
    defended = shift(attack, tmp_path / "defended")
    undefended = shift(attack, tmp_path / "undefended", p.UNCOORDINATED)
    assert undefended > 0.15
    assert defended < undefended / 3
