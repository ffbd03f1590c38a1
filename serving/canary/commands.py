"""The operator's canary commands, as ``/admin/canary`` serves them (and ``livealign canary``
calls them): each is one transition of ``rollout``, its failures turned into API errors
(409: no canary, or no rollout to change; 422: a weight that is not one of the steps)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from serving.canary import rollout
from serving.canary.policy import CanaryPolicy
from serving.protocol import APIError
from trainer.registry import Registry, RegistryError, RegistryState
from trainer.registry.errors import describe_invalid

REASON = "admin API"
DECISIONS_SHOWN = 20
Command = Literal["promote", "abort", "pause", "resume"]


class CanaryWeight(BaseModel):
    """Body of ``POST /admin/canary/set-weight``."""

    weight: float = Field(
        ge=0, le=1, description="The canary's share of conversations: one of the policy's steps."
    )


def status(registry: Registry, replica: dict[str, Any]) -> dict[str, Any]:
    """The rollout as the registry has it, its last decisions, and what ``replica`` (the
    answering one's ``AdapterManager.loaded()``) routes: another replica may lag by a poll."""
    state = registry.state()
    return {
        "stable": state.stable,
        "canary": state.canary,
        "weight": state.canary_weight,
        "rollout": state.rollout.model_dump(mode="json") if state.rollout else None,
        "decisions": registry.decisions(last=DECISIONS_SHOWN),
        "replica": replica,
    }


def run(registry: Registry, command: Command) -> RegistryState:
    """Carry out ``command`` on the canary now."""
    with _conflicts():
        match command:
            case "promote":
                return rollout.complete(registry, REASON)
            case "abort":
                return rollout.abort(registry, REASON)
            case "pause" | "resume":
                return rollout.pause(registry, command == "pause", REASON)


def set_weight(registry: Registry, policy: CanaryPolicy, body: bytes, now_ms: int) -> RegistryState:
    """Move the rollout to the step of the weight in ``body`` (JSON ``CanaryWeight``)."""
    try:
        weight = CanaryWeight.model_validate_json(body).weight
        with _conflicts():
            return rollout.set_weight(registry, policy, weight, now_ms, REASON)
    except ValidationError as exc:  # before ValueError, which it is too
        raise APIError(422, describe_invalid(exc), code="invalid_value", param="weight") from exc
    except ValueError as exc:  # not a step of the policy
        raise APIError(422, f"weight: {exc}", code="invalid_value", param="weight") from exc


@contextmanager
def _conflicts() -> Iterator[None]:
    try:
        yield
    except RegistryError as exc:  # no canary, or it has no rollout (yet) to change
        raise APIError(409, str(exc), code="no_canary") from exc
