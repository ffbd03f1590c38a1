"""Stream-processor throughput against the raw kafka-python consume rate, one run.

Produces N mixed interaction and feedback events (thumbs, ratings, clicks, dwell,
comments, edits; some duplicates, some feedback before its interaction; stamped over
about 40 minutes of event time) to an embedded broker, then measures, on the same topics:
(a) raw: a plain ``KafkaConsumer`` reading every record, nothing else;
(b) end to end: the processor (one instance, one core) consuming as a group, joining,
    cleaning, fusing and writing records to a SQLite store, until every partition's
    committed offset (committed only after the store write) reaches its end and every
    response has settled (its records are made when its feedback window closes).
(c) floors: the least that any processor doing what the processor does must do, without
    the processing itself: consume as a group and decode each event; then also store, in
    one transaction per batch, each interaction (joins after a restart need it) and each
    feedback event's id (dropping duplicates across restarts needs it); then also publish
    as many records as (b) did. The processor's ratio can be no better than the last.
(a) runs again at the end; ratios are to the mean of both runs. All are timed from their
first record. Prints records/s of each and the ratio, and the CPU time this process spent
per record in each (all its threads; the broker is another process): on a busy machine
wall-clock rates are noisy, CPU per record somewhat less so.
"One core" is meant literally: with two or more cores, this process is pinned to one and
the broker to another (``--no-pin`` to leave both free).

    python bench/processor_throughput.py [--events 200000]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitoring import metrics as m
from streaming.broker import EmbeddedBroker
from streaming.events import (
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    TOPIC_PREFERENCES,
    ChatMessage,
    FeedbackEvent,
    FeedbackKind,
    InteractionEvent,
    decode_feedback,
    decode_interaction,
    now_ms,
)
from streaming.processor import Processor, ProcessorConfig
from streaming.topics import ensure_topics

TOPICS = (TOPIC_INTERACTIONS, TOPIC_FEEDBACK)
PARTITIONS = 4


def feedback_value(rng: random.Random) -> tuple[FeedbackKind, object]:
    roll = rng.random()
    if roll < 0.25:
        return FeedbackKind.dwell, rng.randint(0, 120_000)
    if roll < 0.45:
        return FeedbackKind.click, rng.choice(["copy", "regenerate", "link", "share"])
    if roll < 0.70:
        return FeedbackKind.thumb, rng.choice([1, -1])
    if roll < 0.90:
        return FeedbackKind.rating, rng.randint(1, 5)
    if roll < 0.96:
        return FeedbackKind.comment, rng.choice(["great, thanks!", "wrong and too long", "ok"])
    return FeedbackKind.edit, "A corrected answer, rewritten by the user for clarity."


# Event time advances this much per interaction: 50k interactions span about 40 minutes
# (ending now), as a backlog a processor catches up on. Stamped all at once instead, the
# 2,000 raters would each send dozens of events within seconds and most would be dropped
# as rate-limited: a cheaper and unrealistic mix.
MS_PER_INTERACTION = 50


def produce(bootstrap: str, n: int, seed: int = 0) -> int:
    """About one interaction per three feedback events; returns records produced."""
    rng = random.Random(seed)
    start = now_ms() - n // 4 * MS_PER_INTERACTION
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=50, batch_size=256 * 1024,
        compression_type="lz4",
    )  # fmt: skip
    sent = 0
    n_interactions = n // 4
    for i in range(n_interactions):
        conv, rid = f"c{i % 5000}", f"r{i}"
        t = start + i * MS_PER_INTERACTION
        interaction = InteractionEvent(
            response_id=rid, conversation_id=conv, user_hash=f"u{i % 997}", model="livealign",
            adapter="base", arm="stable",
            messages=[ChatMessage(role="user", content=f"Question number {i % 300}?")],
            completion=f"An answer to question {i % 300}.", prompt_tokens=12,
            completion_tokens=9, ttft_ms=40, latency_ms=300, created_ms=t,
        )  # fmt: skip
        events: list[tuple[str, bytes]] = [
            (TOPIC_INTERACTIONS, interaction.model_dump_json().encode())
        ]
        for j in range(3):
            kind, value = feedback_value(rng)
            fb = FeedbackEvent(
                event_id=f"e{i}-{j}", response_id=rid, conversation_id=conv,
                user_hash=f"u{rng.randrange(2000)}", kind=kind, value=value,  # type: ignore[arg-type]
                received_ms=t + rng.randrange(1_000, 120_000),
            )  # fmt: skip
            events.append((TOPIC_FEEDBACK, fb.model_dump_json().encode()))
        if rng.random() < 0.2:  # feedback that arrives before its interaction
            events.append(events.pop(0))
        if rng.random() < 0.02:  # an at-least-once duplicate
            events.append(events[-1])
        for topic, value in events:
            producer.send(topic, key=conv.encode(), value=value)
            sent += 1
    producer.flush(120)
    producer.close()
    return sent


def raw_consume(bootstrap: str, total: int) -> tuple[float, float]:
    """Records/s and CPU seconds per record."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    consumer.assign([TopicPartition(t, p) for t in TOPICS for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    seen, first, cpu = 0, None, 0.0
    while seen < total:
        for batch in consumer.poll(timeout_ms=1000, max_records=2000).values():
            if first is None:
                first, cpu = time.perf_counter(), time.process_time()
            seen += len(batch)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    cpu = time.process_time() - cpu
    consumer.close()
    return seen / elapsed, cpu / seen


