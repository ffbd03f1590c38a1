"""One short learning run on the real stack (tiny model): bench/learning.py's loop completes
a round and reports a number. The simulated users and the simulator themselves are tested
without a stack in tests/unit/test_simulate.py."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from livealign.prompts import load_prompts, split
from livealign.simulate import SimulationConfig, Simulator
from livealign.stack import LocalStack
from livealign.users import PopulationConfig
from tests.integration.test_trainer_round import config as tiny_config
from trainer.registry import Registry
from trainer.round import Trainer


def test_short_learning_run_completes_a_round_and_reports_a_number(
    stack: LocalStack, tmp_path: Path
) -> None:
    """bench/learning.py's loop on the tiny model: simulate, catch up, train, serve, judge."""
    from bench.learning import judged, run_rounds

    population = PopulationConfig(explicit_rate=0.5, edit_rate=0.5, adversarial_share=0.0)
    config = SimulationConfig(
        url=stack.url, users=30, max_tokens=12, population=population, seed=11
    )
    _, held_out = split(load_prompts(), config.held_out_fraction)
    base = judged(stack.url, held_out[:6], population, config.max_tokens)
    # The tiny-model round of the trainer tests, on this stack's store and registry, with
    # the gate's preference checks opened too: only the plumbing is under test here.
    tiny = tiny_config(tmp_path)
    trainer = Trainer(
        tiny.model_copy(
            update={
                "registry_dir": stack.settings.registry_dir,
                "store_url": stack.settings.processor_config(stack.bootstrap).store_url,
                "min_records": 4,
                "train": tiny.train.model_copy(update={"max_steps": 2, "max_length": 96}),
                "gate": tiny.gate.model_copy(
                    update={"min_pref_accuracy": 0.0, "min_win_rate_lower": 0.0}
                ),
            }
        )
    )
    try:
        points = run_rounds(
            stack, "fused", Simulator(config), lambda: asdict(trainer.run_round()),
            held_out[:6], base, chats=24, budget=1,  # one round: any feedback spends it
        )  # fmt: skip
    finally:  # later tests expect the base model served
        Registry(stack.settings.registry_dir).set_state(stable=None, action="rollback")
    first, last = points
    assert first.version == "base" and first.win_rate == 0.5
    assert last.outcome == "published" and last.version.startswith("livealign@"), last
    assert last.feedback_consumed > 0 and last.pairs + last.labels > 0
    assert 0.0 <= last.win_rate <= 1.0  # the number; no threshold on a random model
