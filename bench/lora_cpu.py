"""What an adapter costs generation on CPU, with vLLM's own LoRA ops and with LiveAlign's.

vLLM's CPU backend applies LoRA with pure-PyTorch ops that gather a whole adapter matrix
per token; ``serving.lora_cpu`` (a vLLM plugin, on by default) replaces them with one GEMM
over the adapter slots. Each side runs in a process of its own (``VLLM_PLUGINS`` decides
whether vLLM loads the plugin), on serving's ``Engine`` with its default engine settings:

1. base answers, one request at a time: the reference;
2. three random LoRA adapters of the trainer's shape loaded (filling ``max_loras``);
3. speed: the same batch of greedy requests of a fixed length on the base model and on an
   adapter, several rounds alternating; tokens per second of each;
4. correctness: how many of step 1's base answers change when the same requests run in
   a batch of base requests (the batch's own rounding), and in a batch of the same size
   whose other requests use the adapters (vLLM's ops give a base token the last adapter
   slot's delta).

Prints both sides and the ratios (adapter / base on each side, LiveAlign / vLLM).

    python bench/lora_cpu.py [--model smollm2|tiny|PATH] [--rounds 4] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "What should I pack for a week of hiking?",
    "Describe the water cycle to a child.",
]


def make_adapters(base: Path, out: Path, n: int) -> list[Path]:
    """`n` random adapters with the trainer's LoRA shape (rank, modules, top layers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.config import TrainConfig
    from trainer.train import lora_layers

    cfg = TrainConfig()
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.target_modules),
            layers_to_transform=lora_layers(model.config.num_hidden_layers, cfg.lora_top_layers),
            init_lora_weights=False, task_type="CAUSAL_LM",
        )  # fmt: skip
        peft = get_peft_model(model, lora)
        with torch.no_grad():  # a trained adapter's size of change, not noise that drowns it
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.02)
        path = out / f"adapter-{i}"
        peft.save_pretrained(str(path))
        paths.append(path)
    return paths


async def side(args: argparse.Namespace) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.lora.request import LoRARequest

    from livealign.config import Settings
    from livealign.stack import resolve_model
    from serving import lora_cpu
    from serving.config import EngineConfig
    from serving.engine import Engine
    from streaming.events import ChatMessage

    settings = Settings(home=Path(tempfile.mkdtemp(prefix="livealign-bench-")), model=args.model)
    model = resolve_model(settings)
    engine = Engine(EngineConfig(model_path=str(model), dtype=settings.resolved_dtype()))
    loras = [LoRARequest(f"a{i}", i + 1, str(p)) for i, p in enumerate(map(Path, args.adapters))]
    prompts = [engine.render([ChatMessage(role="user", content=p)]) for p in PROMPTS]
    greedy = SamplingParams(max_tokens=args.tokens, temperature=0.0)
    fixed = SamplingParams(max_tokens=args.tokens, min_tokens=args.tokens, temperature=0.0)
    counter = iter(range(10**9))

    async def one(prompt: list[int], params: SamplingParams, lora: LoRARequest | None) -> Any:
        last = None
        async for out in engine.generate(prompt, params, f"r{next(counter)}", lora):
            last = out
        assert last is not None
        return last.outputs[0]

    async def rate(lora: LoRARequest | None) -> float:
        start = time.perf_counter()
        outs = await asyncio.gather(
            *(one(prompts[i % len(prompts)], fixed, lora) for i in range(args.batch))
        )
        return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)

    try:
        alone = [(await one(p, greedy, None)).text for p in prompts]
        for lora in loras:  # load each into a slot: all of max_loras taken
            await one(prompts[0], SamplingParams(max_tokens=2), lora)
        await rate(None)  # warm-up
        await rate(loras[0])
        rates: dict[str, list[float]] = {"base": [], "adapter": []}
        for r in range(args.rounds):
            for name in ("base", "adapter") if r % 2 == 0 else ("adapter", "base"):
                rates[name].append(await rate(None if name == "base" else loras[-1]))
        n = len(prompts)
        # Base requests in a batch of base requests, then in one of the same size whose
        # other requests use the adapters: a batch's own rounding may change a greedy
        # answer too, which the first batch shows.
        control = await asyncio.gather(*(one(p, greedy, None) for p in prompts * (1 + len(loras))))
        mixed = await asyncio.gather(
            *(one(p, greedy, None) for p in prompts),
            *(one(p, greedy, lora) for p in prompts for lora in loras),
        )
        changed_base_batch = sum(a != b.text for a, b in zip(alone, control[:n], strict=True))
        changed = sum(a != b.text for a, b in zip(alone, mixed[:n], strict=True))
    finally:
        engine.shutdown()
    return {
        "base_tok_s": statistics.median(rates["base"]),
        "adapter_tok_s": statistics.median(rates["adapter"]),
        "rounds": rates,
        # In this process; the engine's own process loads the same VLLM_PLUGINS list.
        "lora_cpu_ops": punica_cpu.bgmv_shrink is lora_cpu.bgmv_shrink,
        "base_answers_changed_in_base_batch": changed_base_batch,
        "base_answers_changed_by_batching": changed,
        "base_answers": len(prompts),
    }


def run_side(
    args: argparse.Namespace, name: str, adapters: list[Path], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One side in a process of its own; `env`: more environment for it."""
    env = {**os.environ, **(env or {})}
    # VLLM_PLUGINS names the plugins vLLM may load; a name no plugin has: none of them.
    env["VLLM_PLUGINS"] = "livealign_lora_cpu" if name == "livealign" else "none"
    cmd = [
        sys.executable, __file__, "--side", name, "--model", args.model,
        "--rounds", str(args.rounds), "--batch", str(args.batch), "--tokens", str(args.tokens),
        "--adapters", *map(str, adapters),
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=1800)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and the speed measurement's size (run_side passes them to a side)."""
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=4, help="base/adapter rounds, alternating")
    parser.add_argument("--batch", type=int, default=8, help="requests a round")
    parser.add_argument("--tokens", type=int, default=64, help="tokens a request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--side", choices=["vllm", "livealign"], help=argparse.SUPPRESS)
    parser.add_argument("--adapters", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # a child: one side, its result as the last line of stdout
        print(json.dumps(asyncio.run(side(args))))
        return
    from livealign.config import Settings
    from livealign.stack import resolve_model

    work = Path(tempfile.mkdtemp(prefix="livealign-lora-bench-"))
    settings = Settings(home=work, model=args.model)
    adapters = make_adapters(resolve_model(settings), work, 3)
    results = {}
    for name in ("vllm", "livealign"):
        results[name] = run_side(args, name, adapters)
        r = results[name]
        print(
            f"{name:>9}: base {r['base_tok_s']:.1f} tok/s, adapter {r['adapter_tok_s']:.1f} "
            f"tok/s (adapter/base {r['adapter_tok_s'] / r['base_tok_s']:.2f}); of "
            f"{r['base_answers']} greedy base answers, changed when batched with base "
            f"requests: {r['base_answers_changed_in_base_batch']}, with adapter requests: "
            f"{r['base_answers_changed_by_batching']} (LiveAlign's ops: {r['lora_cpu_ops']})",
            flush=True,
        )
    ratio = results["livealign"]["adapter_tok_s"] / results["vllm"]["adapter_tok_s"]
    print(
        f"\nadapter tok/s, LiveAlign's ops / vLLM's: {ratio:.2f} "
        f"(batch {args.batch} x {args.tokens} tokens, {args.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
