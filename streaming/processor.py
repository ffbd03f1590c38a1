"""The stream processor: Kafka feedback in, fused training records out.

Reads ``livealign.interactions`` and ``livealign.feedback`` as one consumer group. Each
polled batch goes through one pipeline, top to bottom, inside one store transaction:

    parse (poison to dead letters) -> store interactions -> clean feedback (duplicate, rate limit)
          -> join feedback to interactions (or hold it) -> one voice per rater per
             response (a repeat supersedes or is dropped) -> signals (normalized per rater)
          -> fuse each touched response -> labels + pairs (upserted) -> fuser state

then the dead letters go to ``livealign.deadletter`` and the records to
``livealign.preferences``, and only then are offsets committed. A record that cannot be
read or stored (no value, not UTF-8, not JSON, not the topic's event, a NUL character,
an id too long for the store or a number out of range) is poison: it goes to the
dead-letter topic with its reason, is counted as a drop by that reason, and the batch
goes on without it.
Replaying a batch after a crash finds its events already stored and changes nothing.
Both topics are keyed by conversation id, so an interaction, its feedback and its
regenerated siblings share a partition and so a processor instance: joins stay local.

That locality also lets the processor remember what it wrote: recent interactions, each
response's joined signals, each conversation's labels and feedback held for its
interaction are kept in memory (bounded, least recently used first out), so a batch
mostly writes to the store and reads only what it has not seen (after a restart, a
rebalance, or once forgotten). The store stays the truth: every cached entry is exactly
what the store holds, and the caches are dropped whenever that may no longer be so
(partitions move, a batch fails). The fuser's state is saved the same way: only the
raters a batch changed are written.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, TypeVar

import msgspec
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import BaseModel, Field
from pydantic_core import to_json
from sqlalchemy import Connection

from monitoring import metrics as m
from streaming import deadletter
from streaming import records as rules
from streaming import store as s
from streaming.checkpoint import Checkpoint
from streaming.events import (
    POISON_REASONS,
    TOPIC_DEADLETTER,
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    ChatMessage,
    DeadLetter,
    FeedbackKind,
    PreferenceLabel,
    PreferencePair,
    ResponseOutcome,
    WireFeedback,
    WireInteraction,
    WireMessage,
    decode_feedback,
    decode_interaction,
    now_ms,
)
from streaming.fusion import Fuser, FusionConfig, Signal, signal_from_event, voice
from streaming.records import Record, RecordConfig, Scored
from streaming.store import PreferenceStore

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")


class ProcessorConfig(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "livealign-processor"
    store_url: str = Field("sqlite:///var/preferences.sqlite", description="SQLAlchemy URL.")
    grace_s: float = Field(300.0, description="How long feedback waits for its interaction.")
    settle_s: float = Field(
        120.0,
        description="A response's feedback window. When it closes, the response's signals "
        "calibrate the implicit-signal weights (once per response, so none is counted "
        "twice) and its records are made (label, pairs, outcome); late feedback remakes them.",
    )
    max_poll_records: int = 2000
    session_timeout_ms: int = 10_000
    request_timeout_ms: int = 15_000
    cache_responses: int = Field(
        20_000,
        ge=1,
        description="Responses whose interaction and joined signals are kept in memory (and "
        "as many feedback events held for their interaction). Only speed depends on it.",
    )
    cache_conversations: int = Field(
        20_000,
        ge=1,
        description="Conversations whose labels are kept in memory. Only speed depends on it.",
    )
    deadletter_max_value_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="A dead letter carries at most this many bytes of the poison record's "
        "value (then it says it was truncated).",
    )
    deadletter_max_backoff_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait between tries while dead letters cannot be sent (offsets "
        "are not committed meanwhile).",
    )
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    records: RecordConfig = Field(default_factory=RecordConfig)


def prompt_hash(messages: Sequence[ChatMessage | WireMessage]) -> str:
    """sha256 of the messages as ``json.dumps([m.model_dump() ...], sort_keys=True)``
    (the form stored hashes have), written directly: three times faster."""
    text = ", ".join(
        f'{{"content": {_json_str(msg.content)}, "role": {_json_str(msg.role)}}}'
        for msg in messages
    )
    return hashlib.sha256(f"[{text}]".encode()).hexdigest()[:32]


@dataclasses.dataclass(slots=True)
class Batch:
    """What one poll brought in, parsed: each event with its JSON text as received. It was
    validated, so the store keeps it as is (serializing the event again cost more than
    the rest of storing it). The poison records, as dead letters."""

    interactions: list[tuple[WireInteraction, str]]
    feedback: list[tuple[WireFeedback, str]]
    dead: list[DeadLetter]
    started: float  # perf_counter() when parsing began


@dataclasses.dataclass(slots=True)
class Known:
    """A stored interaction (the stored one: a replayed duplicate does not replace it)."""

    event: WireInteraction
    prompt_hash: str
    calibrated: bool  # its feedback window has closed: its records are out


@dataclasses.dataclass(slots=True)
class Joined:
    """A stored joined feedback event: its normalized signal, for an edit its text, for
    a thumb or rating its vote (+1, -1; 0 for a middle rating or another kind), and for a
    compare the other response and the verdict."""

    event_id: str
    signal: Signal
    edited: str | None
    vote: int
    compared: tuple[str, str] | None = None


# A conversation's stored labels: prompt hash -> response id -> label.
ConversationLabels = dict[str, dict[str, Scored]]


class Lru(OrderedDict[K, V]):
    """A dict that forgets its least recently used entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def use(self, key: K) -> V | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        self[key] = value  # a new key goes to the end by itself
        if len(self) > self.size:
            self.popitem(last=False)


