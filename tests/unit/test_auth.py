"""API keys (serving.auth): the key ring's decisions, and the real app of serving.app with
keys on (fake engine and producer, tests/unit/serving_app.py): who gets in, what a key's
feedback token is good for, whose users are whose, and the rate limits."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from serving import auth, tokens
from tests.unit.serving_app import MODEL, serving
from tests.unit.test_serving_input import HI, Client

# ── The key ring ─────────────────────────────────────────────────────────────────────────


def test_keys_off_every_caller_is_public(tmp_path: Path) -> None:
    ring = auth.KeyRing(None)
    assert not ring.enabled
    assert ring.authenticate(None) == ring.authenticate("anything") == tokens.PUBLIC
    for _ in range(10_000):
        ring.charge(tokens.PUBLIC, "chat")  # no limit of its own: the processor's apply


def test_a_key_is_shown_once_and_stored_as_its_digest_only(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    key = auth.add_key(path, "acme", chat_per_minute=5)
    assert key.startswith(auth.KEY_PREFIX) and key not in path.read_text()
    assert auth.digest(key) in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.KeyRing(path).authenticate(key) == "acme"
    with pytest.raises(auth.KeysFileError, match="already"):
        auth.add_key(path, "acme")
    with pytest.raises(auth.KeysFileError):
        auth.add_key(path, "Not A Name")


@pytest.mark.parametrize("sent", [None, "", "la-unknown", "la-\u00e9\u0442", "\x00"])
def test_no_or_an_unknown_or_non_ascii_key_is_a_401(tmp_path: Path, sent: str | None) -> None:
    path = tmp_path / "api_keys.json"
    auth.add_key(path, "acme")
    with pytest.raises(auth.Refused) as refused:
        auth.KeyRing(path).authenticate(sent)
    assert refused.value.status == 401


def test_keys_on_with_no_file_lets_nobody_in(tmp_path: Path) -> None:
    ring = auth.KeyRing(tmp_path / "missing.json")
    assert ring.enabled
    with pytest.raises(auth.Refused):
        ring.authenticate("la-anything")


def test_a_new_or_revoked_key_takes_effect_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    ring = auth.KeyRing(path, reload_s=0.0)
    key = auth.add_key(path, "acme")
    assert ring.authenticate(key) == "acme"
    auth.revoke_key(path, "acme")
    with pytest.raises(auth.Refused):
        ring.authenticate(key)


def test_a_broken_file_keeps_the_keys_in_force_but_fails_a_start(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    key = auth.add_key(path, "acme")
    ring = auth.KeyRing(path, reload_s=0.0)
    path.write_text('{"keys": [{"principal": "acme"')  # half written by hand
    assert ring.authenticate(key) == "acme"
    with pytest.raises(auth.KeysFileError):
        auth.KeyRing(path)


def test_rate_limit_is_a_token_bucket_per_principal_and_route(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    auth.add_key(path, "acme", chat_per_minute=3, feedback_per_minute=60)
    auth.add_key(path, "other", chat_per_minute=3)
    ring = auth.KeyRing(path)
    for _ in range(3):
        ring.charge("acme", "chat", now=100.0)
    with pytest.raises(auth.Refused) as over:
        ring.charge("acme", "chat", now=100.0)
    assert (over.value.status, over.value.retry_after_s) == (429, 20)  # one token per 20 s
    ring.charge("other", "chat", now=100.0)  # another principal's bucket
    ring.charge("acme", "feedback", n=60, now=100.0)  # another route's
    ring.charge("acme", "chat", now=120.0)  # refilled
    with pytest.raises(auth.Refused):
        ring.charge("acme", "feedback", n=61, now=200.0)  # more than it can ever hold


# ── The app with keys on ─────────────────────────────────────────────────────────────────


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "api_keys.json"
    return {
        "acme": auth.add_key(path, "acme"),
        "other": auth.add_key(path, "other", chat_per_minute=2, feedback_per_minute=3),
    }


@pytest.fixture
def served(tmp_path: Path, keys: dict[str, str]) -> Any:
    with serving(tmp_path, api_keys_file=tmp_path / "api_keys.json") as server:
        yield server


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(key: str | None, user: str = "alice") -> Any:
    headers = bearer(key) if key else None
    body = {"model": MODEL, "messages": HI, "user": user}
    return Client().request("POST", "/v1/chat/completions", json=body, headers=headers)


def thumb(key: str, answer: dict[str, Any], event_id: str) -> Any:
    info = answer["livealign"]
    body = {"response_id": info["response_id"], "feedback_token": info["feedback_token"],
            "kind": "thumb", "value": 1, "event_id": event_id}  # fmt: skip
    return Client().request("POST", "/v1/feedback", json=body, headers=bearer(key))


def test_chat_models_and_feedback_need_a_key(served: Any, keys: dict[str, str]) -> None:
    for r in (
        chat(None),
        chat("la-wrong"),
        Client().request("GET", "/v1/models"),
        Client().request("POST", "/v1/feedback", json={}),
    ):
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "auth"
    assert Client().request("GET", "/v1/models", headers=bearer(keys["acme"])).status_code == 200
    assert Client().request("GET", "/healthz").status_code == 200  # no user content: open
    assert served.producer.sent == []  # nothing of a refused request went anywhere


def test_a_feedback_token_is_good_only_with_the_key_it_was_issued_to(
    served: Any, keys: dict[str, str]
) -> None:
    answer = chat(keys["acme"]).json()
    stolen = thumb(keys["other"], answer, "fb-stolen")
    assert stolen.status_code == 403 and "another API key" in stolen.text
    assert thumb(keys["acme"], answer, "fb-own").status_code == 202
    sent = [e for topic, _, e in served.producer.sent if topic.endswith("feedback")]
    assert [(e.event_id, e.principal) for e in sent] == [("fb-own", "acme")]
    logged = [e for topic, _, e in served.producer.sent if topic.endswith("interactions")]
    assert [e.principal for e in logged] == ["acme"]  # for coordination's principal share


def test_the_same_user_under_two_keys_is_two_raters(served: Any, keys: dict[str, str]) -> None:
    chat(keys["acme"], user="alice")
    chat(keys["other"], user="alice")
    chat(keys["acme"], user="alice")
    hashes = [e.user_hash for topic, _, e in served.producer.sent if topic.endswith("interactions")]
    assert hashes[0] == hashes[2] != hashes[1]
    assert "alice" not in "".join(hashes)


def test_over_its_limit_a_key_gets_429_and_the_others_do_not(
    served: Any, keys: dict[str, str]
) -> None:
    answers = [chat(keys["other"]) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    over = chat(keys["other"])
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    assert over.json()["error"]["type"] == "rate_limit_error"
    assert chat(keys["acme"]).status_code == 200
    # Feedback counts each event of a batch: 3 a minute, so a batch of 4 is refused whole.
    info = answers[0].json()["livealign"]
    batch = [{"response_id": info["response_id"], "feedback_token": info["feedback_token"],
              "kind": "dwell", "value": 1000 + i} for i in range(4)]  # fmt: skip
    r = Client().request(
        "POST", "/v1/feedback", json={"events": batch}, headers=bearer(keys["other"])
    )
    assert r.status_code == 429, r.text
