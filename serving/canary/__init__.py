"""Canary rollouts: the pure decision logic (no I/O, no clock) and its replay simulation.

- policy.py: ``CanaryPolicy``, the steps, the statistics' and the guardrails' settings.
- sequential.py: per-arm ``Moments``, the anytime-valid confidence sequence of the score
  difference (normal-mixture mSPRT), the naive fixed-horizon interval, the SRM test.
- controller.py: ``decide(policy, state, arms, now) -> Decision`` and ``next_state``.
- simulate.py: rollouts on simulated traffic (``bench/canary.py --replay``, the tests).
- assign.py: the sticky arm of a conversation or user (salted hash into buckets).
- commands.py: the operator's commands of ``/admin/canary``, over ``rollout.py``.
"""

from serving.canary.controller import (
    Action,
    Arms,
    ArmSummary,
    Decision,
    Reason,
    RolloutState,
    decide,
    next_state,
)
from serving.canary.policy import CanaryPolicy, Limit
from serving.canary.sequential import Interval, Moments, confidence_sequence

__all__ = [
    "Action",
    "ArmSummary",
    "Arms",
    "CanaryPolicy",
    "Decision",
    "Interval",
    "Limit",
    "Moments",
    "Reason",
    "RolloutState",
    "confidence_sequence",
    "decide",
    "next_state",
]
