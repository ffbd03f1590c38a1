"""The record rules: which training records a response's fused feedback makes.

Pure functions of what the processor has joined, no I/O, so the rules read in one place
and their thresholds are one config (``RecordConfig``):

- a **label** (desirable or not, for KTO) for every response scored confidently enough
  and clearly enough away from neutral, weighted by confidence times |score|;
- an **edit pair** (the user's edit > the original answer), one per response: its latest
  edit that changed the answer, weighted by the edit's strength times the rater's trust
  (its id is the response's, so a newer edit replaces the pair in place);
- a **sibling pair** for two regenerated answers to the same prompt in one conversation
  whose fused scores differ by at least ``pair_margin`` (the better one chosen), each
  response paired with at most ``pair_max_siblings`` of its siblings (the farthest
  apart), so a client regenerating 500 times makes pairs in proportion, not squared;
- a **compare pair** for a user's side-by-side verdict on two answers to one prompt
  (``compare``): the better one chosen, straight from the verdict (no score margin),
  weighted by the rater's trust; one per pair of answers (its id is the two responses'),
  so the latest verdict replaces it in place, and a tie or "both bad" after a win
  withdraws it (weight 0). A verdict moves no score, so it cannot come back as a
  sibling pair too, except "both bad", which makes each answer's label negative;
- an **outcome** for every response, with the adapter and arm that answered: its fused
  score when confident enough to label (else none), votes, regenerate, error, latency.

All of them once a response's feedback window has settled, and again when late feedback
changes them.

Every record's id is a hash of its evidence, so the same evidence always makes the same
record and a replay upserts it in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from streaming.events import (
    ChatMessage,
    PreferenceLabel,
    PreferencePair,
    ResponseOutcome,
    WireInteraction,
)
from streaming.fusion import Fused

Record = PreferencePair | PreferenceLabel  # what goes to livealign.preferences


class RecordConfig(BaseModel):
    """Thresholds of the record rules."""

    model_config = ConfigDict(extra="forbid")

    label_min_confidence: float = Field(
        0.3, ge=0, le=1, description="Labels below this confidence are not emitted."
    )
    label_min_score: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="A fused score at most this far from 0 is no verdict: no label.",
    )
    pair_margin: float = Field(0.5, ge=0, description="Fused-score gap that makes siblings a pair.")
    pair_max_siblings: int = Field(
        4,
        ge=1,
        description="Siblings a just-labelled response is paired with at most: those whose "
        "scores are farthest from its own (the clearest preferences). Bounds the pairs of one "
        "prompt to this many per answer, however often it is regenerated.",
    )


@dataclass(slots=True)
class Scored:
    """A stored label, as sibling pairs need it."""

    score: float
    confidence: float
    completion: str
    adapter: str


def record_id(*parts: str) -> str:
    """Stable id of a record from its evidence."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def prompt_of(event: WireInteraction) -> list[ChatMessage]:
    """The interaction's messages as the records carry them."""
    return [ChatMessage(role=m.role, content=m.content) for m in event.messages]


def label(
    response_id: str, event: WireInteraction, fused: Fused, config: RecordConfig
) -> PreferenceLabel | None:
    """The response's label, or None when its score is not confident or clear enough."""
    if fused.confidence < config.label_min_confidence or abs(fused.score) <= config.label_min_score:
        return None
    return PreferenceLabel(
        response_id=response_id, prompt=prompt_of(event), completion=event.completion,
        desirable=fused.score > 0, weight=fused.confidence * abs(fused.score),
        score=fused.score, confidence=fused.confidence, scenario=fused.scenario,
        adapter=event.adapter, n_signals=fused.n_signals,
    )  # fmt: skip


def edit_pairs(
    response_id: str, event: WireInteraction, edits: Iterable[tuple[str, str, float]]
) -> list[PreferencePair]:
    """An edit is the user's own better answer: (edited > original). ``edits`` are
    (event id, edited text, weight) of the response's joined edits, in the order they
    joined; the latest that changed the answer and has weight makes the one pair."""
    usable = [(text, w) for _, text, w in edits if w > 0 and text != event.completion]
    if not usable:
        return []
    edited, weight = usable[-1]
    return [
        PreferencePair(
            pair_id=record_id("edit", response_id), prompt=prompt_of(event), chosen=edited,
            rejected=event.completion, weight=weight, provenance="edit",
            chosen_response_id=None, rejected_response_id=response_id, adapter=event.adapter,
        )
    ]  # fmt: skip


