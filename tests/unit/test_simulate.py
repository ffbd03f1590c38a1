"""Simulated users behave as configured (rates, noise, hidden preference, adversaries),
and the simulator drives only the public API correctly (checked on a fake endpoint). The
short learning run on the real stack is tests/integration/test_simulate_learning_run.py."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import httpx
import pytest

from livealign.prompts import load_prompts, split
from livealign.simulate import SimulationConfig, Simulator, win_rate
from livealign.users import (
    FAMILIES,
    PopulationConfig,
    SimUser,
    judge,
    make_users,
    rewrite,
    score,
)

LONG = " ".join(["This answer keeps going with many more words than anyone needs."] * 8)
SHORT = "Keep it in a glass of water."
PASTA = (
    "Sure, first boil a large pot of salted water. Then add the pasta and stir it. Cook it "
    "for about ten minutes, tasting now and then. Drain it, keep a cup of the water, and "
    "toss the pasta with your sauce. Serve it hot with cheese."
)
LISTED = "Try these:\n- water it\n- give it light\n- trim the tips"


def reactions(user: SimUser, text: str, config: PopulationConfig, n: int) -> Counter[str]:
    rng = random.Random(7)
    seen: Counter[str] = Counter()
    for _ in range(n):
        for action in user.react(text, config, rng):
            seen[action.kind if action.kind != "click" else f"click:{action.value}"] += 1
    return seen


# ---- the users ---------------------------------------------------------------------------


def test_families_score_what_they_say_and_edits_move_toward_them() -> None:
    config = PopulationConfig(phrase="sure")
    assert score("concise", SHORT, config) == 1.0 > score("concise", LONG, config) == 0.0
    assert score("list", LISTED, config) == 1.0 > score("list", SHORT, config) == 0.0
    assert score("avoid_phrase", "Sure, here it is.", config) == 0.0
    assert score("avoid_phrase", "Measure twice.", config) == 1.0  # a word, not a substring
    assert score("warm", "Happy to help! Enjoy.", config) > score("warm", SHORT, config)
    for family in FAMILIES:  # (the benchmark's families on real answers: test_families.py)
        text = PASTA
        assert score(family, rewrite(family, text, config), config) > score(family, text, config)


def test_noise_and_off_topic_answers_are_worth_little() -> None:
    config = PopulationConfig()
    prompt = "How do I keep basil fresh?"
    assert score("concise", "Keep basil in a glass of water.", config, prompt) == 1.0
    assert score("concise", "1. 1. 1. 1. 1. 1.", config, prompt) == 0.0  # repeats itself
    assert score("concise", "I am a happy robot today.", config, prompt) == pytest.approx(0.4)
    assert judge("1. 1. 1. 1. 1. 1.", config, prompt) == 0.0


def test_judge_mixes_families_by_share() -> None:
    config = PopulationConfig(families={"concise": 3.0, "list": 1.0})
    assert judge(SHORT, config) == pytest.approx(0.75)
    assert judge(LONG, config) == 0.0


def test_feedback_rates_follow_the_configuration() -> None:
    config = PopulationConfig(noise=0.0, explicit_rate=0.05, comment_rate=0.02, dwell_rate=0.8,
                              copy_rate=0.4, regenerate_rate=0.3, edit_rate=0.5)  # fmt: skip
    user, n = SimUser("u", "concise"), 4000
    liked, disliked = reactions(user, SHORT, config, n), reactions(user, LONG, config, n)
    explicit = (liked["thumb"] + liked["rating"]) / n
    assert 0.035 < explicit < 0.065  # 5% +- 3 sigma
    assert 0.75 < liked["dwell"] / n < 0.85
    assert 0.013 < liked["comment"] / n < 0.027
    # Pleased users copy, displeased ones regenerate and edit (edits only when displeased).
    assert 0.36 < liked["click:copy"] / n < 0.44 and disliked["click:copy"] == 0
    assert 0.26 < disliked["click:regenerate"] / n < 0.34 and liked["click:regenerate"] == 0
    assert 0.45 < disliked["edit"] / n < 0.55 and liked["edit"] == 0


def test_noise_and_preference_shape_votes_and_dwell() -> None:
    rng = random.Random(3)
    exact = PopulationConfig(noise=0.0, explicit_rate=1.0, thumb_share=1.0)
    user = SimUser("u", "concise")
    assert {a.value for a in user.react(SHORT, exact, rng) if a.kind == "thumb"} == {1}
    assert {a.value for a in user.react(LONG, exact, rng) if a.kind == "thumb"} == {-1}
    noisy = exact.model_copy(update={"noise": 1.0})
    votes = [
        a.value for _ in range(400) for a in user.react(SHORT, noisy, rng) if a.kind == "thumb"
    ]
    assert 0.05 < votes.count(-1) / len(votes) < 0.5  # noise flips some, not most
    dwell = exact.model_copy(update={"dwell_rate": 1.0})

    def mean_dwell(text: str) -> float:
        values = [
            a.value for _ in range(300) for a in user.react(text, dwell, rng) if a.kind == "dwell"
        ]
        return sum(float(v) for v in values) / len(values)

    assert mean_dwell(SHORT) > 3 * mean_dwell(LONG)


def test_adversaries_vote_against_the_preference_and_read_nothing() -> None:
    config = PopulationConfig(noise=0.0, adversarial_share=0.2, adversarial_vote_rate=1.0,
                              thumb_share=1.0)  # fmt: skip
    users = make_users(200, config, seed=1)
    bad = [u for u in users if u.adversary]
    assert len(bad) == 40 and {u.adversary for u in bad} == {"inverted"}
    actions = bad[0].react(SHORT, config, random.Random(0))
    assert [(a.kind, a.value) for a in actions] == [("thumb", -1)]  # inverted, no dwell
    coin = PopulationConfig(adversary="random", adversarial_vote_rate=1.0, thumb_share=1.0)
    rng = random.Random(0)
    votes = [SimUser("r", "concise", "random").react(SHORT, coin, rng)[0].value for _ in range(400)]
    assert 0.4 < votes.count(1) / 400 < 0.6
    assert make_users(50, config, seed=1) == make_users(50, config, seed=1)  # deterministic


def test_win_rate_counts_ties_as_half() -> None:
    assert win_rate([1.0, 0.0, 0.5], [0.0, 1.0, 0.5]) == pytest.approx(0.5)
    assert win_rate([1.0, 1.0], [0.0, 0.99]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        win_rate([], [])


# ---- the simulator on a fake endpoint -------------------------------------------------------


class FakeLiveAlign:
    """Chat answers alternate long and short; feedback is accepted and recorded."""

    def __init__(self) -> None:
        self.chats: list[dict[str, Any]] = []
        self.feedback: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/v1/chat/completions":
            n = len(self.chats)
            self.chats.append(body)
            rid = f"chatcmpl-{n}"
            answer = LONG if n % 2 == 0 else SHORT
            info = {"response_id": rid, "conversation_id": body["conversation_id"],
                    "adapter": None, "feedback_token": f"token-{rid}"}  # fmt: skip
            return httpx.Response(
                200, json={"choices": [{"message": {"content": answer}}], "livealign": info}
            )
        assert request.url.path == "/v1/feedback"
        for event in body["events"]:
            assert event["feedback_token"] == f"token-{event['response_id']}"
            self.feedback.append(event)
        return httpx.Response(202, json={"accepted": [e["event_id"] for e in body["events"]]})


def test_simulator_drives_chat_and_feedback_through_the_api() -> None:
    fake = FakeLiveAlign()
    population = PopulationConfig(explicit_rate=0.5, edit_rate=0.5, regenerate_rate=0.9,
                                  adversarial_share=0.0)  # fmt: skip
    config = SimulationConfig(users=10, concurrency=3, population=population, seed=5)
    sim = Simulator(config)
    seen: list[int] = []

    async def run() -> Any:
        transport = httpx.MockTransport(fake)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as http:
            return await sim.run(40, progress=lambda s: seen.append(s.chats), client=http)

    stats = asyncio.run(run())
    assert stats.errors == 0 and len(seen) == 40  # progress after every session
    assert stats.chats == len(fake.chats) == 40 + stats.regenerations > 40
    assert stats.accepted == len(fake.feedback) == sum(stats.sent.values())
    # Every chat speaks as one of the users, in its own conversation, on a training prompt.
    user_ids = {u.user_id for u in sim.users}
    _, held_out = split(load_prompts(), config.held_out_fraction)
    held_texts = {p.text for p in held_out}
    for chat in fake.chats:
        assert chat["user"] in user_ids and chat["conversation_id"].startswith("sim-5-")
        assert chat["messages"][0]["content"] not in held_texts
    # A regenerate click is followed by a second answer to the same prompt, same conversation.
    by_conv: dict[str, list[dict[str, Any]]] = {}
    for chat in fake.chats:
        by_conv.setdefault(chat["conversation_id"], []).append(chat)
    regenerated = [c for c in by_conv.values() if len(c) == 2]
    assert len(regenerated) == stats.regenerations and all(
        a["messages"] == b["messages"] and a["user"] == b["user"] for a, b in regenerated
    )
    assert len({e["event_id"] for e in fake.feedback}) == len(fake.feedback)
    assert all(len(c) <= 2 for c in by_conv.values())
    # Sampling is seeded per chat, a regeneration with a seed of its own.
    assert len({c["seed"] for c in fake.chats}) == len(fake.chats)
    # The hidden preference shows: the short answers got the copies, the long ones the edits.
    kinds = Counter((e["kind"], e["value"] if e["kind"] == "click" else None,
                     int(e["response_id"].split("-")[1]) % 2) for e in fake.feedback)  # fmt: skip
    assert kinds[("click", "copy", 1)] > kinds[("click", "copy", 0)]
    assert kinds[("edit", None, 0)] > 0 and kinds[("edit", None, 1)] == 0
    # Calling run again continues the numbering: no conversation id is reused.
    asyncio.run(run())
    assert len({c["conversation_id"] for c in fake.chats}) == 80
    # The same configuration again asks the same chats with the same seeds.
    first_run = sorted((c["conversation_id"], c["seed"]) for c in fake.chats[: stats.chats])
    fake.chats.clear()
    sim = Simulator(config)
    asyncio.run(run())
    assert sorted((c["conversation_id"], c["seed"]) for c in fake.chats) == first_run
