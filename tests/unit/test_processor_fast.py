"""The processor's pipeline without Kafka: what it remembers between batches (recent
interactions, joined signals, labels, held feedback; the fuser's state saved one row per
rater) must never change what it writes. Batches go straight to ``Processor.process``."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from monitoring import metrics as m
from streaming import store as s
from streaming.events import (
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    ChatMessage,
    FeedbackEvent,
    FeedbackKind,
    InteractionEvent,
    PreferencePair,
    Unstorable,
    WireFeedback,
    WireInteraction,
    WireMessage,
    decode_feedback,
    decode_interaction,
)
from streaming.fusion import FusionConfig
from streaming.processor import Processor, ProcessorConfig, prompt_hash
from streaming.records import Record, RecordConfig
from streaming.store import PreferenceStore


class Rec(NamedTuple):
    """What the processor reads of a Kafka record."""

    topic: str
    value: bytes | None
    partition: int = 0
    offset: int = 0
    timestamp: int = 0
    key: bytes | None = None


FEEDBACK: list[tuple[FeedbackKind, object]] = [
    (FeedbackKind.thumb, 1), (FeedbackKind.thumb, -1), (FeedbackKind.rating, 5),
    (FeedbackKind.rating, 1), (FeedbackKind.rating, 3), (FeedbackKind.click, "copy"),
    (FeedbackKind.click, "regenerate"), (FeedbackKind.dwell, 40_000), (FeedbackKind.dwell, 900),
    (FeedbackKind.comment, "wrong and too long"), (FeedbackKind.comment, "great, thanks!"),
    (FeedbackKind.edit, "A better answer, rewritten by the user."),
    (FeedbackKind.rating, 7),  # uninterpretable: stored as dropped
]  # fmt: skip


def stream(n: int, seed: int = 0) -> list[list[Rec]]:
    """Interactions (regenerated siblings of a few prompts per conversation) and their
    feedback: some before the interaction, some duplicated, some for an interaction that
    never comes, a few invalid records; then cut into uneven batches, some of them all
    feedback (as Kafka hands out one partition's records at a time)."""
    rng = random.Random(seed)
    events: list[Rec] = []
    for i in range(n):
        conv, rid = f"c{i % 9}", f"r{i}"
        interaction = InteractionEvent(
            response_id=rid, conversation_id=conv, user_hash=f"u{i % 5}", model="m",
            adapter=rng.choice(["base", "v1"]), arm="stable",
            messages=[ChatMessage(role="user", content=f"Question {i % 4}: é \"quoted\"?")],
            completion=f"Answer {i}.", prompt_tokens=3, completion_tokens=2, ttft_ms=1,
            latency_ms=2, created_ms=1_000 + i,
        )  # fmt: skip
        mine = [Rec(TOPIC_INTERACTIONS, interaction.model_dump_json().encode())]
        for j in range(rng.randrange(0, 5)):
            kind, value = rng.choice(FEEDBACK)
            rater = rng.choice([f"rater{rng.randrange(12)}", None])
            fb = FeedbackEvent(
                event_id=f"e{i}-{j}", response_id=rid if rng.random() > 0.03 else f"gone{i}",
                conversation_id=conv, user_hash=rater, kind=kind, value=value,  # type: ignore[arg-type]
                received_ms=2_000 + 10 * i + j,
            )  # fmt: skip
            mine.append(Rec(TOPIC_FEEDBACK, fb.model_dump_json().encode()))
        if rng.random() < 0.3:
            mine.append(mine.pop(0))  # feedback first
        if rng.random() < 0.1:
            mine.append(mine[-1])  # an at-least-once duplicate
        if rng.random() < 0.03:
            mine.append(Rec(TOPIC_FEEDBACK, b'{"not": "an event"}'))
        events += mine
    # Feedback runs ahead of interactions, as when one partition is read before another.
    events.sort(key=lambda r: (r.topic == TOPIC_INTERACTIONS) and rng.random() < 0.5)
    batches, i = [], 0
    while i < len(events):
        size = rng.randrange(1, 60)
        batches.append(events[i : i + size])
        i += size
    return batches


def config(tmp_path: Path, name: str, cache: int = 50_000) -> ProcessorConfig:
    return ProcessorConfig(
        store_url=f"sqlite:///{tmp_path / name}.sqlite",
        cache_responses=cache,
        cache_conversations=cache,
        records=RecordConfig(pair_margin=0.3),
        # Rate-limit and coordination windows are not saved: a restart would let through
        # what one process drops, or forget a lockstep ring (this stream's raters vote
        # within milliseconds of each other). Not what these tests are about.
        fusion=FusionConfig(
            rater_rate_limit_per_min=10_000,
            anonymous_rate_limit_per_min=10_000,
            newcomer_chats=0,
            lockstep_factor=1.0,
            edit_budget=10_000,
        ),
    )


def snapshot(store: PreferenceStore) -> dict[str, Any]:
    """Every table (JSON columns parsed), write times left out."""
    out: dict[str, Any] = {}
    for table in (s.interactions, s.feedback, s.labels, s.pairs):
        key = table.primary_key.columns.values()[0].name
        rows = {}
        for row in store.all(table):
            row = {k: v for k, v in row.items() if k != "updated_ms"}
            rows[row[key]] = row
        out[table.name] = rows
    out["fuser"] = store.load_fuser()
    return out


# Later than every response's feedback window (120 s) in the stream, within the grace
# period of its held feedback (300 s): windows close, nothing is orphaned.
LATER = 130_000


def records(out: list[Record]) -> list[str]:
    return sorted(r.model_dump_json() for r in out)


def run(
    cfg: ProcessorConfig,
    batches: list[list[Rec]],
    restart_every: int = 0,
    direct: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    def start() -> Processor:
        processor = Processor(cfg)
        processor.store.direct = direct  # False: SQLAlchemy Core, as for other databases
        return processor

    processor, out = start(), []
    for i, batch in enumerate(batches):
        if restart_every and i and i % restart_every == 0:
            processor.store.close()
            processor = start()  # nothing remembered, the fuser from the store
        out += processor.process(list(batch))
        if i % 3 == 2:  # windows close now and then: the rest of the feedback comes late
            out += processor.housekeeping(now=LATER)
    out += processor.housekeeping(now=LATER)
    assert processor.store.load_fuser() == processor.fuser.state_dict()
    return snapshot(processor.store), records(out)


@pytest.fixture(scope="module")
def batches() -> list[list[Rec]]:
    return stream(400)


@pytest.fixture(scope="module")
def warm(
    batches: list[list[Rec]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], list[str]]:
    return run(config(tmp_path_factory.mktemp("warm"), "warm"), batches)


def test_the_stream_exercises_every_path(warm: tuple[dict[str, Any], list[str]]) -> None:
    tables, out = warm
    statuses = {(r["status"], r["status_reason"]) for r in tables["feedback"].values()}
    assert {("joined", None), ("pending", None), ("dropped", "uninterpretable")} <= statuses
    provenances = {r["provenance"] for r in tables["pairs"].values()}
    assert provenances == {"edit", "regenerate"}
    assert len(tables["labels"]) > 50 and out
    assert len(tables["fuser"]["raters"]) == 12 + 1  # and the anonymous class


@pytest.mark.parametrize("how", ["restarted every batch", "tiny caches", "core", "restarts"])
def test_what_is_remembered_changes_nothing(
    how: str,
    batches: list[list[Rec]],
    warm: tuple[dict[str, Any], list[str]],
    tmp_path: Path,
) -> None:
    """The same stream through a processor that remembers nothing (a new one for every
    batch, reading all from the store), one whose caches hold 3 entries, one writing
    through SQLAlchemy Core, and one restarted now and then: the same store, the same
    records, the same learned state."""
    if how == "restarted every batch":
        got = run(config(tmp_path, "cold"), batches, restart_every=1)
    elif how == "tiny caches":
        got = run(config(tmp_path, "tiny", cache=3), batches)
    elif how == "core":
        got = run(config(tmp_path, "core"), batches, direct=False)
    else:
        got = run(config(tmp_path, "restarts", cache=20), batches, restart_every=7)
    assert got[0] == warm[0]
    assert got[1] == warm[1]


def test_a_replayed_batch_changes_nothing(batches: list[list[Rec]], tmp_path: Path) -> None:
    cfg = config(tmp_path, "replay")
    processor = Processor(cfg)
    for batch in batches[:40]:
        processor.process(list(batch))
        processor.housekeeping(now=LATER)
    before = snapshot(processor.store)
    again = Processor(cfg)  # restarted before the offsets of the last batches were committed
    for batch in batches[30:40]:
        assert again.process(list(batch)) == []
    assert snapshot(again.store) == before


def test_a_failed_batch_is_forgotten(
    batches: list[list[Rec]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = Processor(config(tmp_path, "failed"))
    for batch in batches[:20]:
        processor.process(list(batch))
    write = processor.store.write

    def failing(conn: Any, table: Any, rows: Any, replace: bool) -> None:
        if table is s.labels and rows:
            raise RuntimeError("disk full")
        write(conn, table, rows, replace)

    monkeypatch.setattr(processor.store, "write", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        for batch in batches[20:]:
            processor.process(list(batch))
            processor.housekeeping(now=LATER)
    assert not processor._interactions and not processor._joined and not processor._pending
    monkeypatch.setattr(processor.store, "write", write)
    processor.process(list(batches[-1]))
    # The rolled-back batch's raters were saved in full with the next one.
    assert processor.store.load_fuser() == processor.fuser.state_dict()


def test_fuser_state_saved_before_it_had_rater_rows_is_read(
    batches: list[list[Rec]], tmp_path: Path
) -> None:
    cfg = config(tmp_path, "old")
    first = Processor(cfg)
    for batch in batches[:20]:
        first.process(list(batch))
    full = first.fuser.state_dict()
    with first.store.transaction() as tx:  # as the processor saved it before rater rows
        tx.execute(s.raters.delete())
        first.store.save_state(tx, s.FUSER, full)
    second = Processor(cfg)
    assert second.fuser.state_dict() == full
    second.process(list(batches[20]))
    assert second.store.load_fuser() == second.fuser.state_dict()
    assert second.store.load_state(s.FUSER)["raters"] == []  # type: ignore[index]
    with second.store.engine.connect() as conn:
        assert len(conn.execute(select(s.raters)).all()) == len(full["raters"])


@pytest.mark.parametrize("good_first", [True, False])
def test_siblings_labelled_together_make_one_pair(good_first: bool, tmp_path: Path) -> None:
    """Two answers to one prompt, from different adapters, both judged in one batch: one
    pair, whichever is processed first, marked with the adapter of the rejected answer."""

    def answer(rid: str, adapter: str) -> Rec:
        event = InteractionEvent(
            response_id=rid, conversation_id="c", user_hash="u", model="m", adapter=adapter,
            arm="stable", messages=[ChatMessage(role="user", content="Same question?")],
            completion=f"Answer {rid}.", prompt_tokens=3, completion_tokens=2, ttft_ms=1,
            latency_ms=2, created_ms=1_000,
        )  # fmt: skip
        return Rec(TOPIC_INTERACTIONS, event.model_dump_json().encode())

    def judged(rid: str, good: bool) -> list[Rec]:
        signals = [(FeedbackKind.thumb, 1 if good else -1), (FeedbackKind.rating, 5 if good else 1)]
        return [
            Rec(TOPIC_FEEDBACK, FeedbackEvent(
                event_id=f"{rid}-{i}", response_id=rid, conversation_id="c",
                user_hash=f"rater{i}", kind=kind, value=value, received_ms=2_000 + i,  # type: ignore[arg-type]
            ).model_dump_json().encode())
            for i, (kind, value) in enumerate(signals)
        ]  # fmt: skip

    good = [answer("good", "v2"), *judged("good", True)]
    bad = [answer("bad", "v1"), *judged("bad", False)]
    processor = Processor(config(tmp_path, "siblings"))
    assert processor.process(good + bad if good_first else bad + good) == []  # not settled yet
    out = processor.housekeeping(now=LATER)
    pairs = [r for r in out if isinstance(r, PreferencePair) and r.provenance == "regenerate"]
    assert len(pairs) == 1
    [pair] = pairs
    assert (pair.chosen_response_id, pair.rejected_response_id) == ("good", "bad")
    assert pair.adapter == "v1"


@pytest.mark.parametrize("regenerate", [0.0, 0.5])
def test_a_settling_response_calibrates_against_its_outcome(
    regenerate: float, tmp_path: Path
) -> None:
    """An unvoted answer that was regenerated: when its window closes, dwell learns from
    it if the regenerate click is an outcome (never the click itself), else nothing does."""
    event = InteractionEvent(
        response_id="r", conversation_id="c", user_hash="u", model="m", adapter="base",
        arm="stable", messages=[ChatMessage(role="user", content="A question?")],
        completion="An answer.", prompt_tokens=3, completion_tokens=2, ttft_ms=1,
        latency_ms=2, created_ms=1_000,
    )  # fmt: skip
    feedback = [
        FeedbackEvent(
            event_id=f"r-{i}", response_id="r", conversation_id="c", user_hash="u",
            kind=kind, value=value, received_ms=2_000 + i,
        )
        for i, (kind, value) in enumerate(
            [(FeedbackKind.click, "regenerate"), (FeedbackKind.dwell, 1_500)]
        )
    ]  # fmt: skip
    weights = {**FusionConfig().calibration_outcome_weights, "regenerate": regenerate}
    fusion = FusionConfig(calibration_outcome_weights=weights)
    processor = Processor(config(tmp_path, "outcome").model_copy(update={"fusion": fusion}))
    processor.process(
        [Rec(TOPIC_INTERACTIONS, event.model_dump_json().encode())]
        + [Rec(TOPIC_FEEDBACK, e.model_dump_json().encode()) for e in feedback]
    )
    assert processor.fuser.state_dict()["calibration"] == {}  # not settled yet
    processor.housekeeping(now=LATER)
    learned = processor.store.load_fuser()["calibration"]  # type: ignore[index]
    assert set(learned) == ({"dwell"} if regenerate else set())


def test_prompt_hash_unchanged() -> None:
    cases = [
        [ChatMessage(role="user", content='Hi "there"\n\\ é 中 😀 \t\x01')],
        [ChatMessage(role="system", content=""), ChatMessage(role="user", content="x")],
        [],
    ]
    for messages in cases:
        stored_form = json.dumps([m.model_dump() for m in messages], sort_keys=True)
        assert prompt_hash(messages) == hashlib.sha256(stored_form.encode()).hexdigest()[:32]


def test_events_are_stored_as_received(tmp_path: Path) -> None:
    processor = Processor(config(tmp_path, "raw"))
    value = (
        b'{"event_id": "x1", "response_id": "nobody", "conversation_id": "c",'
        b' "kind": "thumb", "value": 1, "received_ms": 5}'
    )
    processor.process([Rec(TOPIC_FEEDBACK, value)])
    [row] = processor.store.all(s.feedback)
    assert row["status"] == "pending" and row["event"] == json.loads(value)


# --- the processor's msgspec mirrors of the event models ---------------------------------
MIRRORS: list[tuple[type[BaseModel], type[msgspec.Struct]]] = [
    (InteractionEvent, WireInteraction), (FeedbackEvent, WireFeedback),
    (ChatMessage, WireMessage),
]  # fmt: skip


@pytest.mark.parametrize(("model", "wire"), MIRRORS)
def test_mirrors_have_the_models_fields_and_defaults(
    model: type[BaseModel], wire: type[msgspec.Struct]
) -> None:
    mirrored = {f.name: None if f.required else f.default for f in msgspec.structs.fields(wire)}
    expected = {
        name: None if f.is_required() else f.default for name, f in model.model_fields.items()
    }
    assert mirrored == expected


# JSON values swapped in for a field: every type the models meet, and the edge cases where
# a fast decoder could read differently (coercions, overflow, non-finite numbers).
ODD_VALUES = [
    "null", "true", "false", "0", "-1", "1", "1.0", "2.5", "-0", "1e400", "-1e-400", "NaN",
    str(2**64), str(2**70), '"5"', '"1.0"', '""', '"true"', '"thumb"', '"copy"', '"user"',
    '"\\ud800"', '"\\u0000x"', "[]", "{}", '[{"role": "user", "content": "x"}]',
    '[{"role": "user", "content": "x", "name": "n"}]', '[{"role": "robot", "content": "x"}]',
    '[{"role": "user"}]',
]  # fmt: skip


def mutations(event: BaseModel) -> list[bytes]:
    fields = json.loads(event.model_dump_json())
    out = [event.model_dump_json().encode()]
    for name in fields:
        for odd in ODD_VALUES:
            changed = {k: (odd if k == name else json.dumps(v)) for k, v in fields.items()}
            out.append(("{" + ",".join(f'"{k}":{v}' for k, v in changed.items()) + "}").encode())
        out.append(json.dumps({k: v for k, v in fields.items() if k != name}).encode())
    out.append(json.dumps({**fields, "extra": 1}).encode())
    out.append(event.model_dump_json().encode()[:-1] + b', "event_type": "other"}')
    out.append(event.model_dump_json().encode() + b"x")
    return out


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)  # NaN compares equal to itself here


@pytest.mark.parametrize(("model", "wire"), MIRRORS[:2])
def test_what_a_mirror_accepts_the_model_accepts_the_same(
    model: type[BaseModel], wire: type[msgspec.Struct], batches: list[list[Rec]]
) -> None:
    topic = TOPIC_INTERACTIONS if model is InteractionEvent else TOPIC_FEEDBACK
    samples = [r.value for batch in batches[:5] for r in batch if r.topic == topic][:10]
    decode = decode_interaction if model is InteractionEvent else decode_feedback
    accepted = fell_back = 0
    for sample in samples:
        for data in mutations(model.model_validate_json(sample)):
            try:
                expected: Any = model.model_validate_json(data).model_dump(mode="json")
            except ValidationError:
                expected = None
            try:
                fast: Any = msgspec.to_builtins(msgspec.json.decode(data, type=wire))
            except msgspec.DecodeError:
                fast = None
                fell_back += 1
            if fast is not None:
                accepted += 1
                assert canonical(fast) == canonical(expected), data  # never more than pydantic
            try:  # with the fallback: exactly pydantic's verdict and reading
                got: Any = msgspec.to_builtins(decode(data))
            except ValidationError:
                got = None
            except Unstorable:  # valid, but not for the store: test_poison's business
                continue
            assert canonical(got) == canonical(expected), data
    assert accepted > 50 and fell_back > 50


def test_joined_feedback_is_counted_by_kind_and_the_arm_that_answered(tmp_path: Path) -> None:
    """livealign_feedback_joined_total: every join once, labelled from its interaction."""

    def counts() -> dict[tuple[str, ...], float]:
        samples = [s for metric in m.FEEDBACK_JOINED.collect() for s in metric.samples]
        return {
            (s.labels["kind"], s.labels["adapter"], s.labels["arm"]): s.value
            for s in samples
            if s.name.endswith("_total")
        }

    def joins() -> float:
        return REGISTRY.get_sample_value("livealign_processor_joins_total") or 0.0

    before, joins_before = counts(), joins()
    run(config(tmp_path, "counted"), stream(60, seed=1))
    added = {k: v - before.get(k, 0) for k, v in counts().items() if v > before.get(k, 0)}
    assert sum(added.values()) == joins() - joins_before > 0
    assert {adapter for _, adapter, _ in added} == {"base", "v1"}
    assert {arm for _, _, arm in added} == {"stable"}
    assert {kind for kind, _, _ in added} <= {k.value for k in FeedbackKind}
    assert len({kind for kind, _, _ in added}) > 3


def test_the_weights_it_fuses_with_are_saved_for_readers(
    batches: list[list[Rec]], tmp_path: Path
) -> None:
    """The status page reads them from the store: after a batch, and after the windows
    close and calibrate the implicit weights, they are the fuser's own."""
    processor = Processor(config(tmp_path, "weights"))
    defaults = processor.fuser.weights()
    processor.process(list(batches[0]))
    assert processor.store.fusion_weights()["weights"] == defaults  # type: ignore[index]
    for batch in batches[1:]:
        processor.process(list(batch))
    processor.housekeeping(now=LATER)
    saved = processor.store.fusion_weights()
    assert saved is not None
    assert saved["weights"] == processor.fuser.weights() != defaults
