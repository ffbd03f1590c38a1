"""What a live canary run needs: two adapters users tell apart, and the users.

On the tiny random model (what the live benchmark and the end-to-end tests serve: they
measure the rollout, not answer quality), "liked" must be measurable: the good adapter
is trained with the trainer's own DPO + SFT toward answering "Sure thing."; the zero
adapter (B = 0) answers exactly as the base model does. The simulated users like an
answer that says "thing": a thumb up (on ``thumb_rate`` of the answers; down otherwise)
and a long dwell on every answer (a short one otherwise).

They sample at temperature 0.1. The tiny model's next-token distribution is nearly flat
over its 49k tokens, so at temperature 1 the adapter's shift toward "Sure thing." is lost
in the tail (measured: the good adapter's answers said "Sure" 3 times in 10,000); at 0.1
every good answer says "thing" and no base answer does (30 of 30 against 0 of 30).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

import httpx
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from streaming.events import ChatMessage, PreferencePair
from trainer.config import TrainConfig
from trainer.registry import DataWindow, Registry
from trainer.train import train_policy

WINDOW = DataWindow(from_ms=0, to_ms=1, n_pairs=0, n_labels=0)


def make_adapters(base: Path, work: Path) -> dict[str, Path]:
    """``good`` (says "Sure") and ``zero`` (answers as the base model does)."""
    pairs = [
        PreferencePair(
            pair_id=f"sure-{i}", prompt=[ChatMessage(role="user", content=f"Question {i}?")],
            chosen="Sure thing.", rejected="No.", weight=1.0, provenance="edit",
            rejected_response_id=f"r{i}", adapter="base",
        )
        for i in range(8)
    ]  # fmt: skip
    cfg = TrainConfig(batch_size=4, max_length=64, bf16=False, num_threads=1, seed=0,
                      max_steps=30, dpo_lr=2e-2, sft_weight=4.0)  # fmt: skip
    good = train_policy(base, None, pairs, [], work / "good", cfg).adapter_dir
    torch.manual_seed(0)
    zero = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8))
    zero.save_pretrained(work / "zero")
    return {"good": good, "zero": work / "zero"}


def publish(registry: Registry, src: Path, base: Path) -> str:
    return registry.publish(
        src, parent=None, base_model=str(base), data_window=WINDOW, metrics={}
    ).ref


class Users:
    """Concurrent simulated users, each a new conversation: chat, then feedback. Records
    every chat as (status, arm, adapter, latency s, when)."""

    def __init__(
        self, url: str, concurrency: int = 4, thumb_rate: float = 1.0, seed: int = 0
    ) -> None:
        self.url, self.thumb_rate = url, thumb_rate
        self.chats: list[tuple[int, str, str, float, float]] = []
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)
        ]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                self._chat(http)

    def _chat(self, http: httpx.Client) -> None:
        conv = f"canary-{uuid.uuid4().hex[:12]}"
        messages = [{"role": "user", "content": f"Question {self._rng.randrange(1000)}?"}]
        body = {"model": "livealign", "max_tokens": 8, "temperature": 0.1, "user": conv,
                "conversation_id": conv, "messages": messages}  # fmt: skip
        start = time.perf_counter()
        try:
            r = http.post("/v1/chat/completions", json=body)
        except httpx.HTTPError:
            self.chats.append((0, "", "", time.perf_counter() - start, time.time()))
            return
        latency = time.perf_counter() - start
        if r.status_code != 200:
            self.chats.append((r.status_code, "", "", latency, time.time()))
            return
        data = r.json()
        info = data["livealign"]
        self.chats.append((200, info["arm"], info["adapter"], latency, time.time()))
        liked = "thing" in data["choices"][0]["message"]["content"]
        events: list[dict[str, object]] = [{"kind": "dwell", "value": 30_000 if liked else 2_000}]
        if self._rng.random() < self.thumb_rate:
            events.append({"kind": "thumb", "value": 1 if liked else -1})
        batch = [
            {**e, "response_id": info["response_id"], "event_id": f"{conv}-{i}",
             "feedback_token": info["feedback_token"]}
            for i, e in enumerate(events)
        ]  # fmt: skip
        http.post("/v1/feedback", json={"events": batch})

    def __enter__(self) -> Users:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def failed(self) -> list[tuple[int, str, str, float, float]]:
        return [c for c in self.chats if c[0] != 200]
