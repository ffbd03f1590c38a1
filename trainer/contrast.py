"""Which tokens of a DPO pair carry the preference: the span an edit changed, not the text
the two answers share.

A user's edit is two nearly identical answers. DPO raises the log-probability of every
token of the chosen answer and lowers every token of the rejected one; a shared sentence
is then pushed up in the chosen context and down in the rejected one (the same sentence,
shifted by the edit). On SmolLM2 that taught the model to avoid its own first sentence
and to loop on the edit's opening instead ("In short:\\n\\nIn short: ..."). A shared
prefix cancels out exactly, but a shared span after the edit does not.

So the DPO loss counts only the tokens that differ: both sides of a replaced span; an
inserted span, plus the one token the other answer had at that point (where the two
answers part, the choice that was made); a deleted span likewise. Shared runs shorter than
`min_shared` tokens are not masked: two unrelated answers (a regenerated sibling, a
teacher pair) share words by chance, and those are still different choices in context.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

__all__ = ["ContrastCollator", "contrast_masks"]


def contrast_masks(
    chosen: Sequence[int], rejected: Sequence[int], min_shared: int = 4
) -> tuple[list[int], list[int]]:
    """(chosen mask, rejected mask): 1 on the tokens the DPO loss should count."""
    c_mask = [1] * len(chosen)
    r_mask = [1] * len(rejected)
    matcher = difflib.SequenceMatcher(None, rejected, chosen, autojunk=False)
    opcodes = matcher.get_opcodes()
    for tag, r1, r2, c1, c2 in opcodes:
        if tag == "equal" and r2 - r1 >= min_shared:
            r_mask[r1:r2] = [0] * (r2 - r1)
            c_mask[c1:c2] = [0] * (c2 - c1)
    for tag, r1, _, c1, _ in opcodes:
        # Where one answer inserts and the other goes straight on, the other's next token
        # is the alternative the insertion was preferred to.
        if tag == "insert" and r1 < len(rejected):
            r_mask[r1] = 1
        elif tag == "delete" and c1 < len(chosen):
            c_mask[c1] = 1
    if not any(c_mask) and not any(r_mask):  # identical answers: nothing to prefer
        return [1] * len(chosen), [1] * len(rejected)
    return c_mask, r_mask


class ContrastCollator(DataCollatorForPreference):
    """TRL's preference collator, with the completion mask narrowed to the tokens the
    `chosen_contrast` / `rejected_contrast` columns mark (see `contrast_masks`). TRL uses the
    same mask for the reference log-probs and for the SFT term, so all three agree."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if "chosen_contrast" not in examples[0]:
            return out
        mask = out["completion_mask"]
        width = mask.size(1)
        n = len(examples)
        for j, ex in enumerate(examples):
            start = len(ex["prompt_ids"])
            for row, column in ((j, "chosen_contrast"), (n + j, "rejected_contrast")):
                keep = torch.tensor(ex[column], dtype=mask.dtype)[: max(width - start, 0)]
                mask[row, start : start + len(keep)] *= keep
        return out


def add_contrast(example: dict[str, Any], min_shared: int) -> dict[str, Any]:
    """Dataset map: the contrast columns of one tokenized DPO row."""
    example["chosen_contrast"], example["rejected_contrast"] = contrast_masks(
        example["chosen_ids"], example["rejected_ids"], min_shared
    )
    return example
