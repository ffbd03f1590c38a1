"""Stable/canary state: state.json, which says what serving runs, and its history.

state.json holds the stable and canary refs, the share of conversations the canary
serves (``canary_weight``), where the canary's trial stands (``rollout``: its step, when
it and the step began, whether an operator paused it) and an append-only history of every
change. Serving reads the refs and the weight; the canary controller reads and advances
the rollout, and resumes from it after a restart. Every canary decision, holds included,
is appended to decisions.jsonl beside it.

Changes are made under the root lock and written atomically (temp file, fsync, rename),
so a reader sees the old state or the new one, never half of either.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from livealign.files import fsync_dir
from trainer.registry.errors import RegistryError, describe_invalid
from trainer.registry.files import last_lines, locked, write_durably
from trainer.registry.versions import Manifest

log = logging.getLogger(__package__)  # "trainer.registry": one logger for the whole package

STATE = "state.json"
STATE_TEMP_PREFIX = ".state-"
DECISIONS = "decisions.jsonl"
Keep = Literal["keep"]


class StateChange(BaseModel):
    """One entry of the state history."""

    ts_ms: int = Field(description="When the change was made (epoch ms).")
    action: str = Field(description='What was done, e.g. "canary", "promote", "rollback".')
    ref: str | None = Field(description="The version the change is about.")
    reason: str = Field(default="", description="Why, in words (for humans and audits).")
    stable: str | None = Field(default=None, description="Stable ref after the change.")
    canary: str | None = Field(default=None, description="Canary ref after the change.")
    canary_weight: float = Field(default=0.0, description="Canary weight after the change.")


class Rollout(BaseModel):
    """Where the canary's trial stands (epoch ms)."""

    started_ms: int = Field(description="When the canary went out.")
    step: int = Field(default=0, ge=0, description="Index into the canary policy's steps.")
    step_started_ms: int = Field(description="When the current step began.")
    paused: bool = Field(default=False, description="An operator paused the promotions.")


class RegistryState(BaseModel):
    """state.json: what serving should run."""

    stable: str | None = Field(default=None, description="Ref serving answers with by default.")
    canary: str | None = Field(default=None, description="Ref under canary test, if any.")
    canary_weight: float = Field(
        default=0.0, ge=0, le=1, description="Share of conversations the canary serves."
    )
    rollout: Rollout | None = Field(default=None, description="The canary's trial, if any.")
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
        stable: str | Keep | None = "keep",
        canary: str | Keep | None = "keep",
        canary_weight: float | Keep = "keep",
        rollout: Rollout | Keep | None = "keep",
        action: str,
        reason: str = "",
        expect_canary: str | Keep | None = "keep",
    ) -> RegistryState:
        """Change stable, canary, its weight and rollout ("keep" leaves one as is) and
        append to the history.

        Refs must exist (plain "N" is accepted and stored as "name@N"). Promoting the canary
        to stable while leaving `canary` as "keep" clears the canary. Without a canary the
        weight is 0 and there is no rollout; a new canary starts at weight 0 with no rollout
        unless they are given. ``expect_canary``: refuse (RegistryError) unless the canary
        is this one now, so a controller never applies a decision about a canary that an
        operator or the trainer has replaced meanwhile.
        """
        if not action:
            raise ValueError("action must be a non-empty string")
        with locked(self.root):
            old = self.state()
            if expect_canary != "keep" and old.canary != expect_canary:
                raise RegistryError(f"the canary is {old.canary}, not {expect_canary}")
            new = self._next_state(old, stable, canary, canary_weight, rollout, action, reason)
            self._write_state(new)
        log.info(
            "registry %s: %s stable=%s canary=%s weight=%.2f",
            self.name, action, new.stable, new.canary, new.canary_weight,
        )  # fmt: skip
        return new

    def _next_state(
        self,
        old: RegistryState,
        stable: str | Keep | None,
        canary: str | Keep | None,
        canary_weight: float | Keep,
        rollout: Rollout | Keep | None,
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
        same_canary = new_canary is not None and new_canary == old.canary
        weight = (
            (old.canary_weight if same_canary else 0.0)
            if canary_weight == "keep"
            else canary_weight
        )
        trial = (old.rollout if same_canary else None) if rollout == "keep" else rollout
        if new_canary is None:
            weight, trial = 0.0, None
        change = StateChange(
            ts_ms=int(time.time() * 1000),
            action=action,
            ref=self._subject(old, stable, canary, new_stable, new_canary),
            reason=reason,
            stable=new_stable,
            canary=new_canary,
            canary_weight=weight,
        )
        return RegistryState(
            stable=new_stable, canary=new_canary, canary_weight=weight, rollout=trial,
            history=[*old.history, change],
        )  # fmt: skip

    def append_decision(self, decision: dict[str, object]) -> None:
        """Append one canary decision (JSON-able) to decisions.jsonl, durably."""
        line = (json.dumps(decision, sort_keys=True) + "\n").encode()
        with locked(self.root):
            fd = os.open(self.root / DECISIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def decisions(self, last: int | None = None) -> list[dict[str, object]]:
        """The logged canary decisions, oldest first (only the ``last`` N if given)."""
        path = self.root / DECISIONS
        if not path.is_file():
            return []
        lines = last_lines(path, last) if last else path.read_text().splitlines()
        return [json.loads(line) for line in lines if line]

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
