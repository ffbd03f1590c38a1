"""The stage schedule chosen from a round's size (trainer.schedule)."""

from __future__ import annotations

import pytest

from trainer.config import TrainConfig
from trainer.schedule import plan


def test_small_round_gets_more_passes_and_smaller_batches() -> None:
    cfg = TrainConfig()
    small, medium, large = plan(12, cfg), plan(64, cfg), plan(800, cfg)
    assert small.batch == 3 and small.passes == pytest.approx(3.0)  # capped at max_epochs
    assert medium.batch == 8 and medium.steps == 24 and medium.passes == pytest.approx(3.0)
    # A large round is subsampled, not trained longer: its time stays bounded.
    assert large.steps == cfg.target_steps and large.passes == pytest.approx(24 * 8 / 800)
    for s in (small, medium, large):
        assert s.samples == s.steps * s.batch


def test_target_steps_up_to_max_epochs() -> None:
    cfg = TrainConfig(target_steps=32, max_epochs=3.0)
    s = plan(160, cfg)  # 20 steps a pass: 32 steps is 1.6 passes
    assert s.steps == 32 and s.passes == pytest.approx(1.6)
    assert plan(40, cfg).steps == 15  # 3 passes of 5 steps: the cap, not 32


def test_fixed_epochs_and_max_steps_win() -> None:
    assert plan(80, TrainConfig(epochs=1.0)).steps == 10
    assert plan(80, TrainConfig(max_steps=7)).steps == 7


def test_kto_batch_is_at_least_two() -> None:
    assert plan(1, TrainConfig(), min_batch=2).batch == 2
    with pytest.raises(ValueError):
        plan(0, TrainConfig())
