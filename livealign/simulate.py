"""Drive a running LiveAlign like a population of real users would: public HTTP API only.

Each simulated chat: a user (``livealign.users``) asks a prompt from the shipped set,
reads the answer, and reacts with whatever feedback their hidden preference and the
configured rates give (sent with the answer's feedback token, one batch per answer). A
"regenerate" click asks for a new answer to the same prompt in the same conversation,
and the user reacts to that one too: the processor pairs the two siblings.

    livealign simulate --chats 200 --family concise=0.7 --family list=0.3
"""

from __future__ import annotations

import asyncio
import random
import statistics
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, Field

from livealign.prompts import Prompt, load_prompts, split
from livealign.users import Action, PopulationConfig, SimUser, make_users
from streaming.kinds import FeedbackKind


class SimulationConfig(BaseModel):
    """One simulation run against one endpoint."""

    url: str = Field("http://127.0.0.1:8000", description="Base URL of the LiveAlign API.")
    model: str = Field("livealign", description="Model name sent with each chat.")
    users: int = Field(100, ge=1, description="Simulated users (each chats as its own `user`).")
    concurrency: int = Field(4, ge=1, le=64, description="Chats in flight at once.")
    max_tokens: int = Field(64, ge=1, description="Answer length limit of each chat.")
    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature of chats.")
    seed: int = Field(0, description="Seeds users, prompt choice and behaviour.")
    held_out_fraction: float = Field(
        0.1, ge=0, lt=1, description="Prompts kept out of the simulation, for evaluation."
    )
    timeout_s: float = Field(300.0, gt=0, description="Timeout of each HTTP call.")
    api_key: str | None = Field(None, description="API key sent with every call, if needed.")
    population: PopulationConfig = Field(default_factory=PopulationConfig)


@dataclass
class SimStats:
    """What one run did: chats, feedback sent by kind, and the users' hidden utility of
    the answers they got, by the adapter version that served them."""

    chats: int = 0
    regenerations: int = 0
    errors: int = 0
    accepted: int = 0
    rejected: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    utility: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def mean_utility(self) -> dict[str, float]:
        return {adapter: statistics.fmean(u) for adapter, u in self.utility.items() if u}

    def summary(self) -> dict[str, Any]:
        return {
            "chats": self.chats,
            "regenerations": self.regenerations,
            "errors": self.errors,
            "feedback_accepted": self.accepted,
            "feedback_rejected": self.rejected,
            "sent": dict(self.sent),
            "mean_utility": {k: round(v, 3) for k, v in self.mean_utility().items()},
        }


Progress = Callable[[SimStats], None]


