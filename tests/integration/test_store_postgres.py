"""The preference store on a real PostgreSQL (a throwaway server: tests/integration/
postgres.py). The processor's whole pipeline stores and answers on it exactly what it does
on SQLite; a replayed batch changes nothing (the ON CONFLICT paths); timestamps take 64
bits; processors may create the tables together; and what the decoders refuse is what
PostgreSQL refuses, no less. No broker here: batches go straight to the processor (the
unit suite's stream). The poison records through the broker: test_poison_records."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DataError

from streaming import store as s
from streaming.events import (
    ARM_LEN,
    HASH_LEN,
    ID_LEN,
    INT_MAX,
    INT_MIN,
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    ChatMessage,
    FeedbackEvent,
    FeedbackKind,
    InteractionEvent,
    PreferenceLabel,
    Unstorable,
    WireFeedback,
    WireInteraction,
    WireMessage,
    decode_feedback,
    decode_interaction,
    now_ms,
)
from streaming.processor import Processor, ProcessorConfig, prompt_hash
from streaming.store import PreferenceStore
from tests.integration.postgres import PostgresServer
from tests.unit.test_processor_fast import LATER, Rec, config, run, snapshot, stream

Tables = tuple[dict[str, Any], list[str]]
ADAPTERS = ["base", "v1"]  # the stream's


@pytest.fixture(scope="module")
def batches() -> list[list[Rec]]:
    return stream(400)


@pytest.fixture(scope="module")
def on_sqlite(batches: list[list[Rec]], tmp_path_factory: pytest.TempPathFactory) -> Tables:
    return run(config(tmp_path_factory.mktemp("sqlite"), "reference"), batches)


def on(url: str, tmp_path: Path) -> ProcessorConfig:
    return config(tmp_path, "unused").model_copy(update={"store_url": url})


@pytest.mark.parametrize("restart_every", [0, 7], ids=["one processor", "restarts"])
def test_the_stream_stores_on_postgresql_what_it_stores_on_sqlite(
    restart_every: int,
    batches: list[list[Rec]],
    on_sqlite: Tables,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """Every path of the pipeline (held feedback, duplicates, superseded votes, edits,
    sibling pairs, settling); restarted now and then, each restart reading it all back
    from PostgreSQL. The same rows, records and learned state, to the last bit."""
    cfg = on(postgres_url, tmp_path)
    tables, records = run(cfg, batches, restart_every=restart_every, direct=False)
    assert tables == on_sqlite[0]
    assert records == on_sqlite[1]


def fill(cfg: ProcessorConfig, batches: list[list[Rec]]) -> PreferenceStore:
    """The batches processed, the feedback windows closed now and then, not after the last."""
    processor = Processor(cfg)
    for i, batch in enumerate(batches):
        if i % 3 == 2:
            processor.housekeeping(now=LATER)
        processor.process(list(batch))
    return processor.store


def answers(store: PreferenceStore) -> dict[str, Any]:
    """What the canary controller, the status page and the trainer ask the store."""
    pairs, labels = store.records_since(0, limit=100_000)
    rids = sorted(r["response_id"] for r in store.all(s.interactions))
    weights = store.fusion_weights()
    return {
        "outcomes": sorted(map(unwritten, store.outcomes_since(ADAPTERS, 0)), key=str),
        "arms": store.conversations_by_arm(0),
        # Means the database takes: PostgreSQL's sum goes otherwise, the last bit may differ.
        "buckets": sorted(
            (adapter, bucket, n, round(mean, 12))
            for adapter, bucket, n, mean in store.score_buckets(ADAPTERS, 0, bucket_ms=50)
        ),
        "feedback_on_settled": store.feedback_on_settled(0),
        "pairs": sorted(pairs, key=lambda p: p["pair_id"]),
        "labels": sorted(labels, key=lambda x: x["response_id"]),
        "records": store.count_records_since(0),
        "cut_off": store.cut_off(rids),
        "recent_prompts": store.recent_prompts(25),
        "unsettled": store.unsettled(),
        "weights": weights and weights["weights"],
        "counts": {t.name: store.count(t) for t in s.meta.sorted_tables},
    }


def unwritten(row: dict[str, Any]) -> dict[str, Any]:
    """The row less the time it was written (now, a different now in each store)."""
    return {k: v for k, v in row.items() if k != "updated_ms"}


def test_the_readers_questions_are_answered_as_on_sqlite(
    batches: list[list[Rec]], postgres_url: str, tmp_path: Path
) -> None:
    half = batches[: len(batches) // 2]  # some responses settled, some not
    expected = answers(fill(config(tmp_path, "sqlite"), half))
    got = answers(fill(on(postgres_url, tmp_path), half))
    assert got == expected
    assert got["outcomes"] and got["buckets"] and got["pairs"] and got["unsettled"]


def test_a_replayed_batch_changes_nothing(
    batches: list[list[Rec]], postgres_url: str, tmp_path: Path
) -> None:
    cfg = on(postgres_url, tmp_path)
    first = Processor(cfg)
    for batch in batches[:40]:
        first.process(list(batch))
        first.housekeeping(now=LATER)
    before = snapshot(first.store)
    again = Processor(cfg)  # restarted before the offsets of the last batches were committed
    for batch in batches[30:40]:
        assert again.process(list(batch)) == []
    assert snapshot(again.store) == before


def label(score: float) -> PreferenceLabel:
    return PreferenceLabel(
        response_id="r1", prompt=[ChatMessage(role="user", content="Hi?")], completion="Hello.",
        desirable=score > 0, weight=abs(score), score=score, confidence=0.5, scenario="general",
        adapter="base", n_signals=1,
    )  # fmt: skip


def test_an_upsert_replaces_and_an_insert_keeps_what_is_stored(postgres_url: str) -> None:
    store = PreferenceStore(postgres_url)
    for score, at in ((0.5, 1), (-0.25, 2)):
        with store.transaction() as tx:
            store.upsert_labels(tx, [s.label_row(label(score), at)])
    [row] = store.all(s.labels)
    assert (row["score"], row["desirable"], row["updated_ms"]) == (-0.25, False, 2)
    first, second = (interaction_event(f"Answer {i}.") for i in (1, 2))
    for event in (first, second):
        with store.transaction() as tx:
            store.add_interactions(tx, [row_of(event)])
    [stored] = store.all(s.interactions)
    assert stored["event"]["completion"] == "Answer 1."


def test_timestamps_and_counts_past_32_bits_are_stored(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL's INTEGER has 32 bits: today's unix milliseconds need 41."""
    processor = Processor(on(postgres_url, tmp_path))
    now = now_ms()
    event = interaction_event(created_ms=now, completion_tokens=2**40)
    thumb = FeedbackEvent(
        event_id="e1", response_id="r1", conversation_id="c1", user_hash="u1",
        kind=FeedbackKind.thumb, value=1, received_ms=now,
    )  # fmt: skip
    processor.process(
        [Rec(TOPIC_INTERACTIONS, event.model_dump_json().encode()),
         Rec(TOPIC_FEEDBACK, thumb.model_dump_json().encode())]
    )  # fmt: skip
    processor.housekeeping(now=now + int(processor.config.settle_s * 1000) + 1)
    [outcome] = processor.store.all(s.outcomes)
    assert (outcome["created_ms"], outcome["completion_tokens"]) == (now, 2**40)
    assert [f["received_ms"] for f in processor.store.all(s.feedback)] == [now]
    assert processor.store.outcomes_since(["base"], now - 1)


