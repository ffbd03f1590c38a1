"""Training round and offline gate on the tiny random Llama (SmolLM2's tokenizer and template).

The whole file must stay well under two minutes on two busy cores, so every run is a few
optimizer steps at batch 4 with short prompts (a system message replaces SmolLM2's long
default one) in fp32 (bf16 autocast is emulated, and slow, on a CPU without AVX512-BF16).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from livealign.models import prepare_tiny
from streaming.events import ChatMessage, PreferenceLabel, PreferencePair
from trainer.gate import GateConfig, evaluate, preference_accuracy
from trainer.train import (
    REWARD_SCALE_FILE,
    RewardModel,
    TrainConfig,
    _common_args,
    _kto_rows,
    _load_policy,
    _lora,
    _prepared,
    cpu_threads,
    end_of_turn,
    load_tokenizer,
    prompt_ids,
    threads,
    train_policy,
    train_reward_model,
    weighted_resample,
)

TOPICS = ["the sky blue", "water wet", "fire cold", "snow white", "grass green", "ice hot"]

# A tiny random model learns a constant "Yes." over "No." preference fast: in tuning, one
# step at lr 5e-3 already gave held-out preference accuracy 1.0 (and 0.0 for the inverted
# pairs), as did two. Two steps keep a margin while the file stays fast on busy cores.
LEARN_STEPS = 2
LEARN_LR = 5e-3


def prompt(i: int) -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content="Answer briefly."),
        ChatMessage(role="user", content=f"Is {TOPICS[i % len(TOPICS)]}? ({i})"),
    ]


def pair(
    i: int, chosen: str = "Yes.", rejected: str = "No.", weight: float = 1.0
) -> PreferencePair:
    return PreferencePair(
        pair_id=f"pair-{i}-{chosen}",
        prompt=prompt(i),
        chosen=chosen,
        rejected=rejected,
        weight=weight,
        provenance="edit",
        rejected_response_id=f"resp-{i}",
        adapter="base",
    )


def label(i: int, desirable: bool) -> PreferenceLabel:
    return PreferenceLabel(
        response_id=f"resp-{i}",
        prompt=prompt(i),
        completion="Yes." if desirable else "No.",
        desirable=desirable,
        weight=1.0,
        score=0.8 if desirable else -0.8,
        confidence=0.9,
        scenario="open",
        adapter="base",
        n_signals=1,
    )


def config(**overrides: Any) -> TrainConfig:
    base = {"batch_size": 4, "max_length": 64, "bf16": False, "num_threads": 2, "seed": 0}
    return TrainConfig(**(base | overrides))


YES_PAIRS = [pair(i) for i in range(16)]
NO_PAIRS = [pair(i, chosen="No.", rejected="Yes.") for i in range(16)]
HELD_OUT = [pair(i) for i in range(100, 112)]


@pytest.fixture(scope="module")
def base() -> Path:
    torch.set_num_threads(2)
    return prepare_tiny(Path.home() / ".cache" / "livealign" / "models")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def yes_adapter(base: Path, workdir: Path) -> Path:
    cfg = config(max_steps=LEARN_STEPS, dpo_lr=LEARN_LR)
    return train_policy(base, None, YES_PAIRS, [], workdir / "yes", cfg).adapter_dir


@pytest.fixture(scope="module")
def no_adapter(base: Path, workdir: Path) -> Path:
    cfg = config(max_steps=LEARN_STEPS, dpo_lr=LEARN_LR)
    return train_policy(base, None, NO_PAIRS, [], workdir / "no", cfg).adapter_dir


@pytest.fixture(scope="module")
def reward_dir(base: Path, workdir: Path) -> tuple[Path, float | None]:
    # The score head starts random; at lr 5e-3 the loss is ~0.05 by step 5 on these pairs.
    cfg = config(max_steps=6, reward_lr=5e-3)
    result = train_reward_model(base, YES_PAIRS, workdir / "rm", cfg, held_out=HELD_OUT)
    assert result.n_train == len(YES_PAIRS) and result.n_eval == len(HELD_OUT)
    assert result.steps == 6
    return result.model_dir, result.held_out_accuracy


def test_a_round_uses_every_core_not_rays_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray starts the trainer actor with OMP_NUM_THREADS=1 (its reserved CPU), so torch's
    # own default is one thread; None means the cores the process may run on.
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert cpu_threads(None) == 3 and cpu_threads(1) == 1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threads(None):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1  # put back
    finally:
        torch.set_num_threads(before)


def test_weighted_resample_follows_weights() -> None:
    picks = weighted_resample([2.0, 1.0, 0.0, 1.0], 400, random.Random(0))
    assert Counter(picks) == {0: 200, 1: 100, 3: 100}
    assert picks != sorted(picks)  # shuffled: no long runs of one record


def test_adapter_folder_and_parent_start(base: Path, workdir: Path, yes_adapter: Path) -> None:
    files = {p.name for p in yes_adapter.iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors"}
    cfg_json = json.loads((yes_adapter / "adapter_config.json").read_text())
    assert cfg_json["base_model_name_or_path"] == str(base)

    # lr 0 from a parent: the saved LoRA must be exactly the parent's, which shows the parent
    # was loaded (a fresh LoRA has B = 0 and random A) and that only "default" was saved.
    seen: list[dict[str, Any]] = []
    out = workdir / "child"
    result = train_policy(
        base, yes_adapter, YES_PAIRS[:4], [], out, config(max_steps=1, dpo_lr=0.0), seen.append
    )
    assert result.steps == 1 and result.n_pairs == 4 and result.dpo_loss is not None
    parent = load_file(yes_adapter / "adapter_model.safetensors")
    child = load_file(out / "adapter_model.safetensors")
    assert parent.keys() == child.keys()
    assert any(".lora_B." in k and parent[k].abs().sum() > 0 for k in parent)
    for key, tensor in parent.items():
        assert torch.equal(tensor, child[key]), key
    assert [(s["stage"], s["step"], s["total_steps"]) for s in seen] == [("dpo", 1, 1)]
    assert {"loss", "eta_s"} <= seen[0].keys()


def test_dpo_learns_preference(base: Path, yes_adapter: Path, no_adapter: Path) -> None:
    good = preference_accuracy(base, yes_adapter, None, HELD_OUT)
    bad = preference_accuracy(base, no_adapter, None, HELD_OUT)
    assert good > 0.5
    assert good >= bad + 0.5


class FirstIsBetter:
    """A maximally position-biased pairwise judge."""

    def compare(
        self,
        prompts: Sequence[Sequence[ChatMessage]],
        firsts: Sequence[str],
        seconds: Sequence[str],
    ) -> list[float]:
        return [0.9] * len(firsts)


def test_gate_rejects_inverted_candidate(
    base: Path, yes_adapter: Path, no_adapter: Path, reward_dir: tuple[Path, float | None]
) -> None:
    gate = GateConfig(max_new_tokens=8, n_prompts=4)
    prompts = [p.prompt for p in HELD_OUT]
    rm = RewardModel.load(base, reward_dir[0])
    bad = evaluate(base, no_adapter, None, HELD_OUT, prompts, rm, gate)
    assert not bad.passed
    assert any(r.startswith("preference accuracy") for r in bad.reasons), bad.reasons
    assert bad.metrics["pref_accuracy"] < gate.min_pref_accuracy
    for key in ("win_rate", "win_rate_low", "nll_candidate", "repetition_base", "length_ratio"):
        assert key in bad.metrics
    assert 0.0 <= bad.metrics["win_rate_low"] <= bad.metrics["win_rate_high"] <= 1.0
    # The reward-model judge is order-consistent: every prompt is a win, a loss or a tie.
    assert bad.metrics["n_inconsistent"] == 0
    assert bad.metrics["n_consistent"] + bad.metrics["n_ties"] == 4
    names = ["pref_accuracy", "win_rate", "fluency", "repetition", "length"]
    assert [c.name for c in bad.checks] == names
    assert bad.reasons == [c.reason for c in bad.checks if c.decision == "failed"]

    # The good candidate, judged against the inverted one as the current adapter, clears the
    # preference check. Without prompts the answer checks are skipped, and said so.
    good = evaluate(base, yes_adapter, no_adapter, HELD_OUT, [], None, gate)
    assert good.passed, good.reasons
    assert good.metrics["pref_accuracy"] >= gate.min_pref_accuracy
    assert [s.split(":")[0] for s in good.skipped] == [
        "win rate",
        "fluency",
        "repetition",
        "length",
    ]
    # With a current adapter, fluency and repetition are measured against the base model's
    # own answers. A pairwise judge plugs in and is asked in both orders: one that always
    # prefers the first answer contradicts itself on every prompt and decides nothing.
    anchored = evaluate(
        base, yes_adapter, no_adapter, [], prompts[:2], None, gate, judge=FirstIsBetter()
    )
    m = anchored.metrics
    assert m["nll_increase"] == pytest.approx(m["nll_candidate"] - m["nll_base"])
    assert m["repetition_increase"] == pytest.approx(
        m["repetition_candidate"] - m["repetition_base"]
    )
    assert (m["n_inconsistent"], m["n_consistent"]) == (2, 0)
    assert not anchored.passed and anchored.reasons[0].startswith("win rate")
    # Two held-out pairs are too few to judge on: the inverted candidate's accuracy is
    # recorded, the check is skipped and said so, and the other checks decide.
    few = evaluate(base, no_adapter, None, HELD_OUT[:2], [], None, gate)
    assert few.metrics["pref_accuracy"] < gate.min_pref_accuracy
    assert not any(r.startswith("preference accuracy") for r in few.reasons), few.reasons
    assert "preference accuracy: 2 held-out pairs < 8, not judged" in few.skipped


def test_reward_model_prefers_chosen(base: Path, reward_dir: tuple[Path, float | None]) -> None:
    model_dir, held_out_accuracy = reward_dir
    assert held_out_accuracy is not None and held_out_accuracy > 0.5
    saved = load_file(model_dir / "adapter_model.safetensors")
    assert any("score" in k for k in saved), "the score head must be saved with the adapter"
    rm = RewardModel.load(base, model_dir)
    prompts = [p.prompt for p in HELD_OUT[:4]]
    yes = rm.score(prompts, ["Yes."] * 4)
    no = rm.score(prompts, ["No."] * 4)
    assert all(y > n for y, n in zip(yes, no, strict=True)), (yes, no)
    # The scale calibrated on the held-out pairs is saved and applied when loaded.
    scale = json.loads((model_dir / REWARD_SCALE_FILE).read_text())["scale"]
    assert rm.scale == scale and scale != 1.0
    raw = RewardModel(rm.model, rm.tokenizer).score(prompts, ["Yes."] * 4)
    assert yes == pytest.approx([scale * x for x in raw])


def test_kto_only_learns_from_labels(base: Path, workdir: Path) -> None:
    # "Yes." desirable, "No." undesirable, imbalanced 2:1 on purpose (class weights kick in).
    labels = [label(i, desirable=i % 3 != 0) for i in range(12)]
    # KTO picks this up within a few steps at lr 5e-3 too; its first step only moves LoRA B
    # off zero (and its KL estimate is clamped at 0), so it gets one step more than DPO.
    cfg = config(max_steps=3, kto_lr=LEARN_LR)
    result = train_policy(base, None, [], labels, workdir / "kto", cfg)
    assert result.steps == 3 and result.n_labels == 12 and result.n_pairs == 0
    assert result.dpo_loss is None and result.kto_loss is not None
    assert preference_accuracy(base, result.adapter_dir, None, HELD_OUT) > 0.5


def test_dpo_then_kto(base: Path, workdir: Path) -> None:
    labels = [label(i, desirable=i % 2 == 0) for i in range(8)]
    seen: list[dict[str, Any]] = []
    result = train_policy(
        base, None, YES_PAIRS[:8], labels, workdir / "both", config(max_steps=1), seen.append
    )
    assert result.steps == 2
    assert result.dpo_loss is not None and result.kto_loss is not None
    assert [(s["stage"], s["step"], s["total_steps"]) for s in seen] == [
        ("dpo", 1, 2),
        ("kto", 2, 2),
    ]
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors"}


def test_no_data_is_an_error(base: Path, workdir: Path) -> None:
    with pytest.raises(ValueError, match="nothing to train"):
        train_policy(base, None, [], [], workdir / "empty", config())
    with pytest.raises(ValueError, match="nothing to train"):
        train_policy(base, None, [pair(0, weight=0.0)], [], workdir / "empty", config())


def test_cut_off_answers_train_without_end_of_turn(base: Path, workdir: Path) -> None:
    """An answer cut off by max_tokens is trained open: the model never learns to stop
    where a length limit stopped it. A finished answer keeps its end of turn."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    tokenizer = load_tokenizer(base)
    tail = end_of_turn(tokenizer)
    assert tokenizer.convert_ids_to_tokens(tail)[0] == "<|im_end|>"
    rows = _kto_rows([label(0, True), label(0, True)], [0, 1], cut=frozenset())
    rows[1]["complete"] = False  # the same answer, once cut off
    model = _load_policy(base, None)
    trainer = _prepared(KTOTrainer, {"completion_ids": "complete"}, config())(
        model=model,
        args=KTOConfig(**_common_args(config(), str(workdir / "cut"), 1e-4, 2)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=_lora(config(), "CAUSAL_LM", model),
    )
    finished, cut = trainer.train_dataset["completion_ids"]
    assert finished[-len(tail) :] == tail
    assert cut == finished[: -len(tail)]


def test_precomputed_reference_gives_the_same_losses(base: Path, workdir: Path) -> None:
    """Reference log-probs computed once per distinct record (rows repeat: weights, passes)
    train exactly as TRL's per-step reference forward does."""
    pairs = [pair(i, weight=2.0 if i % 2 else 1.0) for i in range(4)]
    losses = [
        train_policy(
            base, None, pairs, [], workdir / f"ref-{on}",
            config(max_steps=2, dpo_lr=1e-3, precompute_ref=on),
        ).dpo_loss
        for on in (True, False)
    ]  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    kto = [
        train_policy(
            base, None, [], [label(i, i % 2 == 0) for i in range(4)], workdir / f"kref-{on}",
            config(max_steps=2, kto_lr=1e-3, precompute_ref=on),
        ).kto_loss
        for on in (True, False)
    ]  # fmt: skip
    assert kto[0] == pytest.approx(kto[1], rel=1e-4)


def test_long_prompt_keeps_its_end(base: Path, workdir: Path) -> None:
    """A prompt longer than max_prompt_length is cut from the left, not dropped, and the
    answer is trained whole."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(base)
    long = [ChatMessage(role="user", content="word " * 200 + "Is the sky blue?")]
    rows = [
        {
            "prompt": [{"role": "user", "content": long[0].content}],
            "chosen": [{"role": "assistant", "content": "Yes."}],
            "rejected": [{"role": "assistant", "content": "No."}],
            "record": 0, "chosen_complete": True, "rejected_complete": True,
        }
    ] * 2  # fmt: skip
    cfg = config(max_length=64, max_prompt_length=32)
    ends = {"chosen_ids": "chosen_complete", "rejected_ids": "rejected_complete"}
    model = _load_policy(base, None)
    trainer = _prepared(DPOTrainer, ends, cfg)(
        model=model,
        args=DPOConfig(**_common_args(cfg, str(workdir / "long"), 1e-4, 2)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=_lora(cfg, "CAUSAL_LM", model),
    )
    head = trainer.train_dataset["prompt_ids"][0]
    assert len(head) == 32
    assert head == prompt_ids(tokenizer, long)[-32:]
    assert tokenizer.decode(trainer.train_dataset["chosen_ids"][0]).startswith("Yes.")
