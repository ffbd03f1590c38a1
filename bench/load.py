"""A small closed-loop load generator for OpenAI-compatible chat endpoints."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx

PROMPTS = [
    "Explain what a hash map is in two sentences.",
    "Give me three tips for writing clear emails.",
    "What is the difference between weather and climate?",
    "Write a haiku about the sea.",
    "How do vaccines train the immune system?",
    "Suggest a name for a small bakery.",
    "Why is the sky blue?",
    "List four uses of a paperclip.",
]


@dataclass
class LoadResult:
    wall_s: float
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    errors: int = 0

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s

    def pct(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def summary(self) -> dict[str, float]:
        return {
            "req/s": self.requests_per_s,
            "tok/s": self.tokens_per_s,
            "p50 latency s": statistics.median(self.latencies),
            "p99 latency s": self.pct(self.latencies, 0.99),
            "p50 TTFT s": statistics.median(self.ttfts),
            "p99 TTFT s": self.pct(self.ttfts, 0.99),
            "errors": float(self.errors),
        }


async def _one(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int, res: LoadResult
) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            res.errors += 1
            await r.aread()
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if ttft is None and choices and choices[0]["delta"].get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                res.completion_tokens += chunk["usage"]["completion_tokens"]
    res.latencies.append(time.perf_counter() - start)
    res.ttfts.append(ttft if ttft is not None else res.latencies[-1])


async def run_load(
    url: str, model: str, requests: int, concurrency: int, max_tokens: int
) -> LoadResult:
    """``requests`` chats from ``concurrency`` clients, each sending its next when done."""
    res = LoadResult(wall_s=0.0)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(PROMPTS[i % len(PROMPTS)])

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            try:
                await _one(client, url, model, prompt, max_tokens, res)
            except httpx.HTTPError:
                res.errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        res.wall_s = time.perf_counter() - start
    return res


def wait_served(url: str, version: str, timeout: float = 300.0) -> None:
    """Until the LiveAlign at `url` serves adapter `version` (its /healthz says so)."""
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/healthz", timeout=10).json()["adapter"] != version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{version} not served after {timeout:.0f} s")
        time.sleep(0.2)
