"""How long and in what batches one training stage runs, chosen from the round's data.

A round sees whatever the users gave since the last version: a dozen records one time,
hundreds the next. A fixed "one pass at batch 8" is ten optimizer steps on 80 pairs and
one step on 8, too little to move a LoRA at a learning rate that is safe on a large
round, and an hour of steps on 3,000 labels. So each stage takes ``target_steps``
optimizer steps: several passes over a small round (at most ``max_epochs``: it must not
be memorised), part of a pass over a large one (weighted resampling draws the heavier
records first), and the batch shrinks on small rounds so that a pass is several steps,
not one. A round's time stays bounded whatever arrived.

Pure arithmetic, no torch: the trainer and its tests call it alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.config import TrainConfig

# A pass over a small round is at least this many steps (when the batch may shrink to 2).
MIN_STEPS_PER_PASS = 4


@dataclass(frozen=True)
class Schedule:
    """One stage's plan: `samples` rows (a multiple of the optimizer batch) in `steps`."""

    batch: int  # records per micro-batch
    passes: float  # how many times each record is seen, on average
    steps: int  # optimizer steps
    samples: int  # rows drawn by weighted resampling: steps * batch * grad_accum

    def as_dict(self) -> dict[str, float]:
        return {"batch": self.batch, "passes": self.passes, "steps": self.steps}


def plan(n_records: int, config: TrainConfig, min_batch: int = 1) -> Schedule:
    """The schedule of one stage over `n_records` (> 0) records.

    `min_batch`: KTO needs at least 2 answers a batch for its KL estimate.
    `max_steps` fixes the step count and `epochs` the passes, when set; otherwise
    `target_steps` steps, at most `max_epochs` passes.
    """
    if n_records <= 0:
        raise ValueError("a stage needs at least one record")
    batch = max(min_batch, min(config.batch_size, math.ceil(n_records / MIN_STEPS_PER_PASS)))
    per_step = batch * config.grad_accum
    if config.max_steps is not None:
        steps = config.max_steps
    else:
        passes = config.epochs
        if passes is None:
            passes = min(config.target_steps * per_step / n_records, config.max_epochs)
        steps = max(1, math.ceil(n_records * passes / per_step))
    samples = steps * per_step
    return Schedule(batch=batch, passes=samples / n_records, steps=steps, samples=samples)
