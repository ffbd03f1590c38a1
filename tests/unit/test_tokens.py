"""serving.tokens: feedback tokens (issued, verified, every refusal) and salted user hashes."""

from __future__ import annotations

import json
import time

import pytest

from serving import tokens

SECRET = b"s3cret"


def test_token_round_trip_and_every_refusal() -> None:
    t = tokens.issue(SECRET, "resp-1", "conv-1", "u1", ttl_s=60)
    claims = tokens.verify(SECRET, "resp-1", t)
    assert (claims.conversation_id, claims.user_hash) == ("conv-1", "u1")
    with pytest.raises(tokens.TokenError, match="does not match"):
        tokens.verify(SECRET, "resp-2", t)
    with pytest.raises(tokens.TokenError, match="does not match"):
        tokens.verify(b"other", "resp-1", t)
    _, sig = t.split(".")
    tampered = tokens._b64(json.dumps({"c": "conv-X", "u": "u1", "e": 9e12}).encode())
    with pytest.raises(tokens.TokenError):
        tokens.verify(SECRET, "resp-1", f"{tampered}.{sig}")
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(SECRET, "resp-1", t, now=time.time() + 61)
    with pytest.raises(tokens.TokenError, match="malformed"):
        tokens.verify(SECRET, "resp-1", "no-dot")


def test_user_hash_is_stable_and_salted() -> None:
    assert tokens.hash_user(b"a", "acme", "alice") == tokens.hash_user(b"a", "acme", "alice")
    assert tokens.hash_user(b"a", "acme", "alice") != tokens.hash_user(b"b", "acme", "alice")
    assert tokens.hash_user(b"a", "acme", "alice") != tokens.hash_user(b"a", "other", "alice")
    assert "alice" not in tokens.hash_user(b"a", "acme", "alice")