def committed_all(consumer: KafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    return all((consumer.committed(tp) or 0) >= end for tp, end in ends.items())


def end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    # Tansu's end_offsets is wrong: read each partition to its end and ask highwater().
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(t, p) for t in TOPICS for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    ends: dict[TopicPartition, int] = {}
    while len(ends) < len(tps):
        consumer.poll(timeout_ms=500, max_records=5000)
        for tp in tps:
            high = consumer.highwater(tp)
            if high is not None and consumer.position(tp) >= high:
                ends[tp] = high
    consumer.close()
    return ends


def processed_rate(bootstrap: str, total: int, store: Path) -> tuple[float, float, int, int]:
    """Records/s, CPU seconds per record, records processed and records published."""
    config = ProcessorConfig(
        bootstrap_servers=bootstrap, store_url=f"sqlite:///{store}", group_id="bench",
        session_timeout_ms=6000,
    )  # fmt: skip
    processor = Processor(config)
    ends = end_offsets(bootstrap)
    consumed = lambda: sum(m.PROC_CONSUMED.labels(t)._value.get() for t in TOPICS)  # noqa: E731
    published = lambda: sum(  # noqa: E731 (labels and pairs; outcomes stay in the store)
        sample.value
        for metric in m.PROC_RECORDS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["type"] != "outcome"
    )
    base, base_out = consumed(), published()
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    thread.start()
    while consumed() == base:
        time.sleep(0.01)
    first, cpu = time.perf_counter(), time.process_time()
    last_report = first
    # One consumer of the group's committed offsets (it does not join the group), asked
    # four times a second: a new one each time cost the processor's process CPU.
    watch = KafkaConsumer(bootstrap_servers=bootstrap, group_id="bench", enable_auto_commit=False)
    while not committed_all(watch, ends):
        time.sleep(0.25)
        if time.perf_counter() - last_report > 10:
            last_report = time.perf_counter()
            print(f"  processed {int(consumed() - base)}/{total}", flush=True)
    committed_s = time.perf_counter() - first
    # Records are made when each response's feedback window closes: the job is done once
    # every response has settled (the events are stamped minutes in the past, so all of
    # them are due).
    while processor.store.unsettled():
        time.sleep(0.25)
    print(f"  offsets committed after {committed_s:.1f} s, all settled after "
          f"{time.perf_counter() - first:.1f} s", flush=True)  # fmt: skip
    elapsed = time.perf_counter() - first
    cpu = time.process_time() - cpu
    watch.close()
    stop.set()
    thread.join(30)
    n = int(consumed() - base)
    return n / elapsed, cpu / n, n, int(published() - base_out)


# A published record of typical size (a label).
RECORD = (
    b'{"response_id":"r1","prompt":[{"role":"user","content":"Question number 1?"}],'
    b'"completion":"An answer to question 1.","desirable":true,"weight":0.4,"score":0.5,'
    b'"confidence":0.8,"scenario":"open_domain","adapter":"base","n_signals":3}'
)


def floor_rate(
    bootstrap: str, total: int, group: str, store: Path | None, publish: int
) -> tuple[float, float]:
    """Records/s and CPU seconds per record of the floor (see the module docstring): a
    consumer configured as the processor's; with ``store``, each interaction (as the
    processor stores it, minus the prompt hash) and each feedback event id written to
    SQLite in one transaction per batch; ``publish`` records sent as the processor sends
    them, spread evenly over the batches; offsets committed after each batch."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1500,
        max_poll_records=2000,
    )  # fmt: skip
    consumer.subscribe(list(TOPICS))
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", compression_type="lz4", linger_ms=20
    )
    db = None
    if store is not None:
        db = sqlite3.connect(store, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE interactions (response_id TEXT PRIMARY KEY, conversation_id TEXT,"
            " user_hash TEXT, adapter TEXT, arm TEXT, created_ms INTEGER, event TEXT)"
        )
        db.execute("CREATE INDEX ix_conversation ON interactions (conversation_id)")
        db.execute("CREATE TABLE seen (event_id TEXT PRIMARY KEY) WITHOUT ROWID")
    seen, sent, first, cpu = 0, 0, None, 0.0
    while seen < total:
        records = [r for batch in consumer.poll(timeout_ms=1000).values() for r in batch]
        if not records:
            continue
        if first is None:
            first, cpu = time.perf_counter(), time.process_time()
        interactions, feedback = [], []
        for r in records:
            if r.topic == TOPIC_INTERACTIONS:
                i = decode_interaction(r.value)
                interactions.append(
                    (i.response_id, i.conversation_id, i.user_hash, i.adapter, i.arm,
                     i.created_ms, r.value.decode())
                )  # fmt: skip
            else:
                feedback.append((decode_feedback(r.value).event_id,))
        seen += len(records)
        if db is not None:
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR IGNORE INTO interactions VALUES (?,?,?,?,?,?,?)", interactions
            )
            db.executemany("INSERT OR IGNORE INTO seen VALUES (?)", feedback)
            db.execute("COMMIT")
        for _ in range(publish * seen // total - sent):
            producer.send(TOPIC_PREFERENCES, key=str(sent).encode(), value=RECORD)
            sent += 1
        producer.flush(30)
        consumer.commit()
    elapsed = time.perf_counter() - (first or time.perf_counter())
    cpu = time.process_time() - cpu
    consumer.close()
    producer.close()
    if db is not None:
        db.close()
    return seen / elapsed, cpu / seen


def pin_to_one_core() -> tuple[set[int], set[int]] | None:
    """(this process's core, the broker's cores), or None where that cannot be done."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    return {cores[0]}, set(cores[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--no-pin", action="store_true", help="Do not pin to one core.")
    args = parser.parse_args()
    pinned = None if args.no_pin else pin_to_one_core()
    if pinned:
        os.sched_setaffinity(0, pinned[1])  # the broker, started now, inherits this
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        if pinned:
            os.sched_setaffinity(0, pinned[0])
            print(f"this process on core {pinned[0]}, the broker on {sorted(pinned[1])}")
        ensure_topics(broker.bootstrap, PARTITIONS)
        t = time.perf_counter()
        total = produce(broker.bootstrap, args.events)
        print(f"produced {total} records in {time.perf_counter() - t:.1f}s", flush=True)
        raw, raw_cpu = raw_consume(broker.bootstrap, total)
        print(
            f"raw kafka-python consume: {raw:,.0f} records/s, {raw_cpu * 1e6:.1f} us CPU/record",
            flush=True,
        )
        ours, our_cpu, n, out = processed_rate(broker.bootstrap, total, Path(tmp) / "prefs.sqlite")
        print(
            f"processor end to end:     {ours:,.0f} records/s, {our_cpu * 1e6:.1f} us CPU/record"
            f" ({n} records in, {out} out)",
            flush=True,
        )
        rows = [("processor end to end", ours, our_cpu)]
        floors = [
            ("floor: consume + decode", None, 0),
            ("floor: + store", Path(tmp) / "floor.sqlite", 0),
            (f"floor: + store + publish {out}", Path(tmp) / "floor2.sqlite", out),
        ]
        for i, (label, store, publish) in enumerate(floors):
            rate, cpu = floor_rate(broker.bootstrap, total, f"floor{i}", store, publish)
            print(f"{label + ':':34s}{rate:,.0f} records/s, {cpu * 1e6:.1f} us CPU/record")
            rows.append((label, rate, cpu))
        # Raw again, last: on a shared machine the speed of everything drifts within a run;
        # the mean of a measurement before and one after is the fairer baseline.
        raw2, raw2_cpu = raw_consume(broker.bootstrap, total)
        print(
            f"raw kafka-python again:   {raw2:,.0f} records/s, {raw2_cpu * 1e6:.1f} us CPU/record"
        )
        raw, raw_cpu = (raw + raw2) / 2, (raw_cpu + raw2_cpu) / 2
        print(f"\n{'ratio to raw consume (mean of both)':36s}{'wall':>6s}{'CPU':>8s}")
        for label, rate, cpu in rows:
            print(f"{label:36s}{rate / raw:6.3f}{raw_cpu / cpu:8.3f}")


if __name__ == "__main__":
    main()