class Simulator:
    """Runs chats in batches (`run` may be called again; chat numbering continues)."""

    def __init__(self, config: SimulationConfig, prompts: list[Prompt] | None = None) -> None:
        self.config = config
        train, _ = split(prompts or load_prompts(), config.held_out_fraction)
        if not train:
            raise ValueError("no training prompts left after the held-out split")
        self.prompts = train
        self.users = make_users(config.users, config.population, config.seed)
        self._next_chat = 0

    async def run(
        self, chats: int, progress: Progress | None = None, client: httpx.AsyncClient | None = None
    ) -> SimStats:
        stats = SimStats()
        first, self._next_chat = self._next_chat, self._next_chat + chats
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=chats)
        for i in range(first, first + chats):
            queue.put_nowait(i)

        async def worker(http: httpx.AsyncClient) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    await self._session(http, i, stats)
                except (httpx.HTTPError, KeyError, ValueError):
                    stats.errors += 1
                if progress is not None:
                    progress(stats)

        if client is not None:
            await asyncio.gather(*(worker(client) for _ in range(self.config.concurrency)))
            return stats
        limits = httpx.Limits(max_connections=self.config.concurrency)
        key = self.config.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else None
        async with httpx.AsyncClient(
            base_url=self.config.url, timeout=self.config.timeout_s, limits=limits, headers=headers
        ) as http:
            await asyncio.gather(*(worker(http) for _ in range(self.config.concurrency)))
        return stats

    async def _session(self, http: httpx.AsyncClient, i: int, stats: SimStats) -> None:
        """One user, one prompt; at most one regeneration."""
        rng = random.Random(f"{self.config.seed}-{i}")  # same choices whatever the ordering
        user = self.users[rng.randrange(len(self.users))]
        prompt = rng.choice(self.prompts)
        conversation = f"sim-{self.config.seed}-{i}"
        for attempt in range(2):
            # Sampling seeded per chat (a regeneration gets its own): runs with the same
            # seed get the same answers, so modes compare on the same feedback stream.
            seed = zlib.crc32(f"{self.config.seed}-{i}-{attempt}".encode())
            answer, info = await self._chat(http, user, prompt.text, conversation, seed)
            stats.chats += 1
            stats.regenerations += attempt
            population = self.config.population
            stats.utility[info["adapter"] or "base"].append(
                user.utility(answer, population, prompt.text)
            )
            actions = user.react(answer, population, rng, attempt == 0, prompt.text)
            await self._feedback(http, info, actions, stats)
            if Action(FeedbackKind.click, "regenerate") not in actions:
                return

    async def _chat(
        self, http: httpx.AsyncClient, user: SimUser, text: str, conversation: str, seed: int
    ) -> tuple[str, dict[str, Any]]:
        body = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "seed": seed,
            "user": user.user_id,
            "conversation_id": conversation,
        }
        r = await http.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        data = r.json()
        return data["choices"][0]["message"]["content"], data["livealign"]

    async def _feedback(
        self, http: httpx.AsyncClient, info: dict[str, Any], actions: list[Action], stats: SimStats
    ) -> None:
        if not actions:
            return
        events = [
            {
                "response_id": info["response_id"],
                "feedback_token": info["feedback_token"],
                "kind": a.kind.value,
                "value": a.value,
                # Stable ids: a retried batch is deduplicated, not counted twice.
                "event_id": f"{info['response_id']}:{n}",
            }
            for n, a in enumerate(actions)
        ]
        for attempt in range(3):  # 503 = spool full, try again later with the same ids
            r = await http.post("/v1/feedback", json={"events": events})
            if r.status_code != 503 or attempt == 2:
                break
            await asyncio.sleep(1.0 + attempt)
        if r.status_code != 202:  # 202: at least one accepted, the others listed
            stats.rejected += len(events)
            return
        accepted = len(r.json().get("accepted", []))
        stats.accepted += accepted
        stats.rejected += len(events) - accepted
        stats.sent.update(
            a.kind.value if a.kind is not FeedbackKind.click else f"click:{a.value}"
            for a in actions
        )


async def answers(
    url: str,
    prompts: list[Prompt],
    max_tokens: int,
    concurrency: int = 4,
    model: str = "livealign",
    timeout_s: float = 300.0,
) -> list[tuple[str, str]]:
    """Greedy answers of the model now served to `prompts`, as (answer, adapter): how the
    benchmark looks at one adapter version. Sent as an evaluator, not a user: no feedback."""
    sem = asyncio.Semaphore(concurrency)

    async def one(http: httpx.AsyncClient, prompt: Prompt) -> tuple[str, str]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt.text}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "user": "evaluator",
            "conversation_id": f"eval-{prompt.id}",
        }
        async with sem:
            r = await http.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        data = r.json()
        return data["choices"][0]["message"]["content"], data["livealign"]["adapter"] or "base"

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as http:
        return list(await asyncio.gather(*(one(http, p) for p in prompts)))


def outcomes(
    candidate: list[float], baseline: list[float], tie: float = 0.02
) -> tuple[int, int, int]:
    """(wins, ties, losses) of the candidate's answers against the baseline's, prompt by
    prompt: a win is a score more than `tie` above the baseline's."""
    if len(candidate) != len(baseline) or not candidate:
        raise ValueError("win_rate needs two equally long, non-empty score lists")
    pairs = list(zip(candidate, baseline, strict=True))
    wins = sum(c > b + tie for c, b in pairs)
    ties = sum(abs(c - b) <= tie for c, b in pairs)
    return wins, ties, len(pairs) - wins - ties


def win_rate(candidate: list[float], baseline: list[float], tie: float = 0.02) -> float:
    """Share of prompts where the candidate's answer beats the baseline's (ties: half)."""
    wins, ties, _ = outcomes(candidate, baseline, tie)
    return (wins + ties / 2) / len(candidate)
