"""The prompt set the simulated users ask: written for this project, shipped with it.

``livealign/data/prompts.jsonl`` holds a few hundred short, varied prompts in 14
categories (one JSON object a line: ``id``, ``category``, ``prompt``). A deterministic
split by id keeps a held-out share that the simulator never asks during training, for
judging each adapter version on prompts it was not trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

PROMPTS_FILE = Path(__file__).parent / "data" / "prompts.jsonl"


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    text: str


def load_prompts(path: Path = PROMPTS_FILE) -> list[Prompt]:
    prompts = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            prompts.append(Prompt(row["id"], row["category"], row["prompt"]))
    return prompts


def is_held_out(prompt: Prompt, fraction: float) -> bool:
    digest = hashlib.sha256(prompt.id.encode()).hexdigest()[:8]
    return int(digest, 16) / 0xFFFFFFFF < fraction


def split(
    prompts: list[Prompt], held_out_fraction: float = 0.1
) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held out): the same prompt lands on the same side in every run."""
    held = [p for p in prompts if is_held_out(p, held_out_fraction)]
    train = [p for p in prompts if not is_held_out(p, held_out_fraction)]
    return train, held
