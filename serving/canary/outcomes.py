"""From the preference store's settled outcomes to the arms' summaries ``decide`` takes.

The stream processor writes one outcome per response once its feedback window has
closed, with the adapter and the arm that answered. An arm's summary covers the
responses of its own version since the rollout started; pinned requests (an operator
choosing the arm) are recorded as arm "pinned" and never counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from serving.canary.controller import Arms, ArmSummary
from serving.canary.sequential import Moments

CANARY, STABLE = "canary", "stable"


def summarize(
    rows: Iterable[Mapping[str, Any]],
    canary_ref: str,
    stable_ref: str,
    conversations: Mapping[str, int],
) -> Arms:
    """``rows``: outcome rows (``PreferenceStore.outcomes_since``); ``conversations``: new
    conversations by arm since the current step began (for the sample-ratio check)."""
    mine: dict[str, list[Mapping[str, Any]]] = {CANARY: [], STABLE: []}
    refs = {CANARY: canary_ref, STABLE: stable_ref}
    for row in rows:
        arm = row["arm"]
        if arm in mine and row["adapter"] == refs[arm]:
            mine[arm].append(row)
    return Arms(
        canary=arm_summary(mine[CANARY], conversations.get(CANARY, 0)),
        stable=arm_summary(mine[STABLE], conversations.get(STABLE, 0)),
    )


def arm_summary(rows: list[Mapping[str, Any]], conversations: int) -> ArmSummary:
    """One arm: the conversation is the unit of the score (its responses' mean), the
    request the unit of the guardrails."""
    by_conversation: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["score"] is not None:
            by_conversation[row["conversation_id"]].append(float(row["score"]))
    answered = [row for row in rows if not row["error"]]
    return ArmSummary(
        scores=Moments.of([sum(s) / len(s) for s in by_conversation.values()]),
        conversations=conversations,
        requests=len(rows),
        errors=len(rows) - len(answered),
        thumbs_down=sum(int(row["thumbs_down"]) for row in answered),
        regenerates=sum(bool(row["regenerated"]) for row in answered),
        answer_tokens=sum(int(row["completion_tokens"]) for row in answered),
        latency_p95_s=p95([row["latency_ms"] / 1000 for row in answered]),
        ttft_p95_s=p95([row["ttft_ms"] / 1000 for row in answered]),
    )


def p95(values: list[float]) -> float | None:
    """The 95th percentile (nearest rank); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