def compare_pair(
    response_id: str,
    event: WireInteraction,
    other_id: str,
    other: WireInteraction,
    verdict: str,
    weight: float,
) -> PreferencePair | None:
    """The pair a compare verdict on ``response_id`` against ``other_id`` makes: the
    better answer chosen for a win or a loss; for a tie or both bad, the same pair at
    weight 0 (so it withdraws one an earlier verdict made; None if there is no earlier
    one is the caller's to decide). None when the two were answers to different prompts."""
    if event.messages != other.messages:
        return None
    decisive = verdict in ("better", "worse")
    mine, theirs = (response_id, event), (other_id, other)
    (best, chosen), (worst, rejected) = (mine, theirs) if verdict == "better" else (theirs, mine)
    return PreferencePair(
        pair_id=record_id("compare", *sorted((response_id, other_id))), prompt=prompt_of(event),
        chosen=chosen.completion, rejected=rejected.completion,
        weight=weight if decisive else 0.0, provenance="compare", chosen_response_id=best,
        rejected_response_id=worst, adapter=rejected.adapter,
    )  # fmt: skip


def sibling_pairs(
    mine: PreferenceLabel, siblings: Mapping[str, Scored], config: RecordConfig
) -> list[PreferencePair]:
    """Pairs of a just-labelled response with its labelled siblings (regenerated answers
    to the same prompt in the same conversation; ``siblings`` may include itself): with
    the ``pair_max_siblings`` farthest from it by score (ties: by response id), of those
    at least ``pair_margin`` away."""
    apart = [
        (sib_id, sib)
        for sib_id, sib in siblings.items()
        if sib_id != mine.response_id and abs(mine.score - sib.score) >= config.pair_margin
    ]
    apart.sort(key=lambda item: (-abs(mine.score - item[1].score), item[0]))
    out: list[PreferencePair] = []
    for sib_id, sib in apart[: config.pair_max_siblings]:
        gap = mine.score - sib.score
        ours = (mine.response_id, mine.completion, mine.adapter)
        theirs = (sib_id, sib.completion, sib.adapter)
        (best, chosen, _), (worst, rejected, adapter) = (
            (ours, theirs) if gap > 0 else (theirs, ours)
        )
        key = record_id("regenerate", *sorted((best, worst)))
        out.append(
            PreferencePair(
                pair_id=key, prompt=mine.prompt, chosen=chosen, rejected=rejected,
                weight=min(mine.confidence, sib.confidence) * abs(gap) / 2,
                provenance="regenerate", chosen_response_id=best,
                rejected_response_id=worst, adapter=adapter,
            )
        )  # fmt: skip
    return out


def outcome(
    response_id: str,
    event: WireInteraction,
    fused: Fused,
    votes: Iterable[int],
    regenerated: bool,
    config: RecordConfig,
) -> ResponseOutcome:
    """The response's outcome. ``votes``: +1 / -1 for each thumb or rating above / below
    the middle, 0 for a middle rating. Its score counts only when as confident as a label
    must be: a lone weak implicit signal would otherwise speak for the whole response."""
    ups = downs = 0
    for vote in votes:
        ups += vote > 0
        downs += vote < 0
    confident = fused.confidence >= config.label_min_confidence
    return ResponseOutcome(
        response_id=response_id, conversation_id=event.conversation_id, adapter=event.adapter,
        arm=event.arm, created_ms=event.created_ms, score=fused.score if confident else None,
        confidence=fused.confidence, n_signals=fused.n_signals, thumbs_up=ups,
        thumbs_down=downs, regenerated=regenerated, error=event.finish_reason == "error",
        completion_tokens=event.completion_tokens, latency_ms=event.latency_ms,
        ttft_ms=event.ttft_ms,
    )  # fmt: skip
