"""What one DPO round learns from users' edits, offline: a fast loop for trying a trainer
setting before a full learning-bench row (which takes over an hour here).

    base answers (vLLM, as the bench's chats: 80 tokens at temperature 0.8) to the
    training prompts ──► each answer edited as a user of the family would edit it
    (livealign.users.rewrite) ──► N edit pairs ──► for each configuration: train_policy
    (the stack's own DPO stage, from a fresh LoRA) ──► greedy answers to held-out prompts
    through vLLM with the adapter ──► judged by the family's hidden utility

With --labels, thumbs-style labels of other sampled answers are added, and the KTO stage
runs on them after DPO, as in a round. No broker, Ray or serving stack. Prints, per
configuration: mean utility, the share of held-out prompts where the answer beats the
base's by more than 0.02 (ties count half, as in bench/learning.py) with its 95% Wilson
interval, word-3-gram repetition, training seconds, and each against the first
configuration (the defaults unless told otherwise), measured in the same run.
Each run is appended to bench/results/dpo_offline_<family>.json, with the trainer defaults
it ran on (a configuration is overrides of those).

    python bench/dpo_offline.py --family summary --pairs 90 \\
        --config '{}' --config '{"loop_weight": 0, "dpo_lr": 2e-4}'
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.learning import Judged, judge_answers, mean
from livealign.models import prepare_smollm2
from livealign.prompts import Prompt, load_prompts, split
from livealign.simulate import outcomes
from livealign.users import FAMILIES, realistic, rewrite, score
from serving.config import EngineConfig
from streaming.events import ChatMessage, PreferenceLabel, PreferencePair
from trainer.config import TeacherConfig, TrainConfig
from trainer.gate_checks import wilson_interval
from trainer.train import train_policy

# An answer with more than this share of its word 3-grams repeated is caught in a loop
# (the teacher's guard: it never makes such an answer the chosen one).
LOOP = TeacherConfig.model_fields["max_repetition"].default


def looping(judged: Judged) -> float:
    """Share of the answers caught in a loop."""
    return sum(r > LOOP for r in judged.repetition) / len(judged.repetition)


RESULTS = Path(__file__).resolve().parent / "results"


def append_run(family: str, run: dict[str, Any]) -> Path:
    """Add `run` to the family's list of runs (a run's rows are only comparable with each
    other: each run draws its own pairs and base answers)."""
    path = RESULTS / f"dpo_offline_{family}.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*runs, run], indent=1) + "\n")
    return path


def edit_pairs(
    llm: Any, prompts: list[Prompt], family: str, n: int, seed: int, n_labels: int = 0
) -> tuple[list[PreferencePair], list[PreferenceLabel], frozenset[str]]:
    """`n` edit pairs: sampled base answers and the family's edit of each (answers the
    user would not change make no pair); `n_labels` labels of other sampled answers, as a
    thumb would give them (desirable when the hidden utility is at least 0.5, as a pleased
    user's); and the ids of the answers cut off by max_tokens. A quarter more prompts
    than pairs are asked: a user leaves a few answers unedited."""
    from vllm import SamplingParams

    asked = n + n // 4 + 1
    prompts = random.Random(seed).sample(prompts, min(len(prompts), asked + n_labels))
    labelled, prompts = prompts[asked:], prompts[:asked]

    population = realistic({family: 1.0})
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=80)
    outs = llm.chat([[{"role": "user", "content": p.text}] for p in prompts + labelled], params)
    labels: list[PreferenceLabel] = []
    cut: set[str] = set()
    for p, out in zip(labelled, outs[len(prompts) :], strict=True):
        answer, rid = out.outputs[0], f"{p.id}-label"
        if answer.finish_reason == "length":
            cut.add(rid)
        good = score(family, answer.text, population, p.text) >= 0.5  # type: ignore[arg-type]
        label = PreferenceLabel(
            response_id=rid, prompt=[ChatMessage(role="user", content=p.text)],
            completion=answer.text, desirable=good, weight=1.0, score=1.0 if good else -1.0,
            confidence=1.0, scenario="offline", adapter="base", n_signals=1,
        )  # fmt: skip
        labels.append(label)
    pairs = []
    for p, out in zip(prompts, outs[: len(prompts)], strict=True):
        answer = out.outputs[0]
        edited = rewrite(family, answer.text, population, p.text)  # type: ignore[arg-type]
        if edited == answer.text:
            continue
        rid = f"{p.id}-0"
        if answer.finish_reason == "length":
            cut.add(rid)
        pair = PreferencePair(
            pair_id=rid, prompt=[ChatMessage(role="user", content=p.text)],
            chosen=edited, rejected=answer.text, weight=1.0, provenance="edit",
            rejected_response_id=rid, adapter="base",
        )  # fmt: skip
        pairs.append(pair)
    return pairs[:n], labels, frozenset(cut)


def greedy(llm: Any, prompts: list[Prompt], max_tokens: int, lora: Any = None) -> list[str]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    convos = [[{"role": "user", "content": p.text}] for p in prompts]
    return [o.outputs[0].text for o in llm.chat(convos, params, lora_request=lora)]


def row(name: str, now: Judged, base: Judged, seconds: float, extra: dict[str, Any]) -> dict:
    wins, ties, _ = outcomes(now.scores, base.scores)
    n = len(now.scores)
    low, high = wilson_interval(wins + ties / 2, n, 0.95)
    return {
        "config": name, "overrides": extra, "prompts": n,
        "utility": mean(now.scores), "beats_base": (wins + ties / 2) / n,
        "beats_base_low": low, "beats_base_high": high,
        "repetition": mean(now.repetition), "train_s": seconds,
        # A mean of 0.2 is a few loops or every answer a little repetitive: which one.
        "looping": looping(now),
        # What a loop looks like, when there is one: the answer that repeats most.
        "most_repetitive": max(zip(now.repetition, now.texts, strict=True))[1],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="summary", choices=FAMILIES)
    parser.add_argument("--pairs", type=int, default=90, help="edit pairs (a bench round: ~85)")
    parser.add_argument(
        "--labels", type=int, default=0,
        help="also KTO on this many thumbs-style labels of other answers (a bench round: ~200)",
    )  # fmt: skip
    parser.add_argument("--prompts", type=int, default=24, help="held-out prompts judged")
    parser.add_argument("--max-tokens", type=int, default=64, help="of each greedy answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--config", action="append", default=None,
        help="TrainConfig overrides as JSON, one per configuration (default: '{}')",
    )  # fmt: skip
    args = parser.parse_args()
    configs = [json.loads(c) for c in (args.config or ["{}"])]
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    base = prepare_smollm2(Path.home() / ".cache" / "livealign" / "models")
    train_prompts, held = split(load_prompts(), 0.2)
    held = held[: args.prompts]
    # The KV cache serving's engine gets (vLLM's CPU default is a share of all memory,
    # which it refuses to start with when another process holds some).
    os.environ.setdefault(
        "VLLM_CPU_KVCACHE_SPACE", str(EngineConfig.model_fields["kv_cache_gib"].default)
    )
    llm = LLM(model=str(base), dtype="bfloat16", max_model_len=2048, seed=args.seed,
              enable_lora=True, max_lora_rank=64)  # fmt: skip
    pairs, labels, cut = edit_pairs(
        llm, train_prompts, args.family, args.pairs, args.seed, args.labels
    )
    population = realistic({args.family: 1.0})
    base_judged = judge_answers(greedy(llm, held, args.max_tokens), held, population, "base")
    print(f"{args.family}: {len(pairs)} edit pairs ({len(cut & {p.pair_id for p in pairs})} "
          f"cut off), {len(labels)} labels ({sum(x.desirable for x in labels)} desirable); "
          f"base utility {mean(base_judged.scores):.3f}, repetition "
          f"{mean(base_judged.repetition):.3f}", flush=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="dpo-offline-") as tmp:
        for i, extra in enumerate(configs):
            started = time.monotonic()
            cfg = TrainConfig(**{"seed": args.seed, **extra})
            out = train_policy(base, None, pairs, labels, Path(tmp) / str(i), cfg, cut=cut)
            seconds = time.monotonic() - started
            lora = LoRARequest(f"c{i}", i + 1, str(out.adapter_dir))
            texts = greedy(llm, held, args.max_tokens, lora)
            now = judge_answers(texts, held, population, f"c{i}")
            rows.append(row(json.dumps(extra), now, base_judged, seconds, extra))
            first = rows[0]
            r = rows[-1]
            ratio = f"x{r['utility'] / first['utility']:.2f}" if first["utility"] else "n/a"
            print(f"{r['config']}: utility {r['utility']:.3f} ({ratio} of the first), beats "
                  f"base {r['beats_base']:.2f} [{r['beats_base_low']:.2f}, "
                  f"{r['beats_base_high']:.2f}], repetition {r['repetition']:.3f} (base "
                  f"{mean(base_judged.repetition):.3f}), looping {r['looping']:.2f} (base "
                  f"{looping(base_judged):.2f}), trained in {seconds:.0f} s "
                  f"(x{seconds / first['train_s']:.2f})", flush=True)  # fmt: skip
            print("  e.g.", repr(texts[0][:120]), flush=True)
            print("  most repetitive:", repr(r["most_repetitive"][:240]), flush=True)
    run = {"family": args.family, "pairs": len(pairs), "labels": len(labels),
           "prompts": len(held), "seed": args.seed, "base_utility": mean(base_judged.scores),
           "base_repetition": mean(base_judged.repetition),
           "base_looping": looping(base_judged),
           "defaults": TrainConfig().model_dump(mode="json"), "rows": rows}  # fmt: skip
    print("rows appended to", append_run(args.family, run))
    # Without it the process waits on vLLM's engine after the last row, and killing the
    # bench then leaves the engine's own process (VLLM::EngineCore) running.
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
