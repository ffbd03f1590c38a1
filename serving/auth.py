"""API keys: who is calling chat and feedback, and how often they may.

Off in the local default (bound to 127.0.0.1): every caller is the one principal
``public``. On when a keys file is configured: chat, models and feedback need
``Authorization: Bearer <key>``, and each key is a principal (a tenant or an app) with
rate limits of its own. A configured file that is missing or empty lets nobody in: keys
being on never depends on what the file holds. The admin key is separate and stays so.

A principal vouches for the ``user`` field of its requests: the rater identity the
processor sees is the principal and the user hashed together, so no key can rate as
another key's users, and a feedback token is good only with the key its response was
answered for.

The keys file is JSON, written by ``livealign keys``: for each principal the SHA-256 of its
key (the key itself is shown once, when made, and stored nowhere) and its limits. A
replica reads the file again when it changes, so adding or revoking a key needs no
restart. Rate limits are token buckets per principal and replica: with n replicas a
principal gets up to n times its limit.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from livealign.files import write_private
from serving.tokens import PUBLIC

KEY_PREFIX = "la-"  # so a leaked key is recognisable (secret scanners, logs)
PRINCIPAL_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
Route = Literal["chat", "feedback"]


class KeysFileError(ValueError):
    """The keys file is unreadable or invalid."""


class ApiKey(BaseModel):
    """One principal's key (as its digest) and limits."""

    model_config = ConfigDict(extra="forbid")

    principal: str = Field(pattern=PRINCIPAL_PATTERN, description="Tenant or app name.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the key, hex.")
    chat_per_minute: int = Field(600, ge=1, description="Chat requests a minute.")
    feedback_per_minute: int = Field(
        1200, ge=1, description="Feedback events a minute (each event of a batch counts)."
    )


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = []


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def read_keys(path: Path) -> list[ApiKey]:
    """The file's keys; none when it does not exist. Raises ``KeysFileError`` when invalid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    try:
        keys = KeysFile.model_validate_json(text).keys
    except ValidationError as exc:
        raise KeysFileError(f"{path}: {exc}") from exc
    names = [k.principal for k in keys]
    if len(set(names)) != len(names):
        raise KeysFileError(f"{path}: a principal is named twice")
    return keys


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Atomically, mode 0600 (digests are not keys, but they are not for everyone)."""
    body = KeysFile(keys=keys).model_dump(mode="json")
    write_private(path, (json.dumps(body, indent=2) + "\n").encode())


def add_key(path: Path, principal: str, **limits: int) -> str:
    """Make a key for a new principal, store its digest; the key, to show once."""
    keys = read_keys(path)
    if any(k.principal == principal for k in keys):
        raise KeysFileError(f"principal {principal!r} already has a key (revoke it first)")
    key = new_key()
    try:
        entry = ApiKey(principal=principal, sha256=digest(key), **limits)
    except ValidationError as exc:
        raise KeysFileError(str(exc)) from exc
    write_keys(path, [*keys, entry])
    return key


def revoke_key(path: Path, principal: str) -> None:
    keys = read_keys(path)
    kept = [k for k in keys if k.principal != principal]
    if len(kept) == len(keys):
        raise KeysFileError(f"no key for principal {principal!r}")
    write_keys(path, kept)


# ── Decisions (pure) ─────────────────────────────────────────────────────────────────────


class Refused(Exception):
    """Why a request is not let through: 401 (no or unknown key) or 429 (over the limit)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int = 0) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after_s = status, code, retry_after_s


@dataclass
class Bucket:
    """A token bucket: ``rate_per_minute`` tokens a minute, at most that many saved up."""

    rate_per_minute: int
    tokens: float = -1.0  # full on first use
    at: float = 0.0

    def take(self, n: int, now: float) -> float:
        """Take ``n`` tokens; 0 when taken, else the seconds until they would be there
        (infinite when ``n`` is more than the bucket holds)."""
        capacity, per_s = float(self.rate_per_minute), self.rate_per_minute / 60.0
        if n > capacity:
            return math.inf
        if self.tokens < 0:
            self.tokens, self.at = capacity, now
        self.tokens = min(capacity, self.tokens + max(0.0, now - self.at) * per_s)
        self.at = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / per_s


@dataclass
class KeyRing:
    """The configured keys and each principal's buckets; reads the file again when its
    modification time changes (checked at most every ``reload_s``)."""

    path: Path | None
    reload_s: float = 2.0
    _keys: dict[str, ApiKey] = field(default_factory=dict)  # digest -> key
    _buckets: dict[tuple[str, Route], Bucket] = field(default_factory=dict)
    _stamp: float | None = None
    _checked: float = -1e9
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._reload(force=True)  # a broken file fails the replica's start, loudly

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def authenticate(self, credential: str | None, now: float | None = None) -> str:
        """The principal a bearer credential (the header's value after "Bearer ") is for;
        ``PUBLIC`` while keys are off. Raises ``Refused`` (401)."""
        if self.path is None:
            return PUBLIC
        self._reload(now=now)
        if not credential:
            raise Refused(401, "auth", "send Authorization: Bearer <API key>")
        try:
            sent = credential.encode("latin-1")  # the bytes the client sent in the header
        except UnicodeEncodeError:
            sent = b""
        entry = self._keys.get(hashlib.sha256(sent).hexdigest()) if sent else None
        if entry is None:
            raise Refused(401, "auth", "unknown API key")
        return entry.principal

    def charge(self, principal: str, route: Route, n: int = 1, now: float | None = None) -> None:
        """Count ``n`` requests (or events) of ``principal`` on ``route``; raises
        ``Refused`` (429, with the seconds to wait) over its limit. Unlimited while keys
        are off: the per-rater limits of the processor still apply."""
        entry = next((k for k in self._keys.values() if k.principal == principal), None)
        if entry is None:
            return
        rate = entry.chat_per_minute if route == "chat" else entry.feedback_per_minute
        with self._lock:
            bucket = self._buckets.get((principal, route))
            if bucket is None or bucket.rate_per_minute != rate:
                bucket = self._buckets[(principal, route)] = Bucket(rate)
            wait = bucket.take(n, time.monotonic() if now is None else now)
        if math.isinf(wait):
            raise Refused(
                429,
                "rate_limit_exceeded",
                f"{principal}: {n} events at once are over its {route} limit of {rate} a "
                "minute: send smaller batches",
                retry_after_s=60,
            )
        if wait > 0:
            raise Refused(
                429,
                "rate_limit_exceeded",
                f"{principal}: over its {route} limit of {rate} a minute",
                retry_after_s=max(1, int(wait + 0.999)),
            )

    def _reload(self, force: bool = False, now: float | None = None) -> None:
        if self.path is None:
            return
        now = time.monotonic() if now is None else now
        if not force and now - self._checked < self.reload_s:
            return
        self._checked = now
        try:
            stamp: float | None = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return
        try:
            keys = read_keys(self.path)
        except KeysFileError:
            if force:
                raise
            return  # a half-edited file: keep the keys in force until it is valid again
        with self._lock:
            self._keys = {k.sha256: k for k in keys}
            self._stamp = stamp
