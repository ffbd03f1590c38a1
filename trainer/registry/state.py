"""Stable/canary state: state.json, which says what serving runs, and its history.

state.json holds the stable and canary refs and an append-only history of every change.
Changes are made under the root lock and written atomically (temp file, fsync, rename),
so a reader sees the old state or the new one, never half of either.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from trainer.registry.errors import RegistryError, describe_invalid
from trainer.registry.files import fsync_dir, locked, write_durably
from trainer.registry.versions import Manifest

log = logging.getLogger(__package__)  # "trainer.registry": one logger for the whole package

STATE = "state.json"
STATE_TEMP_PREFIX = ".state-"


class StateChange(BaseModel):
    """One entry of the state history."""

    ts_ms: int = Field(description="When the change was made (epoch ms).")
    action: str = Field(description='What was done, e.g. "canary", "promote", "rollback".')
    ref: str | None = Field(description="The version the change is about.")
    reason: str = Field(default="", description="Why, in words (for humans and audits).")
    stable: str | None = Field(default=None, description="Stable ref after the change.")
    canary: str | None = Field(default=None, description="Canary ref after the change.")


class RegistryState(BaseModel):
    """state.json: what serving should run."""

    stable: str | None = Field(default=None, description="Ref serving answers with by default.")
    canary: str | None = Field(default=None, description="Ref under canary test, if any.")
    history: list[StateChange] = Field(
        default_factory=list, description="Every change, oldest first; append-only."
    )


class StateMixin(ABC):
    """Reads and changes state.json; mixed into Registry, which gives it root, name and get()."""

    root: Path
    name: str

    @abstractmethod
    def get(self, ref: str) -> Manifest:
        """Manifest of an existing version (UnknownVersion otherwise): see VersionStore.get."""

    def state(self) -> RegistryState:
        """Current state.json; an empty state if none was written yet."""
        path = self.root / STATE
        try:
            return RegistryState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return RegistryState()
        except OSError as e:
            raise RegistryError(f"{path} unreadable: {e}") from e
        except ValidationError as e:
            # Never reset silently: that would forget which version is stable.
            raise RegistryError(f"{path} invalid: {describe_invalid(e)}") from e

    def _existing(self, ref: str | None) -> str | None:
        return None if ref is None else self.get(ref).ref

    def set_state(
        self,
        *,
        stable: str | Literal["keep"] | None = "keep",
        canary: str | Literal["keep"] | None = "keep",
        action: str,
        reason: str = "",
    ) -> RegistryState:
        """Change stable and/or canary ("keep" leaves one as is) and append to the history.

        Refs must exist (plain "N" is accepted and stored as "name@N"). Promoting the canary
        to stable while leaving `canary` as "keep" clears the canary.
        """
        if not action:
            raise ValueError("action must be a non-empty string")
        with locked(self.root):
            new = self._next_state(self.state(), stable, canary, action, reason)
            self._write_state(new)
        log.info("registry %s: %s stable=%s canary=%s", self.name, action, new.stable, new.canary)
        return new

    def _next_state(
        self,
        old: RegistryState,
        stable: str | Literal["keep"] | None,
        canary: str | Literal["keep"] | None,
        action: str,
        reason: str,
    ) -> RegistryState:
        """`old` with the change applied and recorded in the history (caller holds the lock)."""
        new_stable = old.stable if stable == "keep" else self._existing(stable)
        new_canary = old.canary if canary == "keep" else self._existing(canary)
        if new_canary is not None and new_canary == new_stable:
            if canary != "keep":
                raise RegistryError(f"{new_canary} cannot be both stable and canary")
            new_canary = None  # the canary was promoted: it is no longer on trial
        change = StateChange(
            ts_ms=int(time.time() * 1000),
            action=action,
            ref=self._subject(old, stable, canary, new_stable, new_canary),
            reason=reason,
            stable=new_stable,
            canary=new_canary,
        )
        return RegistryState(stable=new_stable, canary=new_canary, history=[*old.history, change])

    @staticmethod
    def _subject(
        old: RegistryState,
        stable: str | None,
        canary: str | None,
        new_stable: str | None,
        new_canary: str | None,
    ) -> str | None:
        """The version a change is about: a new canary, else a new stable, else what left."""
        if canary not in ("keep", None):
            return new_canary
        if stable not in ("keep", None):
            return new_stable
        if canary is None:
            return old.canary
        if stable is None:
            return old.stable
        return None

    def _write_state(self, state: RegistryState) -> None:
        tmp = self.root / f"{STATE_TEMP_PREFIX}{uuid.uuid4().hex}.tmp"
        try:
            write_durably(tmp, state.model_dump_json(indent=2).encode())
            os.replace(tmp, self.root / STATE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.root)
