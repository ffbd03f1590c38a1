"""Sticky canary assignment: a key keeps its arm, a raised weight only adds keys, the
share follows the weight, and each canary takes its own slice."""

from __future__ import annotations

import itertools
import math

import pytest

from serving.canary.assign import BUCKETS, bucket, canary_buckets, on_canary, unit_key

SECRET = b"server-salt"
CANARY = "livealign@7"
KEYS = [unit_key("conversation", f"conv-{i}", None) for i in range(20_000)]


def canary_keys(weight: float, canary: str = CANARY, secret: bytes = SECRET) -> set[str]:
    return {key for key in KEYS if on_canary(secret, canary, key, weight)}


def test_a_key_always_gets_the_same_bucket() -> None:
    first = [bucket(SECRET, CANARY, key) for key in KEYS[:500]]
    assert first == [bucket(SECRET, CANARY, key) for key in KEYS[:500]]
    assert all(0 <= b < BUCKETS for b in first)


def test_raising_the_weight_only_adds_keys() -> None:
    steps = [0.05, 0.10, 0.25, 0.50, 1.0]
    arms = [canary_keys(w) for w in steps]
    for smaller, larger in itertools.pairwise(arms):
        assert smaller <= larger
    assert arms[-1] == set(KEYS)
    assert canary_keys(0.0) == set()


@pytest.mark.parametrize("weight", [0.05, 0.10, 0.25, 0.50])
def test_the_canary_share_follows_the_weight(weight: float) -> None:
    n = len(KEYS)
    share = len(canary_keys(weight)) / n
    # Four binomial standard deviations: a false failure about once in 16,000 runs.
    assert abs(share - weight) < 4 * math.sqrt(weight * (1 - weight) / n)


def test_each_canary_and_each_secret_take_another_slice() -> None:
    slice_7 = canary_keys(0.10)
    for other in (canary_keys(0.10, canary="livealign@8"), canary_keys(0.10, secret=b"x")):
        overlap = len(slice_7 & other) / len(slice_7)
        # Independent slices overlap by about the weight (10%), not wholesale.
        assert overlap < 0.15


def test_the_weight_is_rounded_to_whole_buckets() -> None:
    assert canary_buckets(0.05) == 500 and canary_buckets(1.0) == BUCKETS
    assert canary_buckets(0.00004) == 0 and canary_buckets(0.00006) == 1


def test_user_unit_keeps_a_user_on_one_arm_across_conversations() -> None:
    keys = {unit_key("user", f"conv-{i}", "user-abc") for i in range(50)}
    assert keys == {"user:user-abc"}
    # Without a user, or with the conversation unit, each conversation is its own unit.
    assert unit_key("user", "conv-1", None) == unit_key("conversation", "conv-1", None)
    assert unit_key("conversation", "conv-1", "user-abc") == "conversation:conv-1"
    # A user and a conversation with the same text are different units.
    assert unit_key("user", "x", "abc") != unit_key("conversation", "abc", None)


def test_users_are_spread_like_conversations() -> None:
    users = [unit_key("user", "conv", f"user-{i}") for i in range(20_000)]
    share = sum(on_canary(SECRET, CANARY, key, 0.25) for key in users) / len(users)
    assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(users))
