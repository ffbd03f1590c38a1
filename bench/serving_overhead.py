"""LiveAlign's serving overhead against raw vLLM, same model, same load, one run.

(a) vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``) and
(b) LiveAlign's Ray Serve endpoint with interaction logging to Kafka on, both with the
same engine arguments; the same closed-loop load (streamed chats, temperature 0) hits
each in turn, after a warm-up. Prints each side's numbers and LiveAlign/vLLM ratios.

    python bench/serving_overhead.py [--model smollm2|tiny|PATH] [--requests 64] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import LoadResult, run_load
from livealign.config import Settings
from livealign.stack import LocalStack, resolve_model
from streaming.broker import free_port


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def measure(url: str, args: argparse.Namespace) -> LoadResult:
    asyncio.run(run_load(url, "livealign", 4, 4, args.max_tokens))  # warm-up
    return asyncio.run(run_load(url, "livealign", args.requests, args.clients, args.max_tokens))


def bench_vllm(model: Path, settings: Settings, args: argparse.Namespace) -> LoadResult:
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", "livealign",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", settings.resolved_dtype(), "--max-model-len", str(settings.max_model_len),
        "--max-num-seqs", "64", "--disable-log-stats",
    ]  # fmt: skip
    if settings.enable_lora:
        cmd += ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "16"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib)}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 600)
            print("vLLM server up; measuring", flush=True)
            return measure(f"http://127.0.0.1:{port}", args)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def bench_livealign(settings: Settings, args: argparse.Namespace) -> LoadResult:
    with LocalStack(settings) as stack:
        print("LiveAlign up; measuring", flush=True)
        return measure(stack.url, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="livealign-bench-"))
    # Serving alone against vLLM alone: the stream processor is not on the request path.
    settings = Settings(home=home, model=args.model, port=free_port(), processor=False)
    model = resolve_model(settings)
    print(f"model {model.name}: {args.requests} streamed chats, {args.clients} clients, "
          f"max_tokens {args.max_tokens}", flush=True)  # fmt: skip
    raw = bench_vllm(model, settings, args)
    ours = bench_livealign(settings, args)

    a, b = raw.summary(), ours.summary()
    print("\n| metric | vLLM | LiveAlign | LiveAlign / vLLM |\n|---|---:|---:|---:|")
    for key in a:
        ratio = b[key] / a[key] if a[key] else float("nan")
        print(f"| {key} | {a[key]:.3f} | {b[key]:.3f} | {ratio:.3f} |")
    print(
        f"\nthroughput ratio (tok/s) {b['tok/s'] / a['tok/s']:.3f}; "
        f"p50 latency ratio {b['p50 latency s'] / a['p50 latency s']:.3f}; "
        f"p99 latency ratio {b['p99 latency s'] / a['p99 latency s']:.3f}"
    )


if __name__ == "__main__":
    main()
