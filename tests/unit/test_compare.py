"""The ``compare`` kind end to end without Kafka: a side-by-side verdict, as the feedback
route makes it (two events, one on each answer, the second mirrored), becomes a preference
pair straight away (no score margin), nothing for a tie, negative labels for "both bad";
one voice per rater per answer, the latest verdict winning (a flip replaces the pair in
place, a tie after a win withdraws it). Validation of the new contract fields too."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from serving.feedback import MIRRORED, mirror_id
from streaming import store as s
from streaming.events import (
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    ChatMessage,
    FeedbackEvent,
    FeedbackIn,
    FeedbackKind,
    InteractionEvent,
    PreferenceLabel,
    decode_feedback,
)
from streaming.fusion import FusionConfig
from streaming.processor import Processor, ProcessorConfig
from tests.unit.test_processor_fast import LATER, Rec

PROMPT = [ChatMessage(role="user", content="Which is the capital of France?")]


def answer(rid: str, adapter: str, prompt: list[ChatMessage] = PROMPT) -> Rec:
    event = InteractionEvent(
        response_id=rid, conversation_id="c", user_hash="u", model="m", adapter=adapter,
        arm="pinned", messages=prompt, completion=f"Answer {rid}.", prompt_tokens=3,
        completion_tokens=2, ttft_ms=1, latency_ms=2, created_ms=1_000,
    )  # fmt: skip
    return Rec(TOPIC_INTERACTIONS, event.model_dump_json().encode())


def vote(event_id: str, a: str, b: str, verdict: str, ms: int = 2_000) -> list[Rec]:
    """What the route sends for one compare vote: an event on each answer."""
    first = FeedbackEvent(
        event_id=event_id, response_id=a, conversation_id="c", user_hash="u",
        kind=FeedbackKind.compare, value=verdict, received_ms=ms, other_response_id=b,
    )  # fmt: skip
    mirror = first.model_copy(
        update={"event_id": mirror_id(event_id), "response_id": b, "other_response_id": a,
                "value": MIRRORED[verdict]}
    )  # fmt: skip
    return [Rec(TOPIC_FEEDBACK, e.model_dump_json().encode()) for e in (first, mirror)]


@pytest.fixture
def processor(tmp_path: Path) -> Processor:
    fusion = FusionConfig(newcomer_chats=0, lockstep_factor=1.0)
    return Processor(ProcessorConfig(store_url=f"sqlite:///{tmp_path}/p.sqlite", fusion=fusion))


def stored_pairs(processor: Processor) -> list[dict[str, object]]:
    with processor.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(s.pairs))]


def test_a_win_is_one_pair_straight_from_the_verdict(processor: Processor) -> None:
    processor.process([answer("a", "v1"), answer("b", "v2"), *vote("e1", "a", "b", "worse")])
    out = processor.housekeeping(now=LATER)
    [pair] = stored_pairs(processor)
    assert pair["provenance"] == "compare"
    assert (pair["chosen"], pair["rejected"]) == ("Answer b.", "Answer a.")
    assert pair["adapter"] == "v1"  # the rejected answer's
    assert pair["weight"] > 0
    # No label: a win moves no score (it would come back as a sibling pair otherwise).
    assert not [r for r in out if isinstance(r, PreferenceLabel)]
    assert {r.provenance for r in out if not isinstance(r, PreferenceLabel)} == {"compare"}


def test_the_pair_names_the_rejected_answers_adapter(processor: Processor) -> None:
    processor.process([answer("a", "v1"), answer("b", "v2"), *vote("e1", "a", "b", "better")])
    processor.housekeeping(now=LATER)
    [pair] = stored_pairs(processor)
    assert (pair["chosen_response_id"], pair["rejected_response_id"]) == ("a", "b")
    assert pair["adapter"] == "v2"


def test_a_tie_makes_nothing(processor: Processor) -> None:
    processor.process([answer("a", "v1"), answer("b", "v2"), *vote("e1", "a", "b", "tie")])
    out = processor.housekeeping(now=LATER)
    assert stored_pairs(processor) == []
    assert not [r for r in out if isinstance(r, PreferenceLabel)]


def test_both_bad_makes_two_negative_labels_and_no_pair(processor: Processor) -> None:
    processor.process([answer("a", "v1"), answer("b", "v2"), *vote("e1", "a", "b", "both_bad")])
    out = processor.housekeeping(now=LATER)
    assert stored_pairs(processor) == []
    labels = {r.response_id: r for r in out if isinstance(r, PreferenceLabel)}
    assert set(labels) == {"a", "b"}
    assert not any(label.desirable for label in labels.values())


def test_the_latest_verdict_wins(processor: Processor) -> None:
    processor.process([answer("a", "v1"), answer("b", "v2"), *vote("e1", "a", "b", "better")])
    processor.housekeeping(now=LATER)
    [first] = stored_pairs(processor)
    # The rater changes their mind: the same pair, in place, the other way round.
    processor.process(vote("e2", "a", "b", "worse", ms=3_000))
    [flipped] = stored_pairs(processor)
    assert flipped["pair_id"] == first["pair_id"]
    assert flipped["chosen_response_id"] == "b"
    # Then calls it a tie: the pair is withdrawn (weight 0, which training skips).
    processor.process(vote("e3", "a", "b", "tie", ms=4_000))
    [withdrawn] = stored_pairs(processor)
    assert withdrawn["pair_id"] == first["pair_id"] and withdrawn["weight"] == 0.0
    with processor.store.engine.connect() as conn:
        rows = conn.execute(select(s.feedback.c.event_id, s.feedback.c.status_reason)).all()
    superseded = {e for e, reason in rows if reason == "superseded"}
    assert {"e1", "e2", mirror_id("e1"), mirror_id("e2")} == superseded


def test_a_replayed_vote_changes_nothing(processor: Processor) -> None:
    batch = [answer("a", "v1"), answer("b", "v2"), *vote("e1", "a", "b", "better")]
    processor.process(batch)
    processor.housekeeping(now=LATER)
    before = stored_pairs(processor)
    processor.process(vote("e1", "a", "b", "better"))  # a client's retry, same event_id
    assert stored_pairs(processor) == before


def test_answers_to_different_prompts_make_no_pair(processor: Processor) -> None:
    other = [ChatMessage(role="user", content="Something else?")]
    processor.process([answer("a", "v1"), answer("b", "v2", other), *vote("e", "a", "b", "better")])
    processor.housekeeping(now=LATER)
    assert stored_pairs(processor) == []


def test_a_compare_travels_with_its_other_response() -> None:
    [first, _] = vote("e", "a", "b", "better")
    assert first.value is not None
    decoded = decode_feedback(first.value)
    assert (decoded.kind, decoded.value, decoded.other_response_id) == ("compare", "better", "b")


BASE = {"response_id": "a", "feedback_token": "x.y"}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"kind": "compare", "value": "better"}, "other_response_id"),
        ({"kind": "compare", "value": "best", "other_response_id": "b",
          "other_feedback_token": "x.y"}, "compare verdict"),
        ({"kind": "compare", "value": "tie", "other_response_id": "a",
          "other_feedback_token": "x.y"}, "compared with itself"),
        ({"kind": "compare", "value": "tie", "other_response_id": "b"}, "other_feedback_token"),
        ({"kind": "thumb", "value": 1, "other_response_id": "b",
          "other_feedback_token": "x.y"}, "only a compare"),
        ({"kind": "thumb", "value": 1, "copied_share": 0.5}, "copied_share"),
        ({"kind": "click", "value": "copy", "copied_share": 1.5}, "copied_share"),
    ],
)  # fmt: skip
def test_bad_compare_and_copy_fields_are_refused(body: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        FeedbackIn.model_validate({**BASE, **body})


def test_a_copy_carries_its_share() -> None:
    item = FeedbackIn.model_validate(
        {**BASE, "kind": "click", "value": "copy", "copied_share": 0.25}
    )
    assert item.copied_share == 0.25
