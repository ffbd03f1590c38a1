"""Sticky canary assignment: which arm a conversation (or a user) is on. Pure.

A unit's key is hashed into one of ``BUCKETS`` buckets; the canary serves the buckets
below ``round(weight * BUCKETS)``. So a key keeps its arm for as long as the weight
stays, and raising the weight only adds buckets: nobody on the canary is sent back to
stable by a promotion, which would mix both versions into one conversation.

The hash is keyed with the server's secret and the canary's ref: while one canary is on
trial its assignment never changes, and each new canary takes another slice of the users
(never the same guinea pigs each time). The secret keeps the slice unpredictable from
outside, so nobody can choose ids that land on the canary (or avoid it).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

BUCKETS = 10_000
Unit = Literal["conversation", "user"]


def unit_key(unit: Unit, conversation_id: str, user_hash: str | None) -> str:
    """What is assigned: the (hashed) user when the unit is "user" and the request names
    one, else the conversation. Prefixed, so a user and a conversation never share a key."""
    if unit == "user" and user_hash is not None:
        return f"user:{user_hash}"
    return f"conversation:{conversation_id}"


def bucket(secret: bytes, canary: str, key: str) -> int:
    """The key's bucket in [0, BUCKETS) for this canary (HMAC-SHA256: stable across
    processes and replicas, unlike Python's salted ``hash()``)."""
    digest = hmac.new(secret, f"{canary}\n{key}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS  # 2**64 % BUCKETS: bias ~1e-15


def canary_buckets(weight: float) -> int:
    """How many buckets the canary serves at ``weight``."""
    return round(weight * BUCKETS)


def on_canary(secret: bytes, canary: str, key: str, weight: float) -> bool:
    """Whether ``key`` is served by ``canary`` at ``weight``."""
    return bucket(secret, canary, key) < canary_buckets(weight)
