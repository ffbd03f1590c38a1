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

The users are the chaos benchmark's too (bench/chaos.py): they retry feedback the API
has not stored yet, and record what they saw, with times.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

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
    zero.save_pretrained(str(work / "zero"))
    return {"good": good, "zero": work / "zero"}


def publish(registry: Registry, src: Path, base: Path) -> str:
    return registry.publish(
        src, parent=None, base_model=str(base), data_window=WINDOW, metrics={}
    ).ref


class Chat(NamedTuple):
    """One chat as its user saw it. ``status`` 0: no answer (a connection error or the
    client's timeout). ``when`` and ``started``: unix seconds it ended and was sent."""

    status: int
    arm: str
    adapter: str
    latency: float
    when: float
    started: float
    response_id: str = ""


class Attempt(NamedTuple):
    """A feedback request that left events to send again: its status (0: no answer),
    how many of its events were not accepted, and when it was sent and ended."""

    status: int
    pending: int
    started: float
    ended: float


class Users:
    """Concurrent simulated users, each a new conversation: chat, then feedback, then
    ``pause_s`` before the next. Records every chat (``chats``), every accepted event id
    with when it was accepted (``accepted``), and every feedback request that left
    events unaccepted (``retries``). Feedback not stored yet (a 503, or no answer) is
    sent again with the same event ids, as the API asks, for up to ``retry_s``; events
    still not accepted then, or refused for good (any other status), are ``abandoned``.
    Every request has a ``timeout``."""

    retry_every_s = 1.0  # between tries of one feedback batch

    def __init__(
        self,
        url: str,
        concurrency: int = 4,
        thumb_rate: float = 1.0,
        seed: int = 0,
        *,
        name: str = "canary",
        timeout: float = 60.0,
        retry_s: float = 60.0,
        pause_s: float = 0.0,
    ) -> None:
        self.url, self.thumb_rate, self.name = url, thumb_rate, name
        self.timeout, self.retry_s, self.pause_s = timeout, retry_s, pause_s
        self.chats: list[Chat] = []
        self.accepted: list[tuple[str, float]] = []
        self.retries: list[Attempt] = []
        self.abandoned: list[tuple[str, int]] = []  # event id, last status
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)
        ]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as http:
            while not self._stop.is_set():
                self._chat(http)
                self._stop.wait(self.pause_s)

    def _chat(self, http: httpx.Client) -> None:
        conv = f"{self.name}-{uuid.uuid4().hex[:12]}"
        messages = [{"role": "user", "content": f"Question {self._rng.randrange(1000)}?"}]
        body = {"model": "livealign", "max_tokens": 8, "temperature": 0.1, "user": conv,
                "conversation_id": conv, "messages": messages}  # fmt: skip
        started, start = time.time(), time.perf_counter()
        try:
            r = http.post("/v1/chat/completions", json=body)
        except httpx.HTTPError:
            self.chats.append(Chat(0, "", "", time.perf_counter() - start, time.time(), started))
            return
        latency = time.perf_counter() - start
        if r.status_code != 200:
            self.chats.append(Chat(r.status_code, "", "", latency, time.time(), started))
            return
        data = r.json()
        info = data["livealign"]
        self.chats.append(
            Chat(200, info["arm"], info["adapter"], latency, time.time(), started,
                 info["response_id"])
        )  # fmt: skip
        liked = "thing" in data["choices"][0]["message"]["content"]
        events: list[dict[str, object]] = [{"kind": "dwell", "value": 30_000 if liked else 2_000}]
        if self._rng.random() < self.thumb_rate:
            events.append({"kind": "thumb", "value": 1 if liked else -1})
        batch = [
            {**e, "response_id": info["response_id"], "event_id": f"{conv}-{i}",
             "feedback_token": info["feedback_token"]}
            for i, e in enumerate(events)
        ]  # fmt: skip
        self._feedback(http, batch)

    def _feedback(self, http: httpx.Client, batch: list[dict[str, object]]) -> None:
        pending = {str(e["event_id"]): e for e in batch}
        deadline = time.monotonic() + self.retry_s
        while True:
            started = time.time()
            status, accepted, retry = self._post_feedback(http, list(pending.values()))
            now = time.time()
            for event_id in accepted:
                if pending.pop(event_id, None) is not None:
                    self.accepted.append((event_id, now))
            for event_id in set(pending) - retry:  # refused for good: sending it again is no use
                self.abandoned.append((event_id, status))
                del pending[event_id]
            if not pending:
                return
            self.retries.append(Attempt(status, len(pending), started, now))
            if time.monotonic() >= deadline:
                self.abandoned += [(event_id, status) for event_id in pending]
                return
            time.sleep(self.retry_every_s)

    @staticmethod
    def _post_feedback(
        http: httpx.Client, events: list[dict[str, object]]
    ) -> tuple[int, list[str], set[str]]:
        """One request: its status, the event ids accepted, those to send again."""
        everything = {str(e["event_id"]) for e in events}
        try:
            r = http.post("/v1/feedback", json={"events": events})
        except httpx.HTTPError:
            return 0, [], everything  # no answer: stored or not, the same ids are safe to resend
        try:
            result = r.json()
            accepted = [str(i) for i in result["accepted"]]
            rejected = result.get("rejected", [])
        except (ValueError, KeyError, TypeError):  # not the API's answer (the proxy's 503, say)
            return r.status_code, [], everything if r.status_code >= 500 else set()
        retry = {
            str(x["event_id"]) for x in rejected if x.get("status") == 503 and x.get("event_id")
        }
        return r.status_code, accepted, retry

    def __enter__(self) -> Users:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2 * self.timeout + self.retry_s)

    def failed(self) -> list[Chat]:
        return [c for c in self.chats if c.status != 200]