class Processor:
    def __init__(self, config: ProcessorConfig) -> None:
        self.config = config
        self.store = PreferenceStore(config.store_url)
        self.fuser = Fuser(config.fusion)
        if saved := self.store.load_fuser():
            self.fuser.load_state_dict(saved)
        self._fuser_saved = False  # whether the store holds all of it (then: only changes)
        self._last_orphan_check = 0.0
        self._settle_backlog = False  # the last settle hit its limit: more are due now
        # What the store holds, remembered (see the module docstring).
        self._interactions: Lru[str, Known] = Lru(config.cache_responses)
        self._joined: Lru[str, list[Joined]] = Lru(config.cache_responses)
        self._labels: Lru[str, ConversationLabels] = Lru(config.cache_conversations)
        self._pending: Lru[str, WireFeedback] = Lru(config.cache_responses)  # by event id
        self._consumed_ms: dict[str, int] = {}  # per topic: the newest record processed
        self._flagged = 0  # lockstep raters counted in the metric so far
        # The series the alerts read exist from the start, at 0: Prometheus's increase()
        # misses a counter's first step when its series appears already at that value.
        for reason in DROP_REASONS:
            m.PROC_DROPS.labels(reason)
        m.PROC_RECORDS.labels("label", "fused")

    def forget(self) -> None:
        """Drop the caches: the store may hold what they do not (another instance wrote
        for these partitions, or a batch was rolled back)."""
        self._interactions.clear()
        self._joined.clear()
        self._labels.clear()
        self._pending.clear()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self.store.transaction() as tx:
                yield tx
        except BaseException:
            # Rolled back: the caches may hold what the store does not, and the fuser's
            # changes were not saved. Forget the one, save all of the other next time.
            self.forget()
            self._fuser_saved = False
            raise

    def _save_fuser(self, tx: Connection) -> None:
        everything = not self._fuser_saved
        base, changed, forgotten = self.fuser.state_changes(everything)
        self.store.save_fuser(tx, base, changed, forgotten, everything)
        # The weights too, as fused with: readers (the status page) need neither this
        # process nor its fusion config to show them.
        weights = {"updated_ms": now_ms(), "weights": self.fuser.weights()}
        self.store.save_state(tx, s.FUSION_WEIGHTS, weights)
        self._fuser_saved = True

    # --- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        # A batch makes many objects per record that live until it ends: with the default
        # threshold (700) the cyclic collector ran hundreds of times per batch, each time
        # walking those and the caches (a tenth of the CPU time). Nothing here relies on
        # it to free memory soon: without cycles, reference counting frees it.
        gc.set_threshold(50_000, 20, 100)
        consumer = self._consumer()
        producer = KafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers.split(","),
            acks="all",
            compression_type="lz4",
            linger_ms=20,
            request_timeout_ms=self.config.request_timeout_ms,
            # A send waits this long at most for a broker that is away (not a minute).
            max_block_ms=self.config.request_timeout_ms,
        )
        checkpoint = Checkpoint(
            consumer, producer, self.config.request_timeout_ms / 1000,
            max_backoff_s=self.config.deadletter_max_backoff_s,
        )  # fmt: skip
        log.info("processor %s consuming %s", self.config.group_id, self.config.bootstrap_servers)
        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=500, max_records=self.config.max_poll_records)
                records = [r for batch in polled.values() for r in batch]
                if records:
                    batch = self.parse(records)
                    out = self.process_batch(batch)  # the store transaction has committed
                    # then dead letters, publish, flush, offsets
                    if not checkpoint.commit(out, batch.dead, stop):
                        break  # stopped while dead letters could not be sent
                    self._report_lag(consumer, polled)
                    self._report_progress(polled)
                if settled := self.housekeeping():
                    checkpoint.publish(settled)
        finally:
            checkpoint.close()

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
        consumer.subscribe([TOPIC_INTERACTIONS, TOPIC_FEEDBACK], listener=_Rebalance(self.forget))
        return consumer

    def _report_lag(self, consumer: KafkaConsumer, polled: dict[TopicPartition, Any]) -> None:
        # Lag from highwater() after a fetch: some brokers (Tansu, the embedded one) answer
        # end_offsets wrongly, and the fetch response carries the high watermark anyway.
        for tp, batch in polled.items():
            high = consumer.highwater(tp)
            if high is not None and batch:
                m.PROC_LAG.labels(tp.topic, str(tp.partition)).set(high - batch[-1].offset - 1)

    def _report_progress(self, polled: dict[TopicPartition, Any]) -> None:
        """The newest Kafka timestamp processed, by topic, once its batch is committed.
        Against the producer's newest acknowledged one it is the processor's lag in
        seconds, which keeps growing while the processor is stuck or gone (the record lag
        above stands still then: only a fetch updates it)."""
        for tp, batch in polled.items():
            newest = max((r.timestamp for r in batch), default=0)
            if newest > self._consumed_ms.get(tp.topic, 0):
                self._consumed_ms[tp.topic] = newest
                m.PROC_CONSUMED_TS.labels(tp.topic).set(newest / 1000)

    # --- one batch ----------------------------------------------------------------------
    def process(self, records: list[Any]) -> list[Record]:
        """The pipeline for one polled batch; returns the records written."""
        return self.process_batch(self.parse(records))

    def process_batch(self, batch: Batch) -> list[Record]:
        """The pipeline for one parsed batch; returns the records written."""
        with self._transaction() as tx:
            self.store_interactions(tx, batch)
            fresh = self.clean(tx, batch)
            touched = self.join(tx, fresh, batch)
            # Late feedback, and responses whose raters coordination now sees otherwise.
            touched |= self.fuser.coordination.take_dirty()
            out = self.emit(tx, touched, settled_only=True)  # the rest waits
            self._save_fuser(tx)
        for scenario, weights in self.fuser.weights().items():
            for signal, weight in weights.items():
                m.FUSION_WEIGHT.labels(scenario, signal).set(weight)
        coordination = self.fuser.coordination
        m.COORDINATION_NEWCOMER_SCALE.set(coordination.newcomer_scale())
        if coordination.flagged > self._flagged:
            m.COORDINATION_LOCKSTEP.inc(coordination.flagged - self._flagged)
            self._flagged = coordination.flagged
        m.PROC_BATCH_SECONDS.observe(time.perf_counter() - batch.started)
        return out

    def parse(self, records: list[Any]) -> Batch:
        """Decode each record; poison ones become dead letters (see the module docstring)."""
        started = time.perf_counter()
        interactions: list[tuple[WireInteraction, str]] = []
        feedback: list[tuple[WireFeedback, str]] = []
        dead: list[DeadLetter] = []
        n_interactions = 0
        for r in records:
            try:
                if r.topic == TOPIC_INTERACTIONS:
                    n_interactions += 1
                    interactions.append(deadletter.read(r.value, decode_interaction))
                else:
                    feedback.append(deadletter.read(r.value, decode_feedback))
            except deadletter.Poison as poison:
                dead.append(deadletter.letter(r, poison, self.config.deadletter_max_value_bytes))
        if dead:
            log.warning(
                "%d poison records to %s (first: %s %s:%d@%d)", len(dead), TOPIC_DEADLETTER,
                dead[0].reason, dead[0].topic, dead[0].partition, dead[0].offset,
            )  # fmt: skip
        # Counted per batch, not per record: a labelled counter costs a lookup each time.
        # (Only the two subscribed topics come in.)
        m.PROC_CONSUMED.labels(TOPIC_INTERACTIONS).inc(n_interactions)
        m.PROC_CONSUMED.labels(TOPIC_FEEDBACK).inc(len(records) - n_interactions)
        for reason, n in Counter(d.reason for d in dead).items():
            m.PROC_DROPS.labels(reason).inc(n)
        return Batch(interactions, feedback, dead, started)

    def store_interactions(self, tx: Connection, batch: Batch) -> None:
        latest = {e.response_id: (e, text) for e, text in batch.interactions}
        stored = self.store.new_interactions(tx, latest)
        rows: list[s.Row] = []
        remember, no_signals = self._interactions.put, self._joined.put
        chat = self.fuser.coordination.chat
        for rid, (e, text) in latest.items():
            if rid in stored:
                continue  # a replay or a duplicate: the stored one stays
            chat(e.user_hash)
            digest = prompt_hash(e.messages)
            rows.append(s.interaction_row(e, text, digest))
            remember(rid, Known(e, digest, False))
            no_signals(rid, [])  # nothing joins a response before it is stored
        self.store.add_interactions(tx, rows)

    def clean(self, tx: Connection, batch: Batch) -> list[tuple[WireFeedback, str]]:
        """Drop duplicates (also across restarts: the store remembers every event id) and
        rate-limited raters (events without a user are one class, with its own budget).
        Dropped events are stored too, so a replay drops them again.
        The rate limit runs on server time: when the feedback API received the event (no
        later than now, should its clock run ahead of ours). ``client_ts`` is the client's
        to set, so it is kept as data and never used for it."""
        events = batch.feedback
        seen = self.store.known_events(tx, {e.event_id for e, _ in events})
        fresh: list[tuple[WireFeedback, str]] = []
        dropped: list[s.Row] = []
        duplicates = 0
        allow, now = self.fuser.allow, now_ms()
        for e, text in events:
            if e.event_id in seen:
                duplicates += 1
                continue
            seen.add(e.event_id)
            if allow(e.user_hash, min(e.received_ms, now)):
                fresh.append((e, text))
            else:
                dropped.append(s.feedback_row(e, text, "dropped", "rate_limited", None))
        _count(m.PROC_DROPS, "duplicate", duplicates)
        _count(m.PROC_DROPS, "rate_limited", len(dropped))
        self.store.add_feedback(tx, dropped)
        return fresh

    def join(self, tx: Connection, fresh: list[tuple[WireFeedback, str]], batch: Batch) -> set[str]:
        """Attach feedback to interactions; returns the responses with new signals.
        Fresh feedback is stored with its outcome (joined, or pending: held for its
        interaction); held feedback whose interaction just arrived is updated. One voice
        per rater per response (``streaming.fusion.voice``): a rater's new thumb, rating
        or edit supersedes their earlier one (stored as dropped, "superseded"), and other
        repeats beyond the limit are dropped ("repeat_limit")."""
        arrived = {e.response_id: e for e, _ in batch.interactions}
        held = self._held(tx, arrived)
        missing = {e.response_id for e, _ in fresh} - arrived.keys()
        found: dict[str, WireInteraction] = {
            **{rid: known.event for rid, known in self._stored_interactions(tx, missing).items()},
            **arrived,
        }
        # What each response has joined so far: the voice rules judge against it.
        joining = {e.response_id for e in held} | {e.response_id for e, _ in fresh}
        earlier = self._joined_signals(tx, joining & found.keys())
        inserts: list[s.Row] = []
        updates: list[dict[str, Any]] = []
        superseded: list[dict[str, Any]] = []  # applied last: they may be this batch's
        touched: set[str] = set()
        joins = uninterpretable = repeats = 0
        by_arm: Counter[tuple[str, str, str]] = Counter()
        fusion, observe, hold = self.config.fusion, self.fuser.observe, self._pending.put
        # Held events (text None: stored already, so updated) first, then fresh ones.
        for e, text in [*((e, None) for e in held), *fresh]:
            interaction = found.get(e.response_id)
            signal = None
            if interaction is None:
                status, reason = "pending", None  # held until it joins or the grace ends
                hold(e.event_id, e)
            elif (signal := signal_from_event(e, interaction, fusion)) is None:
                uninterpretable += 1
                status, reason = "dropped", "uninterpretable"
            else:
                joined = earlier[e.response_id]
                verdict = voice.place(signal, [j.signal for j in joined], fusion)
                if verdict.action == "drop":
                    repeats += 1
                    status, reason = "dropped", voice.REPEAT_LIMIT
                else:
                    if verdict.replaces is not None:
                        old = joined.pop(verdict.replaces)
                        superseded.append(
                            {"event_id": old.event_id, "status": "dropped",
                             "status_reason": voice.SUPERSEDED,
                             "signal": _signal_json(old.signal)}
                        )  # fmt: skip
                    signal = observe(signal)
                    self._coordinate(e, signal)
                    joins += 1
                    by_arm[(e.kind.value, interaction.adapter, interaction.arm)] += 1
                    status, reason = "joined", None
                    touched.add(e.response_id)
                    joined.append(Joined(e.event_id, signal, _edited(e), _vote(e), _compared(e)))
            signal_json = None if signal is None else _signal_json(signal)
            if text is None:
                updates.append(
                    {"event_id": e.event_id, "status": status, "status_reason": reason,
                     "signal": signal_json}
                )  # fmt: skip
            else:
                inserts.append(s.feedback_row(e, text, status, reason, signal_json))
        _count(m.PROC_DROPS, "uninterpretable", uninterpretable)
        _count(m.PROC_DROPS, voice.REPEAT_LIMIT, repeats)
        _count(m.PROC_DROPS, voice.SUPERSEDED, len(superseded))
        if joins:
            m.PROC_JOINS.inc(joins)
        for labels, n in by_arm.items():  # what users said of each arm's answers
            m.FEEDBACK_JOINED.labels(*labels).inc(n)
        self.store.add_feedback(tx, inserts)
        self.store.set_feedback(tx, updates)
        self.store.set_feedback(tx, superseded)
        return touched

    def _coordinate(self, e: WireFeedback, signal: Signal) -> None:
        """Tell coordination (streaming.fusion.coordination) of a new joined signal."""
        ms = min(e.received_ms, now_ms())
        if signal.explicit:
            self.fuser.coordination.vote(signal.rater, ms, e.response_id, e.principal)
        if e.kind == _EDIT:
            self.fuser.coordination.edit(signal.rater, ms, e.response_id)

    def emit(self, tx: Connection, touched: set[str], settled_only: bool) -> list[Record]:
        """Fuse every touched response and upsert what it now makes (the rules are
        ``streaming.records``): its label, pairs and outcome. A response makes them once
        its feedback window has closed (``settled_only``: skip the others, they are made
        when it closes) and again whenever late feedback arrives. Returns the labels and
        pairs, for livealign.preferences."""
        if not touched:
            return []
        known = self._stored_interactions(tx, touched)
        if settled_only:
            touched = {rid for rid in touched if rid in known and known[rid].calibrated}
        joined = self._joined_signals(tx, touched)
        config, fuse, trust = self.config.records, self.fuser.fuse, self.fuser.rater_weight
        coordination = self.fuser.coordination
        newcomer_scale = coordination.newcomer_scale()
        labels: list[PreferenceLabel] = []
        pairs: list[PreferencePair] = []
        outcomes: list[ResponseOutcome] = []
        verdicts: list[tuple[str, tuple[str, str], float]] = []
        for rid in touched:
            event = known[rid].event
            signals = joined[rid]
            fused = fuse(event, [j.signal for j in signals])
            # A response's feedback is its asker's (their token): how much their records
            # weigh in training is what coordination says of them. Scores and outcomes,
            # which the canary judges on, are left as they are.
            weigh = coordination.factor(event.user_hash, newcomer_scale, event.principal)
            if made := rules.label(rid, event, fused, config):
                labels.append(_weighed(made, weigh))
            verdicts.extend(
                (rid, j.compared, trust(j.signal.rater) * weigh)
                for j in signals
                if j.compared is not None
            )
            weigh *= coordination.edit_factor(event.user_hash)
            edits = [
                (j.event_id, j.edited, j.signal.strength * trust(j.signal.rater) * weigh)
                for j in signals
                if j.edited is not None
            ]
            pairs += rules.edit_pairs(rid, event, edits)
            regenerated = any(j.signal.name == "regenerate" for j in signals)
            votes = (j.vote for j in signals)
            outcomes.append(rules.outcome(rid, event, fused, votes, regenerated, config))
        updated = now_ms()
        self.store.upsert_labels(tx, [s.label_row(r, updated) for r in labels])
        pairs += self._sibling_pairs(tx, known, labels)
        pairs += self._compare_pairs(tx, known, verdicts)
        self.store.upsert_pairs(tx, [s.pair_row(p, updated) for p in pairs])
        self.store.upsert_outcomes(tx, [s.outcome_row(o, updated) for o in outcomes])
        out: list[Record] = [*labels, *pairs]
        written = Counter(
            ("label", "fused") if isinstance(rec, PreferenceLabel) else ("pair", rec.provenance)
            for rec in out
        )
        written["outcome", "settled"] = len(outcomes)
        for (kind, provenance), n in written.items():
            if n:
                m.PROC_RECORDS.labels(kind, provenance).inc(n)
        return out

    def _sibling_pairs(
        self, tx: Connection, known: dict[str, Known], labels: list[PreferenceLabel]
    ) -> list[PreferencePair]:
        """Pairs of the just-labelled responses with their regenerated siblings. Call after
        the labels were written."""
        groups = self._conversation_labels(tx, known, labels)
        # By pair id: two siblings labelled in one batch find each other twice.
        out: dict[str, PreferencePair] = {}
        factor = self.fuser.coordination.factor
        for label in labels:
            mine = known[label.response_id]
            siblings = groups[mine.event.conversation_id].get(mine.prompt_hash, {})
            weigh = factor(mine.event.user_hash, None, mine.event.principal)  # one asker
            for pair in rules.sibling_pairs(label, siblings, self.config.records):
                out[pair.pair_id] = _weighed(pair, weigh)
        return list(out.values())

    def _compare_pairs(
        self,
        tx: Connection,
        known: dict[str, Known],
        verdicts: list[tuple[str, tuple[str, str], float]],
    ) -> list[PreferencePair]:
        """The pairs of compare verdicts (response, (other, verdict), weight): straight from
        the verdict (``rules.compare_pair``). A tie or both bad makes a pair only to
        withdraw one that is stored (weight 0); otherwise nothing."""
        others = self._stored_interactions(tx, {other for _, (other, _), _ in verdicts})
        made: dict[str, PreferencePair] = {}
        for rid, (other_id, verdict), weight in verdicts:
            other = known.get(other_id) or others.get(other_id)
            if other is None:
                continue  # not stored yet: the other answer's own event makes the pair
            pair = rules.compare_pair(rid, known[rid].event, other_id, other.event, verdict, weight)
            if pair is not None:
                made[pair.pair_id] = pair
        withdrawn = {pid for pid, p in made.items() if p.weight == 0.0}
        stored = self.store.stored_pairs(tx, withdrawn) if withdrawn else set()
        return [p for pid, p in made.items() if pid not in withdrawn or pid in stored]

    # --- what the store holds, remembered ------------------------------------------------
    def _held(self, tx: Connection, rids: Iterable[str]) -> list[WireFeedback]:
        """Stored feedback for these responses still waiting for them (pending or
        orphaned), in the order stored. They are about to join: no longer remembered."""
        rows = self.store.feedback_status(tx, rids)
        events = {
            event_id: self._pending.pop(event_id, None)
            for event_id, status in rows
            if status in _HELD
        }
        misses = [event_id for event_id, event in events.items() if event is None]
        rows = self.store.feedback_events(tx, misses)
        for event_id, event in rows:
            events[event_id] = _feedback_event(event)
        return [e for e in events.values() if e is not None]

    def _stored_interactions(self, tx: Connection, rids: Iterable[str]) -> dict[str, Known]:
        """The stored interactions among ``rids`` (absent ones are left out)."""
        out: dict[str, Known] = {}
        misses: list[str] = []
        for rid in rids:
            known = self._interactions.use(rid)
            if known is None:
                misses.append(rid)
            else:
                out[rid] = known
        for rid, digest, calibrated, event in self.store.interactions_of(tx, misses):
            out[rid] = Known(_interaction_event(event), digest, bool(calibrated))
            self._interactions.put(rid, out[rid])
        return out

    def _joined_signals(self, tx: Connection, rids: Iterable[str]) -> dict[str, list[Joined]]:
        """Every stored joined signal of each response, in the order they were stored."""
        out: dict[str, list[Joined]] = {}
        misses: list[str] = []
        for rid in rids:
            joined = self._joined.use(rid)
            if joined is None:
                misses.append(rid)
                out[rid] = []
            else:
                out[rid] = joined
        for rid, event_id, status, kind, signal, event in self.store.feedback_of(tx, misses):
            if status == "joined":
                e = _feedback_event(event) if kind in _DECODED else None
                edited, vote = (None, 0) if e is None else (_edited(e), _vote(e))
                compared = None if e is None else _compared(e)
                out[rid].append(Joined(event_id, _stored_signal(signal), edited, vote, compared))
        for rid in misses:
            self._joined.put(rid, out[rid])
        return out

    def _conversation_labels(
        self, tx: Connection, known: dict[str, Known], labels: list[PreferenceLabel]
    ) -> dict[str, ConversationLabels]:
        """The stored labels of the conversations of ``labels`` (just written)."""
        out: dict[str, ConversationLabels] = {}
        for label in labels:
            mine = known[label.response_id]
            conv = mine.event.conversation_id
            if conv not in out:
                cached = self._labels.use(conv)
                if cached is None:
                    continue  # read below, this batch's labels included
                out[conv] = cached
            scored = Scored(label.score, label.confidence, label.completion, label.adapter)
            out[conv].setdefault(mine.prompt_hash, {})[label.response_id] = scored
        misses = {known[x.response_id].event.conversation_id for x in labels} - out.keys()
        for conv in misses:
            out[conv] = {}
        rows = self.store.labels_of_conversations(tx, misses)
        for conv, digest, rid, score, confidence, completion, adapter in rows:
            out[conv].setdefault(digest, {})[rid] = Scored(score, confidence, completion, adapter)
        for conv in misses:
            self._labels.put(conv, out[conv])
        return out

    # --- time windows -----------------------------------------------------------------------
    def housekeeping(self, now: int | None = None, every_s: float = 5.0) -> list[Record]:
        """The two time windows: the grace period of held feedback, and the feedback
        window of each response (when it closes, the response calibrates the implicit
        weights and makes its records). Returns the records made, to be published."""
        due = self._settle_backlog or time.monotonic() - self._last_orphan_check >= every_s
        if now is None and not due:
            return []
        self._last_orphan_check = time.monotonic()
        now = now or now_ms()
        with self._transaction() as tx:
            self.expire_orphans(tx, now - int(self.config.grace_s * 1000))
            return self.settle(tx, now - int(self.config.settle_s * 1000))

    def expire_orphans(self, tx: Connection, cutoff_ms: int) -> None:
        """Feedback whose interaction never came within the grace period: counted, kept
        (it still joins if the interaction turns up later)."""
        n = self.store.mark_orphans(tx, cutoff_ms)
        if n:
            m.PROC_ORPHANS.inc(n)
            log.info("%d feedback events orphaned (grace %.0fs)", n, self.config.grace_s)

    def settle(self, tx: Connection, cutoff_ms: int, limit: int = 5000) -> list[Record]:
        """Responses created before the cutoff whose window had not closed yet: each
        calibrates the fuser once, then makes its records (with the weights it taught)."""
        settled = self.store.settled(tx, cutoff_ms, limit)
        # A backlog (a catch-up, a restart) settles a chunk per loop, between batches.
        self._settle_backlog = len(settled) == limit
        if not settled:
            return []
        signals: dict[str, list[Signal]] = defaultdict(list)
        for rid, signal in self.store.joined_signals(tx, settled):
            signals[rid].append(_stored_signal(signal))
        for rid in settled:
            self.fuser.calibrate(signals[rid])
        self.store.mark_calibrated(tx, settled)
        for rid in settled:
            if (known := self._interactions.get(rid)) is not None:
                known.calibrated = True
        out = self.emit(tx, set(settled), settled_only=False)
        self._save_fuser(tx)
        return out


