"""Unit tests of the pieces with no server behind them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving import tokens
from serving.feedback import describe
from streaming.events import SCHEMA_DIR, SCHEMAS, FeedbackIn, write_schemas
from streaming.spool import Spool, SpoolFull

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
    assert tokens.hash_user(b"a", "alice") == tokens.hash_user(b"a", "alice")
    assert tokens.hash_user(b"a", "alice") != tokens.hash_user(b"b", "alice")
    assert "alice" not in tokens.hash_user(b"a", "alice")


def _fb(kind: str, value: object) -> FeedbackIn:
    return FeedbackIn.model_validate(
        {"response_id": "r", "feedback_token": "t", "kind": kind, "value": value}
    )


@pytest.mark.parametrize(
    ("kind", "value"),
    [("thumb", 1), ("thumb", -1), ("rating", 3), ("rating", 5.0), ("edit", "x"),
     ("comment", "ok"), ("click", "link"), ("dwell", 0)],
)  # fmt: skip
def test_feedback_values_accepted(kind: str, value: object) -> None:
    assert _fb(kind, value).value == value


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [("thumb", 0, "thumb is +1 or -1"), ("rating", 2.5, "integer from 1 to 5"),
     ("edit", "", "non-empty"), ("click", "hover", "one of copy"), ("dwell", -5, "dwell"),
     ("edit", "x" * 40_000, "at most")],
)  # fmt: skip
def test_feedback_values_refused_with_the_field_named(
    kind: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        _fb(kind, value)
    text = describe(info.value)
    assert text.startswith("value:") and message in text


def test_unknown_kind_names_kind() -> None:
    with pytest.raises(ValidationError) as info:
        _fb("smile", 1)
    assert describe(info.value).startswith("kind:")


def test_committed_json_schemas_match_the_models(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in write_schemas(tmp_path)}
    committed = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    assert fresh == committed, "run `livealign schemas` and commit the result"
    assert len(fresh) == len(SCHEMAS)


def test_spool_keeps_order_survives_reopen_and_is_bounded(tmp_path: Path) -> None:
    spool = Spool.claim(tmp_path, max_bytes=100)
    for i in range(5):
        spool.append("t", f"k{i}".encode(), b"0123456789")
    with pytest.raises(SpoolFull):
        spool.append("t", None, b"x" * 60)
    first = spool.peek(2)
    assert [r.key for r in first] == [b"k0", b"k1"]
    spool.remove(first)
    spool.close()
    reopened = Spool.claim(tmp_path, max_bytes=100)  # the lock was released: same file
    assert [r.key for r in reopened.peek(10)] == [b"k2", b"k3", b"k4"]
    assert reopened.size_bytes == 3 * 12
    second = Spool.claim(tmp_path, max_bytes=100)  # file 0 is held: a fresh one
    assert second.path != reopened.path and len(second) == 0
    reopened.close()
    second.close()
