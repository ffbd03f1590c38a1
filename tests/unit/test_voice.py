"""One voice per rater per response, and the rate limit on server time: the rules
(``streaming.fusion.voice``) alone, then through the processor (no Kafka)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from sqlalchemy import select

from streaming import store as s
from streaming.events import (
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    ChatMessage,
    FeedbackEvent,
    FeedbackKind,
    InteractionEvent,
    PreferenceLabel,
)
from streaming.fusion import Fuser, FusionConfig, Signal, voice
from streaming.processor import Processor
from streaming.records import RecordConfig
from tests.unit.test_processor_fast import LATER, Rec, config

FAR_FUTURE_MS = 10**15  # year 33658


def thumb(value: float, rater: str | None = None) -> Signal:
    return Signal("thumb", value, 1.0, rater, True)


def click(name: str, rater: str | None = None) -> Signal:
    return Signal(name, 1.0, 1.0, rater, False)


# ---------------------------------------------------------------- the rules


def test_twenty_thumbs_of_one_rater_fuse_as_one() -> None:
    cfg = FusionConfig()
    fuser = Fuser(cfg)
    for rater in (None, "u"):  # anonymous: the token holder is one voice
        twenty = voice.one_voice([thumb(1.0, rater)] * 20, cfg)
        assert twenty == [thumb(1.0, rater)]
        assert fuser.fuse(None, twenty) == fuser.fuse(None, [thumb(1.0, rater)])


def test_the_latest_thumb_wins() -> None:
    cfg = FusionConfig()
    kept = voice.one_voice([thumb(1.0, "u"), thumb(-1.0, "v"), thumb(-1.0, "u")], cfg)
    assert kept == [thumb(-1.0, "v"), thumb(-1.0, "u")]
    assert voice.place(thumb(1.0, "u"), kept, cfg) == voice.Verdict("replace", 1)
    assert voice.place(thumb(1.0, "w"), kept, cfg) == voice.JOIN  # another rater: a voice


def test_other_signals_count_a_bounded_number_of_times() -> None:
    cfg = FusionConfig(max_signals_per_rater=3)
    kept = voice.one_voice([click("copy", "u")] * 10 + [click("share", "u")], cfg)
    assert kept == [click("copy", "u")] * 3 + [click("share", "u")]
    assert voice.place(click("copy", "v"), kept, cfg) == voice.JOIN


def test_a_latest_wins_signal_must_exist() -> None:
    assert FusionConfig(latest_wins_signals=["thumb", "copy"]).latest_wins_signals == [
        "thumb",
        "copy",
    ]
    with pytest.raises(ValidationError, match="unknown signals"):
        FusionConfig(latest_wins_signals=["thumbs"])


def test_rate_limit_windows_are_bounded_whatever_the_times() -> None:
    fuser = Fuser(FusionConfig(max_raters=10))
    for k in range(100):
        fuser.allow(f"r{k}", FAR_FUTURE_MS - k)  # never idle by any later time given
    assert len(fuser.limiter) == 10


# ---------------------------------------------------------------- through the processor


def interaction(rid: str, conv: str = "c", content: str = "A question?") -> Rec:
    event = InteractionEvent(
        response_id=rid, conversation_id=conv, user_hash=None, model="m", adapter="base",
        arm="stable", messages=[ChatMessage(role="user", content=content)],
        completion=f"Answer {rid}.", prompt_tokens=3, completion_tokens=2, ttft_ms=1,
        latency_ms=2, created_ms=1_000,
    )  # fmt: skip
    return Rec(TOPIC_INTERACTIONS, event.model_dump_json().encode())


def feedback(
    eid: str,
    rid: str,
    kind: FeedbackKind,
    value: int | str,
    user: str | None = None,
    received_ms: int = 2_000,
    client_ts: int | None = None,
) -> Rec:
    event = FeedbackEvent(
        event_id=eid, response_id=rid, conversation_id="c", user_hash=user, kind=kind,
        value=value, received_ms=received_ms, client_ts=client_ts,
    )  # fmt: skip
    return Rec(TOPIC_FEEDBACK, event.model_dump_json().encode())


def drops(reason: str) -> float:
    return REGISTRY.get_sample_value("livealign_processor_drops_total", {"reason": reason}) or 0.0


def statuses(processor: Processor) -> dict[str, tuple[str, str | None]]:
    with processor.store.engine.connect() as conn:
        rows = conn.execute(select(s.feedback.c.event_id, s.feedback.c.status,
                                   s.feedback.c.status_reason))  # fmt: skip
        return {eid: (status, reason) for eid, status, reason in rows}


def test_twenty_anonymous_thumbs_on_one_response_make_one_signal(tmp_path: Path) -> None:
    """The issue's case: one response's token, no user, twenty thumbs (some held for the
    interaction, some in a later batch): one voice, the rest dropped as superseded."""
    # One anonymous thumb alone (low trust) is below the default label confidence.
    labels = RecordConfig(pair_margin=0.3, label_min_confidence=0.0)
    processor = Processor(config(tmp_path, "twenty").model_copy(update={"records": labels}))
    before = drops(voice.SUPERSEDED)
    thumbs = [
        feedback(f"t{i}", "r", FeedbackKind.thumb, 1, received_ms=2_000 + i) for i in range(20)
    ]
    processor.process([*thumbs[:5], interaction("r"), *thumbs[5:12]])
    processor.process(thumbs[12:])
    [label] = [r for r in processor.housekeeping(now=LATER) if isinstance(r, PreferenceLabel)]
    alone = Processor(config(tmp_path, "one").model_copy(update={"records": labels}))
    alone.process([interaction("r"), thumbs[0]])
    [one] = [r for r in alone.housekeeping(now=LATER) if isinstance(r, PreferenceLabel)]
    assert label.n_signals == 1
    # No more confident than one thumb (less: the class's running scale has now seen the
    # same thumb twenty times, so it says less, like a named rater's would).
    assert label.confidence <= one.confidence
    assert drops(voice.SUPERSEDED) - before == 19
    status = statuses(processor)
    assert status["t19"] == ("joined", None)
    assert all(status[f"t{i}"] == ("dropped", voice.SUPERSEDED) for i in range(19))


def test_a_flipped_thumb_replaces_the_first(tmp_path: Path) -> None:
    processor = Processor(config(tmp_path, "flip"))
    processor.process([interaction("r"), feedback("up", "r", FeedbackKind.thumb, 1, "u")])
    processor.process([feedback("down", "r", FeedbackKind.thumb, -1, "u", received_ms=3_000)])
    [label] = [r for r in processor.housekeeping(now=LATER) if isinstance(r, PreferenceLabel)]
    assert not label.desirable and label.n_signals == 1
    assert statuses(processor)["up"] == ("dropped", voice.SUPERSEDED)


def test_repeated_clicks_beyond_the_limit_are_dropped(tmp_path: Path) -> None:
    processor = Processor(config(tmp_path, "clicks"))
    before = drops(voice.REPEAT_LIMIT)
    copies = [feedback(f"c{i}", "r", FeedbackKind.click, "copy", "u") for i in range(10)]
    processor.process([interaction("r"), *copies])
    limit = FusionConfig().max_signals_per_rater
    assert drops(voice.REPEAT_LIMIT) - before == 10 - limit
    status = statuses(processor)
    assert [status[f"c{i}"][0] for i in range(10)] == ["joined"] * limit + ["dropped"] * (
        10 - limit
    )


def test_a_far_future_client_ts_changes_no_rate_limit_decision(tmp_path: Path) -> None:
    """One accepted event a minute: three a minute apart by server time are accepted,
    whatever the first one's client clock says (it used to pin the window there)."""
    cfg = config(tmp_path, "future")
    cfg = cfg.model_copy(update={"fusion": FusionConfig(rater_rate_limit_per_min=1)})
    processor = Processor(cfg)
    rids = ["r0", "r1", "r2"]
    processor.process([interaction(rid) for rid in rids])
    for i, rid in enumerate(rids):
        ts = FAR_FUTURE_MS if i == 0 else None
        event = feedback(f"e{i}", rid, FeedbackKind.thumb, 1, "u", 2_000 + 61_000 * i, ts)
        processor.process([event])
    assert {statuses(processor)[f"e{i}"] for i in range(3)} == {("joined", None)}


def test_a_far_future_client_ts_pins_no_rate_limit_state(tmp_path: Path) -> None:
    processor = Processor(config(tmp_path, "pinned"))
    processor.process([interaction("r")])
    spam = [
        feedback(f"s{k}", "r", FeedbackKind.click, "copy", f"u{k}", 2_000, FAR_FUTURE_MS)
        for k in range(50)
    ]
    processor.process(spam)
    processor.process([feedback("late", "r", FeedbackKind.thumb, 1, "v", 200_000)])
    assert len(processor.fuser.limiter) == 1  # only "v": the others' windows expired