class _Rebalance(ConsumerRebalanceListener):
    """Logs partition moves; on each, the processor forgets what it remembered (another
    instance may have written for the partitions it gets).

    kafka-python 3 calls it on its I/O thread, but only inside a group join that
    ``poll()`` (or ``close()``) waits for: never while a batch is being processed."""

    def __init__(self, on_move: Callable[[], None]) -> None:
        self.on_move = on_move

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
        self.on_move()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))
        self.on_move()


_HELD = ("pending", "orphaned")
_EDIT = FeedbackKind.edit  # module constants: Enum attribute lookups are slow
_THUMB, _RATING = FeedbackKind.thumb, FeedbackKind.rating
_DECODED = ("edit", "thumb", "rating", "compare")  # kinds whose stored event records need
_COMPARE = FeedbackKind.compare
# msgspec reads and writes the Signal dataclass directly: 2-10x faster than a dict
# through pydantic-core or json, and the hot path does it for every joined event.
_SIGNAL_ENCODER = msgspec.json.Encoder()
_SIGNAL_DECODER = msgspec.json.Decoder(Signal)


# Every reason an event is dropped for (livealign_processor_drops_total's label): the
# poison ones (the record went to the dead-letter topic), then those cleaned out.
DROP_REASONS = (
    *POISON_REASONS, "duplicate", "rate_limited", "uninterpretable", voice.SUPERSEDED,
    voice.REPEAT_LIMIT,
)  # fmt: skip