def test_processors_starting_together_all_create_the_tables(postgres: PostgresServer) -> None:
    """The loser of a race to CREATE a table fails, on PostgreSQL sometimes on a unique
    index of its catalog; each looks again and finds the winner's tables."""
    for _ in range(3):
        url = postgres.create_database("race")
        start = threading.Barrier(4)
        failures: list[BaseException] = []

        def open_store(
            url: str = url, start: threading.Barrier = start, failures: list[Any] = failures
        ) -> None:
            start.wait(timeout=30)
            try:
                PreferenceStore(url).close()
            except Exception as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert not any(thread.is_alive() for thread in threads)


# --- the decoders' limits are PostgreSQL's -------------------------------------------------
def interaction_event(completion: str = "Hello.", **changes: Any) -> InteractionEvent:
    event = InteractionEvent(
        response_id="r1", conversation_id="c1", user_hash="u1", model="m", adapter="base",
        arm="stable", messages=[ChatMessage(role="user", content="Hi?")], completion=completion,
        prompt_tokens=2, completion_tokens=2, ttft_ms=1, latency_ms=2, created_ms=1_000,
    )  # fmt: skip
    return event.model_copy(update=changes)


def feedback_event(**changes: Any) -> FeedbackEvent:
    event = FeedbackEvent(
        event_id="e1", response_id="r1", conversation_id="c1", user_hash="u1",
        kind=FeedbackKind.comment, value="Thanks!", received_ms=2_000,
    )  # fmt: skip
    return event.model_copy(update=changes)


