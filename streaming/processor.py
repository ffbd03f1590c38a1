"""The stream processor: Kafka feedback in, fused training records out.

Reads ``livealign.interactions`` and ``livealign.feedback`` as one consumer group. Each
polled batch goes through one pipeline, top to bottom, inside one store transaction:

    parse -> store interactions -> clean feedback (invalid, duplicate, rate limit)
          -> join feedback to interactions (or hold it) -> signals (normalized per rater)
          -> fuse each touched response -> labels + pairs (upserted) -> fuser state

then the records go to ``livealign.preferences`` and only then are offsets committed.
Replaying a batch after a crash finds its events already stored and changes nothing.
Both topics are keyed by conversation id, so an interaction, its feedback and its
regenerated siblings share a partition and so a processor instance: joins stay local.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection, and_, select, update

from monitoring import metrics as m
from streaming import store as s
from streaming.events import (
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    TOPIC_PREFERENCES,
    FeedbackEvent,
    InteractionEvent,
    PreferenceLabel,
    PreferencePair,
    now_ms,
)
from streaming.fusion import Fuser, FusionConfig, Signal, signal_from_event
from streaming.store import PreferenceStore

log = logging.getLogger(__name__)
Record = PreferencePair | PreferenceLabel


class ProcessorConfig(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "livealign-processor"
    store_url: str = Field("sqlite:///var/preferences.sqlite", description="SQLAlchemy URL.")
    grace_s: float = Field(300.0, description="How long feedback waits for its interaction.")
    pair_margin: float = Field(0.5, description="Fused-score gap that makes siblings a pair.")
    settle_s: float = Field(
        120.0,
        description="A response's feedback window: after it, its signals calibrate the "
        "implicit-signal weights (once per response, so none is counted twice).",
    )
    max_poll_records: int = 2000
    session_timeout_ms: int = 10_000
    request_timeout_ms: int = 15_000
    fusion: FusionConfig = Field(default_factory=FusionConfig)


def prompt_hash(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:32]


def pair_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dataclasses.dataclass
class Batch:
    """What one poll brought in, parsed."""

    interactions: list[InteractionEvent] = dataclasses.field(default_factory=list)
    feedback: list[FeedbackEvent] = dataclasses.field(default_factory=list)


class Processor:
    def __init__(self, config: ProcessorConfig) -> None:
        self.config = config
        self.store = PreferenceStore(config.store_url)
        self.fuser = Fuser(config.fusion)
        if saved := self.store.load_state("fuser"):
            self.fuser.load_state_dict(saved)
        self._last_orphan_check = 0.0

    # --- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        consumer = self._consumer()
        producer = KafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers.split(","),
            acks="all",
            compression_type="lz4",
            linger_ms=20,
            request_timeout_ms=self.config.request_timeout_ms,
        )
        log.info("processor %s consuming %s", self.config.group_id, self.config.bootstrap_servers)
        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=500, max_records=self.config.max_poll_records)
                records = [r for batch in polled.values() for r in batch]
                if records:
                    out = self.process(records)
                    for rec in out:
                        producer.send(
                            TOPIC_PREFERENCES, key=_key(rec), value=rec.model_dump_json().encode()
                        )
                    producer.flush(timeout=self.config.request_timeout_ms / 1000)
                    consumer.commit()  # only after the store write and the publish
                    self._report_lag(consumer, polled)
                self.housekeeping()
        finally:
            consumer.close()
            producer.close(timeout=5)

    def _consumer(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers.split(","),
            group_id=self.config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.config.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.config.session_timeout_ms // 4),
            request_timeout_ms=self.config.request_timeout_ms + 5000,
            max_poll_records=self.config.max_poll_records,
            client_id="livealign-processor",
        )
        consumer.subscribe([TOPIC_INTERACTIONS, TOPIC_FEEDBACK], listener=_LogRebalance())
        return consumer

    def _report_lag(self, consumer: KafkaConsumer, polled: dict[TopicPartition, Any]) -> None:
        # Tansu's end_offsets is wrong; highwater() after a fetch is right (ARCHITECTURE.md).
        for tp, batch in polled.items():
            high = consumer.highwater(tp)
            if high is not None and batch:
                m.PROC_LAG.labels(tp.topic, str(tp.partition)).set(high - batch[-1].offset - 1)

    # --- one batch ----------------------------------------------------------------------
    def process(self, records: list[Any]) -> list[Record]:
        """The pipeline for one polled batch; returns the records written."""
        start = time.perf_counter()
        batch = self.parse(records)
        with self.store.transaction() as tx:
            self.store_interactions(tx, batch.interactions)
            fresh = self.clean(tx, batch.feedback)
            touched = self.join(tx, fresh, batch.interactions)
            out = self.emit(tx, touched)
            self.store.save_state(tx, "fuser", self.fuser.state_dict())
        for scenario, weights in self.fuser.weights().items():
            for signal, weight in weights.items():
                m.FUSION_WEIGHT.labels(scenario, signal).set(weight)
        m.PROC_BATCH_SECONDS.observe(time.perf_counter() - start)
        return out

    def parse(self, records: list[Any]) -> Batch:
        batch = Batch()
        for r in records:
            m.PROC_CONSUMED.labels(r.topic).inc()
            try:
                if r.topic == TOPIC_INTERACTIONS:
                    batch.interactions.append(InteractionEvent.model_validate_json(r.value))
                else:
                    batch.feedback.append(FeedbackEvent.model_validate_json(r.value))
            except ValidationError:
                m.PROC_DROPS.labels("invalid").inc()
        return batch

    def store_interactions(self, tx: Connection, events: list[InteractionEvent]) -> None:
        rows = {
            e.response_id: {
                "response_id": e.response_id,
                "conversation_id": e.conversation_id,
                "prompt_hash": prompt_hash([msg.model_dump() for msg in e.messages]),
                "user_hash": e.user_hash,
                "adapter": e.adapter,
                "arm": e.arm,
                "created_ms": e.created_ms,
                "event": e.model_dump(mode="json"),
                "calibrated": False,
            }
            for e in events
        }
        self.store.add_new(tx, s.interactions, list(rows.values()))

    def clean(self, tx: Connection, events: list[FeedbackEvent]) -> list[FeedbackEvent]:
        """Drop duplicates (also across restarts: the store remembers every event id) and
        rate-limited raters. Dropped events are stored too, so a replay drops them again."""
        seen = self.store.existing_ids(tx, s.feedback, (e.event_id for e in events))
        fresh, dropped = [], []
        for e in events:
            if e.event_id in seen:
                m.PROC_DROPS.labels("duplicate").inc()
                continue
            seen.add(e.event_id)
            if self.fuser.allow(e.user_hash, e.client_ts or e.received_ms):
                fresh.append(e)
            else:
                m.PROC_DROPS.labels("rate_limited").inc()
                dropped.append(_feedback_row(e, "dropped", "rate_limited"))
        self.store.add_new(tx, s.feedback, dropped)
        return fresh

    def join(
        self, tx: Connection, fresh: list[FeedbackEvent], new: list[InteractionEvent]
    ) -> set[str]:
        """Attach feedback to interactions; returns the responses with new signals.
        Fresh feedback is stored with its outcome (joined, or pending: held for its
        interaction); held feedback whose interaction just arrived is updated."""
        arrived = {e.response_id: e for e in new}
        waiting = self.store.rows(tx, s.feedback, "response_id", arrived)
        held = [
            FeedbackEvent.model_validate(r["event"])
            for r in waiting
            if r["status"] in ("pending", "orphaned")
        ]
        missing = {e.response_id for e in fresh} - arrived.keys()
        found = {
            **{
                r["response_id"]: InteractionEvent.model_validate(r["event"])
                for r in self.store.rows(tx, s.interactions, "response_id", missing)
            },
            **arrived,
        }
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        touched: set[str] = set()
        for e, rows in [*((e, updates) for e in held), *((e, inserts) for e in fresh)]:
            interaction = found.get(e.response_id)
            signal = None
            if interaction is not None:
                signal = signal_from_event(e, interaction, self.config.fusion)
            if interaction is None:
                status, reason = "pending", None  # held until it joins or the grace ends
            elif signal is None:
                m.PROC_DROPS.labels("uninterpretable").inc()
                status, reason = "dropped", "uninterpretable"
            else:
                signal = self.fuser.observe(signal)
                m.PROC_JOINS.inc()
                status, reason = "joined", None
                touched.add(e.response_id)
            row = _feedback_row(e, status, reason)
            row["signal"] = _signal_dict(signal) if status == "joined" else None
            rows.append(row)
        self.store.add_new(tx, s.feedback, inserts)
        self.store.set_feedback(tx, updates)
        return touched

    def emit(self, tx: Connection, touched: set[str]) -> list[Record]:
        """Fuse every touched response; upsert its label and any pairs it now makes."""
        if not touched:
            return []
        interactions = {
            r["response_id"]: r for r in self.store.rows(tx, s.interactions, "response_id", touched)
        }
        signals: dict[str, list[Signal]] = defaultdict(list)
        edit_ids: list[str] = []
        columns = ("event_id", "response_id", "status", "kind", "signal")
        for r in self.store.rows(tx, s.feedback, "response_id", touched, columns):
            if r["status"] == "joined":
                signals[r["response_id"]].append(Signal(**r["signal"]))
                if r["kind"] == "edit":
                    edit_ids.append(r["event_id"])
        edits = [
            (r["response_id"], r) for r in self.store.rows(tx, s.feedback, "event_id", edit_ids)
        ]
        out: list[Record] = []
        for rid in touched:
            row = interactions[rid]
            event = InteractionEvent.model_validate(row["event"])
            fused = self.fuser.fuse(event, signals[rid])
            if fused.confidence >= self.config.fusion.min_confidence and abs(fused.score) > 0.05:
                out.append(
                    PreferenceLabel(
                        response_id=rid, prompt=event.messages, completion=event.completion,
                        desirable=fused.score > 0, weight=fused.confidence * abs(fused.score),
                        score=fused.score, confidence=fused.confidence,
                        scenario=fused.scenario, adapter=event.adapter,
                        n_signals=fused.n_signals,
                    )
                )  # fmt: skip
        out += self._edit_pairs(interactions, edits)
        labels = [r for r in out if isinstance(r, PreferenceLabel)]
        self.store.upsert(tx, s.labels, [_label_row(r) for r in labels])
        out += self._sibling_pairs(tx, interactions, labels)
        pairs = [r for r in out if isinstance(r, PreferencePair)]
        self.store.upsert(tx, s.pairs, [_pair_row(p) for p in pairs])
        for rec in out:
            kind = "label" if isinstance(rec, PreferenceLabel) else "pair"
            prov = rec.provenance if isinstance(rec, PreferencePair) else "fused"
            m.PROC_RECORDS.labels(kind, prov).inc()
        return out

    def _edit_pairs(
        self, interactions: dict[str, dict[str, Any]], edits: list[tuple[str, dict[str, Any]]]
    ) -> list[Record]:
        """An edit is the user's own better answer: (edited > original)."""
        out: list[Record] = []
        for rid, row in edits:
            event = InteractionEvent.model_validate(interactions[rid]["event"])
            signal = Signal(**row["signal"])
            weight = signal.strength * self.fuser.rater_weight(signal.rater)
            edited = FeedbackEvent.model_validate(row["event"]).value
            if weight <= 0 or not isinstance(edited, str) or edited == event.completion:
                continue
            out.append(
                PreferencePair(
                    pair_id=pair_id("edit", row["event_id"]), prompt=event.messages,
                    chosen=edited, rejected=event.completion, weight=weight,
                    provenance="edit", chosen_response_id=None, rejected_response_id=rid,
                    adapter=event.adapter,
                )
            )  # fmt: skip
        return out

    def _sibling_pairs(
        self,
        tx: Connection,
        interactions: dict[str, dict[str, Any]],
        labels: list[PreferenceLabel],
    ) -> list[Record]:
        """Regenerated answers to the same prompt in one conversation, clearly scored
        apart, make a pair (the better one chosen). One query for the whole batch."""

        def group(response_id: str) -> tuple[str, str]:
            row = interactions[response_id]
            return row["conversation_id"], row["prompt_hash"]

        groups = {group(x.response_id) for x in labels}
        if not groups:
            return []
        scored: dict[tuple[str, str], list[Any]] = defaultdict(list)
        convs = sorted({conv for conv, _ in groups})
        for i in range(0, len(convs), 500):
            query = (
                select(s.labels, s.interactions.c.conversation_id, s.interactions.c.prompt_hash)
                .join(s.interactions, s.interactions.c.response_id == s.labels.c.response_id)
                .where(s.interactions.c.conversation_id.in_(convs[i : i + 500]))
            )
            for row in tx.execute(query):
                if (row.conversation_id, row.prompt_hash) in groups:
                    scored[(row.conversation_id, row.prompt_hash)].append(row)
        out: list[Record] = []
        for label in labels:
            for sib in scored[group(label.response_id)]:
                gap = label.score - sib.score
                if sib.response_id == label.response_id or abs(gap) < self.config.pair_margin:
                    continue
                mine = (label.response_id, label.completion)
                theirs = (sib.response_id, sib.completion)
                (best, chosen), (worst, rejected) = (mine, theirs) if gap > 0 else (theirs, mine)
                out.append(
                    PreferencePair(
                        pair_id=pair_id("regenerate", *sorted((best, worst))),
                        prompt=label.prompt, chosen=chosen, rejected=rejected,
                        weight=min(label.confidence, sib.confidence) * abs(gap) / 2,
                        provenance="regenerate", chosen_response_id=best,
                        rejected_response_id=worst, adapter=label.adapter,
                    )
                )  # fmt: skip
        return out

    def housekeeping(self, now: int | None = None, every_s: float = 5.0) -> None:
        """The two time windows: the grace period of held feedback, and the feedback
        window of each response (then it calibrates the implicit weights)."""
        if now is None and time.monotonic() - self._last_orphan_check < every_s:
            return
        self._last_orphan_check = time.monotonic()
        now = now or now_ms()
        with self.store.transaction() as tx:
            self.expire_orphans(tx, now - int(self.config.grace_s * 1000))
            self.calibrate_settled(tx, now - int(self.config.settle_s * 1000))

    def expire_orphans(self, tx: Connection, cutoff_ms: int) -> None:
        """Feedback whose interaction never came within the grace period: counted, kept
        (it still joins if the interaction turns up later)."""
        n = tx.execute(
            update(s.feedback)
            .where(and_(s.feedback.c.status == "pending", s.feedback.c.received_ms < cutoff_ms))
            .values(status="orphaned")
        ).rowcount
        if n:
            m.PROC_ORPHANS.inc(n)
            log.info("%d feedback events orphaned (grace %.0fs)", n, self.config.grace_s)

    def calibrate_settled(self, tx: Connection, cutoff_ms: int, limit: int = 5000) -> None:
        settled = list(
            tx.scalars(
                select(s.interactions.c.response_id)
                .where(and_(~s.interactions.c.calibrated, s.interactions.c.created_ms < cutoff_ms))
                .limit(limit)
            )
        )
        if not settled:
            return
        signals: dict[str, list[Signal]] = defaultdict(list)
        for r in self.store.rows(tx, s.feedback, "response_id", settled):
            if r["status"] == "joined":
                signals[r["response_id"]].append(Signal(**r["signal"]))
        for rid in settled:
            self.fuser.calibrate(signals[rid])
        for i in range(0, len(settled), 500):
            tx.execute(
                update(s.interactions)
                .where(s.interactions.c.response_id.in_(settled[i : i + 500]))
                .values(calibrated=True)
            )
        self.store.save_state(tx, "fuser", self.fuser.state_dict())


