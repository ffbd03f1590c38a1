"""The record rules (streaming/records.py) and the end-of-batch order (checkpoint.py)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import CommitFailedError

from streaming.checkpoint import Checkpoint
from streaming.events import ChatMessage, InteractionEvent, PreferenceLabel, decode_interaction
from streaming.fusion import Fused
from streaming.records import RecordConfig, Scored, edit_pairs, label, sibling_pairs

EVENT = decode_interaction(
    InteractionEvent(
        response_id="r1", conversation_id="c1", model="m", adapter="v1", arm="stable",
        messages=[ChatMessage(role="user", content="Hi?")], completion="Hello there.",
        prompt_tokens=2, completion_tokens=3, ttft_ms=1, latency_ms=2, created_ms=1,
    ).model_dump_json()
)  # fmt: skip


def fused(score: float, confidence: float) -> Fused:
    return Fused(score, confidence, "general", score, None, 2)


@pytest.mark.parametrize(
    ("score", "confidence", "made"),
    [(0.5, 0.9, True), (-0.5, 0.9, True), (0.5, 0.29, False), (0.05, 0.9, False),
     (-0.05, 0.9, False), (0.051, 0.3, True)],
)  # fmt: skip
def test_a_label_needs_confidence_and_a_clear_score(
    score: float, confidence: float, made: bool
) -> None:
    out = label("r1", EVENT, fused(score, confidence), RecordConfig())
    assert (out is not None) == made
    if out is not None:
        assert out.desirable == (score > 0)
        assert out.weight == pytest.approx(confidence * abs(score))
        assert out.adapter == "v1" and out.prompt[0].content == "Hi?"


def test_thresholds_are_configurable() -> None:
    strict = RecordConfig(label_min_confidence=0.95, label_min_score=0.6)
    assert label("r1", EVENT, fused(0.5, 0.9), strict) is None
    assert label("r1", EVENT, fused(0.7, 0.96), strict) is not None


def test_edit_pairs_skip_unchanged_and_untrusted_edits() -> None:
    pairs = edit_pairs(
        "r1", EVENT, [("e1", "Hi!", 0.8), ("e2", "Hello there.", 0.9), ("e3", "Yo.", 0.0)]
    )
    assert [(p.chosen, p.rejected, p.weight) for p in pairs] == [("Hi!", "Hello there.", 0.8)]
    again = edit_pairs("r1", EVENT, [("e1", "Hi!", 0.8)])
    assert again[0].pair_id == pairs[0].pair_id  # the same evidence, the same record


def test_siblings_apart_by_the_margin_make_one_pair_with_the_better_chosen() -> None:
    mine = label("r1", EVENT, fused(0.8, 0.9), RecordConfig())
    assert isinstance(mine, PreferenceLabel)
    siblings = {
        "r1": Scored(0.8, 0.9, "Hello there.", "v1"),  # itself: skipped
        "r2": Scored(0.1, 0.5, "Go away.", "base"),  # 0.7 apart
        "r3": Scored(0.5, 0.9, "Hi.", "base"),  # 0.3 apart: no pair
    }
    (pair,) = sibling_pairs(mine, siblings, RecordConfig(pair_margin=0.5))
    assert (pair.chosen, pair.rejected, pair.adapter) == ("Hello there.", "Go away.", "base")
    assert pair.weight == pytest.approx(0.5 * 0.7 / 2)
    worse = label("r2", EVENT, fused(0.1, 0.5), RecordConfig())
    assert isinstance(worse, PreferenceLabel)
    (mirror,) = sibling_pairs(worse, {"r1": Scored(0.8, 0.9, "Hello there.", "v1")}, RecordConfig())
    assert mirror.pair_id == pair.pair_id  # found from either side, one record


def test_the_latest_edit_makes_the_one_edit_pair() -> None:
    edits = [("e1", "Hi!", 0.8), ("e2", "Hey.", 0.6), ("e3", "Hello there.", 0.9)]
    (pair,) = edit_pairs("r1", EVENT, edits)  # e3 changed nothing: e2 is the latest
    assert (pair.chosen, pair.weight) == ("Hey.", 0.6)
    (first,) = edit_pairs("r1", EVENT, edits[:1])
    assert first.pair_id == pair.pair_id  # the newer edit replaces the pair in place


def test_five_hundred_regenerations_make_pairs_in_proportion() -> None:
    """One prompt answered 500 times, each answer labelled in turn (good and bad ones
    alternating): each pairs with at most pair_max_siblings of the ones before it."""
    config = RecordConfig()  # pair_max_siblings: 4
    siblings: dict[str, Scored] = {}
    pair_ids: set[str] = set()
    for i in range(500):
        score = 0.9 if i % 2 else -0.9
        mine = label(f"r{i}", EVENT, fused(score, 0.9), config)
        assert isinstance(mine, PreferenceLabel)
        mine = mine.model_copy(update={"response_id": f"r{i}"})
        siblings[f"r{i}"] = Scored(score, 0.9, f"Answer {i}.", "v1")
        made = sibling_pairs(mine, siblings, config)
        assert len(made) <= 4
        pair_ids |= {p.pair_id for p in made}
    assert 400 <= len(pair_ids) <= 4 * 500  # unbounded: 62,500 (every good with every bad)


class Calls:
    def __init__(self, fail_flush: bool = False, fail_commit: bool = False) -> None:
        self.log: list[str] = []
        self.fail_flush, self.fail_commit = fail_flush, fail_commit

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.log.append(f"send {key.decode()}")

    def flush(self, timeout: float) -> None:
        if self.fail_flush:
            raise TimeoutError("no acks")
        self.log.append("flush")

    def commit(self) -> None:
        if self.fail_commit:
            raise CommitFailedError("UnknownMemberIdError")
        self.log.append("commit offsets")


def test_checkpoint_publishes_flushes_then_commits_offsets() -> None:
    calls = Calls()
    records: list[Any] = [label("r1", EVENT, fused(0.5, 0.9), RecordConfig())]
    records += edit_pairs("r1", EVENT, [("e1", "Hi!", 0.8)])
    Checkpoint(calls, calls, 1.0).commit(records)
    assert calls.log == ["send r1", f"send {records[1].pair_id}", "flush", "commit offsets"]


def test_checkpoint_commits_no_offsets_when_the_publish_is_not_acknowledged() -> None:
    calls = Calls(fail_flush=True)
    with pytest.raises(TimeoutError):
        Checkpoint(calls, calls, 1.0).commit([])
    assert "commit offsets" not in calls.log


def test_offsets_the_group_refuses_after_a_rebalance_do_not_stop_the_processor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls(fail_commit=True)
    Checkpoint(calls, calls, 1.0).commit([])  # type: ignore[arg-type]
    assert calls.log == ["flush"] and "will be read again" in caplog.text