def text_of(event: InteractionEvent | FeedbackEvent) -> str:
    # json.dumps writes what a producer might: Infinity and NaN too (pydantic writes null).
    return json.dumps(event.model_dump())


def row_of(event: InteractionEvent | FeedbackEvent) -> s.Row:
    """The event's row, as the processor makes it but without the decoder's check (a
    struct's constructor checks nothing)."""
    text, fields = text_of(event), event.model_dump()
    if isinstance(event, InteractionEvent):
        messages = [WireMessage(**m) for m in fields.pop("messages")]
        wire = WireInteraction(**fields, messages=messages)
        return s.interaction_row(wire, text, prompt_hash(messages))
    return s.feedback_row(WireFeedback(**fields), text, "pending", None, None)


# Values at the limit, in characters PostgreSQL counts as one each (UTF-8 takes 2 to 4
# bytes for them), and the numbers at the ends of the store's range.
AT_LIMIT: tuple[InteractionEvent, FeedbackEvent] = (
    interaction_event(
        response_id="é" * ID_LEN, conversation_id="😀" * ID_LEN, user_hash="ü" * HASH_LEN,
        adapter="a" * ID_LEN, arm="—" * ARM_LEN, created_ms=INT_MAX, latency_ms=1.7e308,
    ),
    feedback_event(
        event_id="€" * ID_LEN, response_id="é" * ID_LEN, conversation_id="😀" * ID_LEN,
        user_hash="ü" * HASH_LEN, received_ms=INT_MIN, value="a \\u0000 is not a NUL",
    ),
)  # fmt: skip
# One step past it: (the event, the reason the decoder gives).
PAST_LIMIT = [
    (interaction_event(response_id="é" * (ID_LEN + 1)), "too_long"),
    (interaction_event(conversation_id="😀" * (ID_LEN + 1)), "too_long"),
    (interaction_event(user_hash="ü" * (HASH_LEN + 1)), "too_long"),
    (interaction_event(adapter="a" * (ID_LEN + 1)), "too_long"),
    (interaction_event(arm="—" * (ARM_LEN + 1)), "too_long"),
    (interaction_event(conversation_id="c\x00"), "nul_byte"),
    (interaction_event(created_ms=INT_MAX + 1), "out_of_range"),
    (interaction_event(latency_ms=math.inf), "out_of_range"),
    (feedback_event(event_id="€" * (ID_LEN + 1)), "too_long"),
    (feedback_event(user_hash="ü" * (HASH_LEN + 1)), "too_long"),
    (feedback_event(user_hash="u\x00"), "nul_byte"),
    (feedback_event(received_ms=INT_MIN - 1), "out_of_range"),
    (feedback_event(kind=FeedbackKind.dwell, value=math.nan), "out_of_range"),
]


def test_what_the_decoders_let_through_postgresql_stores(postgres_url: str, tmp_path: Path) -> None:
    processor = Processor(on(postgres_url, tmp_path))
    interaction, fb = AT_LIMIT
    records = [
        Rec(TOPIC_INTERACTIONS, text_of(interaction).encode()),
        Rec(TOPIC_FEEDBACK, text_of(fb).encode()),
    ]
    batch = processor.parse(records)
    assert batch.dead == []
    processor.process_batch(batch)
    [stored] = processor.store.all(s.interactions)
    assert (stored["response_id"], stored["created_ms"]) == ("é" * ID_LEN, INT_MAX)
    [joined] = processor.store.all(s.feedback)
    assert (joined["status"], joined["received_ms"]) == ("joined", INT_MIN)


@pytest.mark.parametrize(("event", "reason"), PAST_LIMIT)
def test_what_the_decoders_refuse_postgresql_refuses(
    event: InteractionEvent | FeedbackEvent, reason: str, postgres_url: str
) -> None:
    """Refused by the decoder (so the processor sends it to the dead letters), and by
    PostgreSQL had it got there: the whole batch would fail, and its replay."""
    decode = decode_interaction if isinstance(event, InteractionEvent) else decode_feedback
    with pytest.raises(Unstorable) as refused:
        decode(text_of(event))
    assert refused.value.reason == reason
    store = PreferenceStore(postgres_url)
    add = store.add_interactions if isinstance(event, InteractionEvent) else store.add_feedback
    with pytest.raises(DataError), store.transaction() as tx:
        add(tx, [row_of(event)])
    store.close()
