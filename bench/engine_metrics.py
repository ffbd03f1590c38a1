"""What vLLM's own metrics cost generation: the serving engine with them and without.

Two engines of the same model side by side (serving's ``Engine``, ``engine_metrics`` on
and off), the same batch of greedy requests of a fixed length on each in turn, several
rounds alternating, so drift on a shared machine hits both alike. Prints each side's
tokens/s per round and the median ratio on/off.

    python bench/engine_metrics.py [--model smollm2|tiny|PATH] [--rounds 6] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm import SamplingParams

from livealign.config import Settings
from livealign.stack import resolve_model
from serving.config import EngineConfig
from serving.engine import Engine
from streaming.events import ChatMessage


async def batch(engine: Engine, prompt: list[int], n: int, tokens: int, tag: str) -> float:
    """Tokens per second for ``n`` concurrent requests of exactly ``tokens`` tokens."""
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0.0)

    async def one(i: int) -> int:
        last = None
        async for out in engine.generate(prompt, params, f"{tag}-{i}"):
            last = out
        assert last is not None
        return len(last.outputs[0].token_ids)

    start = time.perf_counter()
    made = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(made) / (time.perf_counter() - start)


async def run(args: argparse.Namespace) -> None:
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="livealign-bench-")), model=args.model)
    model = resolve_model(settings)
    config = EngineConfig(
        model_path=str(model), dtype=settings.resolved_dtype(), max_model_len=1024
    )
    engines = {
        "on": Engine(config.model_copy(update={"engine_metrics": True})),
        "off": Engine(config.model_copy(update={"engine_metrics": False})),
    }
    story = ChatMessage(role="user", content="Write a long story about a lighthouse keeper.")
    prompt = engines["on"].render([story])
    rates: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for name, engine in engines.items():  # warm-up
            await batch(engine, prompt, 2, 8, f"warm-{name}")
        for r in range(args.rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for name in order:
                rate = await batch(engines[name], prompt, args.batch, args.tokens, f"{name}-{r}")
                rates[name].append(rate)
            print(f"round {r}: on {rates['on'][-1]:.1f} tok/s, off {rates['off'][-1]:.1f} tok/s")
    finally:
        for engine in engines.values():
            engine.shutdown()
    ratios = [a / b for a, b in zip(rates["on"], rates["off"], strict=True)]
    print(
        f"\n{model.name}, batch {args.batch} x {args.tokens} tokens, {args.rounds} rounds: "
        f"median tok/s on/off {statistics.median(ratios):.3f} "
        f"(rounds {min(ratios):.3f}..{max(ratios):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