class _LogRebalance(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


def _signal_dict(signal: Signal | None) -> dict[str, Any] | None:
    # dataclasses.asdict deep-copies recursively: too slow for the hot path.
    return None if signal is None else {f: getattr(signal, f) for f in _SIGNAL_FIELDS}


_SIGNAL_FIELDS = [f.name for f in dataclasses.fields(Signal)]


def _key(rec: Record) -> bytes:
    return (rec.pair_id if isinstance(rec, PreferencePair) else rec.response_id).encode()


def _feedback_row(e: FeedbackEvent, status: str, reason: str | None) -> dict[str, Any]:
    return {
        "event_id": e.event_id, "response_id": e.response_id, "rater": e.user_hash,
        "kind": e.kind.value, "received_ms": e.received_ms, "status": status,
        "status_reason": reason, "signal": None, "event": e.model_dump(mode="json"),
    }  # fmt: skip


def _label_row(r: PreferenceLabel) -> dict[str, Any]:
    row = r.model_dump(mode="json", exclude={"schema_version", "event_type"})
    return {**row, "updated_ms": now_ms()}


def _pair_row(p: PreferencePair) -> dict[str, Any]:
    row = p.model_dump(mode="json", exclude={"schema_version", "event_type"})
    return {**row, "updated_ms": now_ms()}
