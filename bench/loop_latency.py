"""How long the loop takes to close, and what a swap costs chat latency. One run.

With the full local stack (embedded broker, serving, processor) on SmolLM2-135M:
(a) users chat through the public API and correct N answers (edit feedback); from the
    moment the store holds the record that completes the batch, a round runs (the same
    ``Trainer.run_round`` the trainer actor runs) and the new version is swapped in;
    printed: reward model, policy training, gate, publish, swap, first response served
    by the new version;
(b) the same steady chat load on the new version without a swap, and during swaps between
    it and a twin (same weights, its own name) through the admin API; printed: p50/p99
    latency of each and the ratios.

    python bench/loop_latency.py [--pairs 24] [--clients 4] [--requests 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import PROMPTS, LoadResult, run_load, wait_served
from livealign.config import Settings
from livealign.stack import LocalStack
from streaming import store as s
from streaming.broker import free_port
from streaming.store import PreferenceStore
from trainer.registry import Registry
from trainer.round import Trainer

CONCISE = "In short: {}"


def chat_body(prompt: str, max_tokens: int) -> dict[str, object]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": "livealign", "messages": messages, "max_tokens": max_tokens}


def collect_edits(url: str, n: int) -> None:
    """Chat n times and send an edit for each answer: the user's shorter rewrite."""
    with httpx.Client(base_url=url, timeout=300) as client:
        for i in range(n):
            prompt = f"{PROMPTS[i % len(PROMPTS)]} (case {i})"
            r = client.post("/v1/chat/completions", json=chat_body(prompt, 48))
            info = r.json()["livealign"]
            answer = r.json()["choices"][0]["message"]["content"]
            edited = CONCISE.format(answer.split(".")[0].strip() or "yes") + "."
            client.post(
                "/v1/feedback",
                json={"response_id": info["response_id"], "feedback_token": info["feedback_token"],
                      "kind": "edit", "value": edited, "event_id": f"bench-edit-{i}"},
            )  # fmt: skip


def wait_pairs(store: PreferenceStore, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while store.count(s.pairs) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {store.count(s.pairs)} of {n} pairs reached the store")
        time.sleep(0.2)


def swapping(url: str, refs: tuple[str, str], admin: dict[str, str], stop: threading.Event) -> int:
    """Swap between two adapter versions until stopped; returns the number of swaps."""
    swaps = 0
    while not stop.is_set():
        target = refs[(swaps + 1) % 2]
        r = httpx.post(f"{url}/admin/adapters/{target}/promote", headers=admin, timeout=120)
        r.raise_for_status()
        swaps += 1
        stop.wait(3.0)
    return swaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="livealign-loop-"))
    settings = Settings(home=home, model=args.model, port=free_port(), trainer=False)
    with LocalStack(settings) as stack:
        store = PreferenceStore(settings.processor_config(stack.bootstrap).store_url)
        model_path = Path(stack.settings.cache_dir) / (
            "SmolLM2-135M-Instruct" if args.model == "smollm2" else args.model
        )
        base = settings.trainer_config(model_path, stack.bootstrap)
        # Short chats (48-token answers) fit in 192 tokens; one reward-model epoch and a
        # smaller gate keep the round within minutes on two CPU cores.
        config = base.model_copy(
            update={
                "min_records": 4,
                "train": base.train.model_copy(update={"max_length": 192, "reward_epochs": 1.0}),
                "gate": base.gate.model_copy(update={"n_prompts": 6, "max_new_tokens": 32}),
            }
        )
        print(f"collecting {args.pairs} edited answers through the API...", flush=True)
        collect_edits(stack.url, args.pairs)
        wait_pairs(store, args.pairs)
        t0 = time.perf_counter()  # the record that completes the batch is in the store
        report = Trainer(config).run_round()
        t_round = time.perf_counter()
        if report.outcome != "published" or report.version is None:
            print(f"round {report.outcome}: {report.reasons}; metrics {report.metrics}")
            return
        # Promoted at once (this bench measures the loop's cost, not the canary's trial).
        Registry(settings.registry_dir).set_state(
            stable=report.version, action="promote", reason="loop bench"
        )
        wait_served(stack.url, report.version)
        t_swap = time.perf_counter()
        r = httpx.post(f"{stack.url}/v1/chat/completions", json=chat_body("hi", 8), timeout=120)
        assert r.json()["livealign"]["adapter"] == report.version
        t_first = time.perf_counter()

        print("\n(a) record -> first response from the new version")
        print("| stage | seconds |\n|---|---:|")
        for stage in ("reward", "policy", "gate", "publish"):
            print(f"| {stage} | {report.seconds.get(stage, 0.0):.1f} |")
        print(f"| swap (published -> served) | {t_swap - t_round:.1f} |")
        print(f"| first response | {t_first - t_swap:.1f} |")
        print(f"| **total** | {t_first - t0:.1f} |")
        print(f"gate metrics: { {k: round(v, 3) for k, v in report.metrics.items()} }")

        key = settings.serving_config(model_path, stack.bootstrap).admin_key
        assert key is not None
        admin = {"Authorization": f"Bearer {key.get_secret_value()}"}
        # A twin of the new version (same weights, its own name): swapping between the two
        # compares like with like (a LoRA answer costs more than a base one on vLLM CPU).
        registry = Registry(settings.registry_dir)
        new = registry.get(report.version)
        twin = registry.publish(
            registry.path(new.ref), parent=new.ref, base_model=new.base_model,
            data_window=new.data_window, metrics=new.metrics, notes="twin for the swap bench",
        ).ref  # fmt: skip
        registry.set_state(stable=new.ref, action="promote", reason="swap bench baseline")
        steady = asyncio.run(run_load(stack.url, "livealign", args.requests, args.clients, 32))
        stop = threading.Event()
        result: list[int] = []
        swapper = threading.Thread(
            target=lambda: result.append(swapping(stack.url, (new.ref, twin), admin, stop))
        )
        swapper.start()
        during = asyncio.run(run_load(stack.url, "livealign", args.requests, args.clients, 32))
        stop.set()
        swapper.join()
        print(
            f"\n(b) {args.requests} chats, {args.clients} clients; {result[0]} swaps in the 2nd run"
        )
        print_ratio(steady, during)


def print_ratio(steady: LoadResult, during: LoadResult) -> None:
    print("| | no swap | during swaps | ratio |\n|---|---:|---:|---:|")
    for name, q in (("p50 latency s", 0.5), ("p99 latency s", 0.99)):
        a, b = steady.pct(steady.latencies, q), during.pct(during.latencies, q)
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    print(f"| errors | {steady.errors} | {during.errors} | |")
    print(
        f"| mean latency s | {statistics.mean(steady.latencies):.2f} | "
        f"{statistics.mean(during.latencies):.2f} | |"
    )


if __name__ == "__main__":
    main()
