"""Training rounds on the tiny model, without Ray: publish, gate rejection, and a round
killed midway that leaves nothing visible behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livealign.models import prepare_tiny
from streaming import store as s
from streaming.events import ChatMessage, PreferencePair, now_ms
from streaming.store import PreferenceStore
from trainer.gate import GateConfig
from trainer.registry import Registry
from trainer.round import Trainer, TrainerConfig, _held_out
from trainer.train import TrainConfig

CACHE = Path.home() / ".cache" / "livealign" / "models"
QUESTIONS = [f"Is statement number {i} true?" for i in range(40)]
HELD_OUT = 0.25


def pairs(inverted: bool = False) -> list[PreferencePair]:
    """Yes over No; inverted: No over Yes, all on the training side of the split (so the
    held-out judgement still holds the preference the users established first)."""
    good, bad = ("No.", "Yes.") if inverted else ("Yes.", "No.")
    made = [
        PreferencePair(
            pair_id=f"{'inv' if inverted else 'ok'}-{i}",
            prompt=[ChatMessage(role="user", content=q)],
            chosen=good,
            rejected=bad,
            weight=1.0,
            provenance="edit",
            rejected_response_id=f"r-{i}",
            adapter="base",
        )
        for i, q in enumerate(QUESTIONS)
    ]
    return [p for p in made if not (inverted and _held_out(p.pair_id, HELD_OUT))]


def fill(store: PreferenceStore, records: list[PreferencePair]) -> None:
    exclude = {"schema_version", "event_type"}
    rows = [{**p.model_dump(mode="json", exclude=exclude), "updated_ms": now_ms()} for p in records]
    with store.transaction() as tx:
        store.upsert(tx, s.pairs, rows)


def config(tmp: Path) -> TrainerConfig:
    # A constant preference ("Yes." over "No.") that a tiny random model learns in a few
    # dozen steps at a high learning rate; the gate's fluency guard is meaningless for a
    # random model, so it is opened wide here, and so is its repetition guard (the real
    # defaults are for SmolLM2).
    return TrainerConfig(
        base_model=prepare_tiny(CACHE),
        registry_dir=tmp / "registry",
        store_url=f"sqlite:///{tmp / 'prefs.sqlite'}",
        work_dir=tmp / "work",
        min_records=8,
        held_out_fraction=0.25,
        train=TrainConfig(
            dpo_lr=5e-3,
            reward_lr=5e-3,
            epochs=4,
            batch_size=8,
            max_length=64,
            bf16=False,
            num_threads=2,
        ),
        gate=GateConfig(
            max_nll_increase=1e9,
            max_repetition_increase=1.0,
            max_length_ratio=1e9,
            min_length_ratio=0.0,
            n_prompts=4,
            max_new_tokens=4,
        ),
    )


def test_round_publishes_a_complete_verified_version(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fill(PreferenceStore(cfg.store_url), pairs())
    report = Trainer(cfg).run_round()
    assert report.outcome == "published", report
    registry = Registry(cfg.registry_dir)
    manifest = registry.verify(report.version or "")
    assert manifest.parent is None and manifest.base_model == str(cfg.base_model)
    assert manifest.data_window.n_pairs == len(QUESTIONS) and manifest.data_window.to_ms > 0
    assert {"pref_accuracy", "dpo_loss"} <= set(manifest.metrics)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(manifest.files)
    # Published as the canary, never straight to stable; the trainer waits for its verdict.
    assert (registry.state().canary, registry.state().stable) == (manifest.ref, None)
    waiting = Trainer(cfg).run_round()
    assert waiting.outcome == "skipped" and "on trial as the canary" in waiting.reasons[0]
    registry.set_state(stable=manifest.ref, action="promote", reason="its canary passed")
    # No new records since that version's window: the next round has nothing to do.
    assert Trainer(cfg).run_round().outcome == "skipped"

    # A candidate trained on inverted preferences does not beat the current one.
    fill(PreferenceStore(cfg.store_url), pairs(inverted=True))
    rejected = Trainer(cfg).run_round()
    assert rejected.outcome == "rejected", rejected
    assert any("accuracy" in r for r in rejected.reasons)
    assert (registry.state().stable, registry.state().canary) == (manifest.ref, None)
    assert [v.ref for v in registry.versions()] == [manifest.ref]


@pytest.mark.timeout(600)
def test_killed_round_leaves_no_partial_version(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fill(PreferenceStore(cfg.store_url), pairs())
    script = tmp_path / "round.py"
    script.write_text(
        "import sys\nfrom trainer.round import Trainer, TrainerConfig\n"
        "if __name__ == '__main__':\n"
        "    Trainer(TrainerConfig.model_validate_json(sys.argv[1])).run_round()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), cfg.model_dump_json()], cwd=Path(__file__).parents[2]
    )
    work = cfg.work_dir
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(work.glob("round-*/candidate*")):
        time.sleep(0.2)  # wait until the policy is being trained
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    registry = Registry(cfg.registry_dir)
    assert registry.versions() == []
    assert registry.state().stable is None
    # (Without a reward model this time: too few pairs for one is said, not an error.)
    report = Trainer(cfg.model_copy(update={"min_reward_pairs": 1000})).run_round()
    assert report.outcome == "published" and report.version == "livealign@1"
    assert any("no reward model, win rate not judged" in r for r in report.reasons)
    assert "reward" not in report.seconds and "win_rate" not in report.metrics
    assert [d.name for d in cfg.work_dir.iterdir()] == []  # the killed round's scratch too


def test_actor_in_the_stacks_ray_decides_and_reports(stack: object, tmp_path: Path) -> None:
    """The Ray actor wraps the same round: not due on too few records, and a round on them
    is skipped with the reason; stop() ends its loop."""
    import ray

    from trainer.actor import TrainerActor

    cfg = config(tmp_path).model_copy(update={"min_new_records": 64, "min_records": 8})
    fill(PreferenceStore(cfg.store_url), pairs()[:3])
    actor = TrainerActor.remote(cfg)  # type: ignore[attr-defined]
    try:
        assert ray.get(actor.due.remote(), timeout=120) is False
        loop = actor.loop.remote(0.2)
        report = ray.get(actor.run_round.remote(), timeout=120)
        assert report["outcome"] == "skipped" and "3 new records" in report["reasons"][0]
        ray.get(actor.stop.remote(), timeout=30)
        ray.get(loop, timeout=30)
    finally:
        ray.kill(actor)


def test_cut_off_answers_are_found_by_finish_reason(tmp_path: Path) -> None:
    trainer = Trainer(config(tmp_path))
    reasons = {"r-0": "length", "r-1": "stop", "r-2": None, "r-3": "length"}
    rows = [
        {
            "response_id": rid, "conversation_id": "c", "prompt_hash": "h", "user_hash": None,
            "adapter": "base", "arm": "stable", "created_ms": 1, "calibrated": False,
            "event": {"response_id": rid, "finish_reason": reason},
        }
        for rid, reason in reasons.items()
    ]  # fmt: skip
    with trainer.store.transaction() as tx:
        trainer.store.upsert(tx, s.interactions, rows)
    records = pairs()[:4]  # rejected answers r-0..r-3; an edit's chosen answer has no id
    assert trainer.cut_off(records, []) == {"r-0", "r-3"}
    assert trainer.cut_off([], []) == frozenset()
