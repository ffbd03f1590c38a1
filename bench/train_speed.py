"""Seconds per preference pair of LiveAlign's DPO stage against TRL's plain configuration.

The same rows (the round's schedule: several passes over a small round), trained one
configuration after the other in this process:

- plain: DPOTrainer as TRL configures it: the reference forward in every step, its
  default length limit (1024, so nothing here is cut), a LoRA on every block;
- livealign, LoRA on every block: the reference log-probs computed once per distinct pair
  before training, prompts over `max_prompt_length` cut from the left;
- livealign: the defaults, which also put the LoRA on the top half of the blocks only.

Pairs: held-out prompts of the shipped set, each with a long system message on some (as a
conversation's history would be), chosen/rejected answers of ~80 tokens. Prints seconds
per training row and per distinct pair of each, their ratio, and the process's peak RSS.

    python bench/train_speed.py [--pairs 12] [--passes 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from livealign.models import prepare_smollm2
from livealign.prompts import load_prompts
from streaming.events import ChatMessage, PreferencePair
from trainer import train
from trainer.config import TrainConfig
from trainer.schedule import plan

ANSWER = (
    "Here is a clear answer. First, consider what the question asks and the main idea "
    "behind it. Second, think about a simple example that shows the idea at work in daily "
    "life. Third, remember the common mistakes people make and how to avoid them. Finally, "
    "practice a little every day, and the idea will soon feel natural."
)
HISTORY = "Earlier in this conversation we talked about many things. " * 25


def pairs(n: int) -> list[PreferencePair]:
    prompts = load_prompts()[:n]
    out = []
    for i, p in enumerate(prompts):
        prompt = [ChatMessage(role="user", content=p.text)]
        if i % 3 == 0:  # a third carry a long history
            prompt = [ChatMessage(role="system", content=HISTORY), *prompt]
        out.append(
            PreferencePair(
                pair_id=f"speed-{i}", prompt=prompt, chosen="In short: " + ANSWER,
                rejected=ANSWER + " Sure.", weight=1.0, provenance="edit",
                rejected_response_id=f"r-{i}", adapter="base",
            )
        )  # fmt: skip
    return out


def run(base: Path, data: list[PreferencePair], config: TrainConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="livealign-speed-") as tmp:
        t = time.perf_counter()
        result = train.train_policy(base, None, data, [], Path(tmp) / "out", config)
        seconds = time.perf_counter() - t
    rows = plan(len(data), config).samples
    return {"seconds": seconds, "steps": result.steps, "loss": result.dpo_loss, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--passes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_speed.json"))
    args = parser.parse_args()
    base = prepare_smollm2(Path.home() / ".cache" / "livealign" / "models")
    data = pairs(args.pairs)
    ours = TrainConfig(epochs=args.passes, seed=0)
    # TRL's plain setup: the reference forward in each step, TRL's default length limit
    # (1024: nothing here is cut or dropped), a LoRA on every block.
    plain = ours.model_copy(
        update={"precompute_ref": False, "max_prompt_length": 10**6, "max_length": 1024,
                "lora_top_layers": 1.0}
    )  # fmt: skip
    every_block = ours.model_copy(update={"lora_top_layers": 1.0})
    results = {
        "plain": run(base, data, plain),
        "livealign, LoRA on every block": run(base, data, every_block),
        "livealign": run(base, data, ours),
    }
    for name, r in results.items():
        r["s_per_row"] = r["seconds"] / r["rows"]
        r["s_per_pair"] = r["seconds"] / args.pairs
        print(f"{name:31s}: {r['seconds']:.0f} s, {r['steps']} steps, {r['rows']} rows, "
              f"{r['s_per_row']:.2f} s/row, {r['s_per_pair']:.2f} s per distinct pair")  # fmt: skip
    ratio = results["livealign"]["seconds"] / results["plain"]["seconds"]
    for name, r in results.items():
        r["ratio_to_plain"] = r["seconds"] / results["plain"]["seconds"]
        print(f"ratio {name} / plain: {r['ratio_to_plain']:.2f}")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS of this process {peak_gb:.2f} GB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "args": vars(args) | {"out": str(args.out)},
                "results": results,
                "ratio": ratio,
                "peak_rss_gb": peak_gb,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