def _count(counter: Any, label: str, n: int) -> None:
    if n:
        counter.labels(label).inc(n)


R = TypeVar("R", PreferenceLabel, PreferencePair)


def _weighed(record: R, factor: float) -> R:
    """The record with its training weight times ``factor`` (coordination's)."""
    return record if factor == 1.0 else record.model_copy(update={"weight": record.weight * factor})


def _signal_json(signal: Signal) -> str:
    return _SIGNAL_ENCODER.encode(signal).decode()


def _stored_json(stored: Any) -> str | bytes:
    """A stored JSON column as JSON text: SQLite's driver hands back text, SQLAlchemy
    (other databases) the decoded value."""
    return stored if isinstance(stored, str | bytes) else to_json(stored)


def _stored_signal(stored: Any) -> Signal:
    return _SIGNAL_DECODER.decode(_stored_json(stored))


def _feedback_event(stored: Any) -> WireFeedback:
    return decode_feedback(_stored_json(stored))


def _interaction_event(stored: Any) -> WireInteraction:
    return decode_interaction(_stored_json(stored))


def _vote(e: WireFeedback) -> int:
    """+1 / -1 for a thumb, or a rating above / below the middle; else 0."""
    if e.kind is _THUMB:
        return 1 if float(e.value) > 0 else -1
    if e.kind is _RATING:
        rating = float(e.value)
        return 1 if rating > 3 else -1 if rating < 3 else 0
    return 0


def _compared(e: WireFeedback) -> tuple[str, str] | None:
    """A compare's (other response id, verdict); None for other kinds."""
    if e.kind is _COMPARE and e.other_response_id is not None:
        return e.other_response_id, str(e.value)
    return None


def _edited(e: WireFeedback) -> str | None:
    """An edit's text (the user's better answer); None for other kinds."""
    return e.value if e.kind is _EDIT and isinstance(e.value, str) else None
