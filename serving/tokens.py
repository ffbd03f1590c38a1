"""Feedback tokens: proof that the sender received the response it rates.

A token is ``<payload>.<signature>``: the payload (base64url JSON) carries the
conversation id, the hashed user, the API-key principal the response was answered for
and the expiry; the signature is an HMAC-SHA256 with
the server secret over the response id and that payload. The response id is not in the
token, so a token lifted from one response is worthless for another. Stateless: any
replica can verify any token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass

# What ``issue`` makes: two base64url parts. Anything else (non-ASCII included) is refused
# before it reaches a comparison.
PUBLIC = "public"  # the principal of every caller while API keys are off (serving.auth)

TOKEN_FORM = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class TokenError(ValueError):
    """The token is malformed, forged, for another response, or expired."""


@dataclass(frozen=True)
class TokenClaims:
    conversation_id: str
    user_hash: str | None
    expires_at: int
    principal: str = PUBLIC  # tokens made before keys existed name none


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, response_id: str, payload: str) -> str:
    mac = hmac.new(secret, f"{response_id}\n{payload}".encode(), hashlib.sha256)
    return _b64(mac.digest())


def issue(
    secret: bytes,
    response_id: str,
    conversation_id: str,
    user_hash: str | None,
    ttl_s: int,
    principal: str = PUBLIC,
    now: float | None = None,
) -> str:
    expires_at = int((now if now is not None else time.time()) + ttl_s)
    claims = {"c": conversation_id, "u": user_hash, "e": expires_at, "p": principal}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload}.{_sign(secret, response_id, payload)}"


def verify(secret: bytes, response_id: str, token: str, now: float | None = None) -> TokenClaims:
    """Return the token's claims, or raise ``TokenError`` saying why not."""
    if not TOKEN_FORM.fullmatch(token):
        raise TokenError("feedback_token is malformed")
    payload, _, signature = token.partition(".")
    if not hmac.compare_digest(signature.encode(), _sign(secret, response_id, payload).encode()):
        raise TokenError("feedback_token does not match this response_id")
    try:
        claims = json.loads(_unb64(payload))
        result = TokenClaims(
            str(claims["c"]), claims.get("u"), int(claims["e"]), str(claims.get("p", PUBLIC))
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TokenError("feedback_token is malformed") from exc
    if result.expires_at < (now if now is not None else time.time()):
        raise TokenError("feedback_token has expired")
    return result


def hash_user(salt: bytes, principal: str, user: str) -> str:
    """A stable pseudonym for the OpenAI ``user`` field as vouched for by ``principal``
    (the API key's; a principal name has no NUL): the raw value never leaves, and two keys
    naming the same user are two raters."""
    return hmac.new(salt, f"{principal}\0{user}".encode(), hashlib.sha256).hexdigest()[:32]


def same_secret(given: str | None, secret: str) -> bool:
    """Whether a credential a client sent (a header value) is ``secret``, in constant time.

    On bytes: ``hmac.compare_digest`` refuses a str with non-ASCII characters. A header
    value arrives decoded as Latin-1, so encoding it back gives the bytes the client sent.
    """
    if not given:
        return False
    try:
        sent = given.encode("latin-1")
    except UnicodeEncodeError:  # not from a header: no client could have sent it
        return False
    return hmac.compare_digest(sent, secret.encode())
