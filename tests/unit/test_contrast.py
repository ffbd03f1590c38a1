"""The DPO contrast masks: an edit's own span counts, the text both answers share does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from livealign.models import prepare_tiny
from streaming.events import ChatMessage, PreferencePair
from trainer.contrast import ContrastCollator, contrast_masks
from trainer.train import TrainConfig, train_policy


def test_an_inserted_opening_counts_with_the_token_it_replaced() -> None:
    rejected = [10, 11, 12, 13, 14, 15, 2]
    chosen = [7, 8, 10, 11, 12, 13, 14, 15, 2]  # "In short:" + the same answer
    c, r = contrast_masks(chosen, rejected)
    assert c == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    # The rejected answer's first token is where the two parted: the alternative.
    assert r == [1, 0, 0, 0, 0, 0, 0]


def test_a_replaced_span_counts_on_both_sides() -> None:
    rejected = [1, 2, 3, 4, 50, 6, 7, 8, 9]
    chosen = [1, 2, 3, 4, 60, 61, 6, 7, 8, 9]
    c, r = contrast_masks(chosen, rejected)
    assert c == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert r == [0, 0, 0, 0, 1, 0, 0, 0, 0]


def test_chance_matches_between_unrelated_answers_stay_in() -> None:
    rejected = [1, 2, 30, 31, 32, 33, 34]
    chosen = [1, 2, 40, 41, 42, 43]  # two shared tokens: below min_shared
    assert contrast_masks(chosen, rejected, min_shared=4) == ([1] * 6, [1] * 7)


def test_identical_answers_keep_every_token() -> None:
    assert contrast_masks([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == ([1] * 5, [1] * 5)


def test_collator_narrows_the_completion_mask() -> None:
    ex = {
        "prompt_ids": [5, 6],
        "chosen_ids": [7, 10, 11, 12, 13],
        "rejected_ids": [10, 11, 12, 13],
    }
    ex["chosen_contrast"], ex["rejected_contrast"] = contrast_masks(
        ex["chosen_ids"], ex["rejected_ids"]
    )
    out = ContrastCollator(pad_token_id=0)([ex])
    mask = out["completion_mask"].tolist()
    assert mask[0] == [0, 0, 1, 0, 0, 0, 0]  # chosen: only the inserted token
    assert mask[1] == [0, 0, 1, 0, 0, 0, 0]  # rejected: the token it had there
    assert out["attention_mask"].tolist()[0] == [1] * 7  # the model still sees everything


@pytest.fixture(scope="module")
def base() -> Path:
    torch.set_num_threads(2)
    return prepare_tiny(Path.home() / ".cache" / "livealign" / "models")


def test_the_dpo_stage_trains_on_the_contrast(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `dpo_contrast`, the batches the DPO trainer draws (and its precomputed
    reference) count only the edit's tokens; without it, every answer token."""
    import trainer.train as train

    pairs = [
        PreferencePair(
            pair_id=f"p{i}",
            prompt=[ChatMessage(role="user", content=f"Tell me about topic {i}.")],
            chosen=f"In short: topic {i} is a fine topic to read about. It has many parts.",
            rejected=f"Topic {i} is a fine topic to read about. It has many parts.",
            weight=1.0,
            provenance="edit",
            rejected_response_id=f"r{i}",
            adapter="base",
        )
        for i in range(4)
    ]
    seen: dict[bool, tuple[int, int]] = {}

    def inspect(trainer: object) -> float:
        batch = next(iter(trainer.get_train_dataloader()))  # type: ignore[attr-defined]
        counted = int(batch["completion_mask"].sum())
        ref = trainer.train_dataset["ref_chosen_logps"][0]  # type: ignore[attr-defined]
        seen[trainer.args.precompute_ref_log_probs] = (counted, ref)  # type: ignore[attr-defined]
        return 0.0

    monkeypatch.setattr(train, "_train", inspect)
    counts = {}
    for on in (True, False):
        cfg = TrainConfig(batch_size=2, max_length=96, bf16=False, max_steps=1, dpo_contrast=on)
        train_policy(base, None, pairs, [], tmp_path / str(on), cfg)
        counts[on] = seen[True]
    (narrow, ref_narrow), (full, ref_full) = counts[True], counts[False]
    assert 0 < narrow < full / 3
    # The reference log-prob sums over fewer tokens, so it is closer to 0.
    assert ref_full < ref_narrow < 0
