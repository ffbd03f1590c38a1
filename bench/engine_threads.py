"""What vLLM's CPU thread binding costs generation: one core for the model, or every core.

vLLM's CPU engine binds its OpenMP threads to the cores of a NUMA node less the ones it
reserves for its scheduler process (``VLLM_CPU_NUM_OF_RESERVED_CPU``, by default one per
worker). On a machine of two cores that is one thread on core 0 for the model, and core 1
for a scheduler that polls for the worker's results while a batch runs (~90% of a core in
`top` during the learning bench's chats). This bench runs ``bench/lora_cpu.py``'s side
(serving's ``Engine``, LiveAlign's LoRA ops, three adapters loaded) twice, each in its
own process: with vLLM's binding, and with no core reserved (the model's threads on every
core, the scheduler sharing them). Prints tokens per second of the base model and of an
adapter on each side, and the ratios.

    python bench/engine_threads.py [--model smollm2] [--rounds 4] [--batch 8] [--tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lora_cpu import add_arguments, make_adapters, run_side

SIDES = {
    "vLLM's binding": {},
    "every core": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    from livealign.config import Settings
    from livealign.stack import resolve_model

    work = Path(tempfile.mkdtemp(prefix="livealign-threads-bench-"))
    adapters = make_adapters(resolve_model(Settings(home=work, model=args.model)), work, 3)
    results = {}
    for name, env in SIDES.items():
        r = results[name] = run_side(args, "livealign", adapters, env)
        print(f"{name:>15}: base {r['base_tok_s']:.1f} tok/s, adapter {r['adapter_tok_s']:.1f} "
              f"tok/s (rounds: {r['rounds']})", flush=True)  # fmt: skip
    first, second = (results[n] for n in SIDES)
    print(f"\nevery core / vLLM's binding: base x{second['base_tok_s'] / first['base_tok_s']:.2f}, "
          f"adapter x{second['adapter_tok_s'] / first['adapter_tok_s']:.2f} "
          f"(batch {args.batch} x {args.tokens} tokens, {args.rounds} rounds)")  # fmt: skip


if __name__ == "__main__":
    main()
