"""Chaos: closed-loop chat and feedback load on the local stack while faults are injected
on a schedule. What the API accepted must arrive exactly once; chats may fail only while
the serving replica is down; no process may grow.

The real stack in this process (``LocalStack``: the embedded broker, the stream
processor as a child process, Ray Serve + vLLM on the tiny model, the trainer and canary
actors), bound to 127.0.0.1 on free ports, with a fresh home. A supervisor thread restarts
a dead processor every few seconds, as ``livealign up`` does. Simulated users
(``bench.canary_live.Users``) each chat, then send a feedback batch (dwell and thumb) with
event ids of their own; a 503 or no answer is sent again with the same ids, as the API
asks. Phases: ``--warmup-s`` of calm load (the latency baseline), the fault schedule, a
calm ``--tail-s``; then the load stops and the spool and the processor are given up to
``--drain-s`` to catch up. The trainer runs a round every ``--trainer-interval-s``, and
its gate refuses every candidate: a published one would go on trial as the canary, and
no round runs during a trial.

Faults (``--schedule``: ``kind@seconds[:down seconds]``, from the end of the warm-up; a
fault that ran long pushes the rest back, so each starts at least ``--gap-s`` after the
one before it ended):

- ``broker``: the embedded broker SIGKILLed, down ``down`` s, started again on the same
  port. By default (``--broker-storage s3``) it keeps its logs, offsets and groups in a
  local S3-compatible store (moto's server, ``bench/object_store.py``) that outlives it,
  as a Kafka broker's disk does: it comes back with everything it acknowledged, and any
  loss is LiveAlign's. With ``--broker-storage memory`` a restart forgets its records and
  the consumer group (its topics are made again): what it had acknowledged and the
  processor had not stored yet is gone, and such a loss is put down to the first broker
  kill after it was acknowledged, with its age then (at most the processor's lag).
- ``processor``: the processor SIGKILLed; the supervisor starts it again.
- ``trainer``: the trainer actor killed (``ray.kill``) while a round trains (a model's
  folder is in the round's scratch), started again ``down`` s later; at the end every
  published version must verify and no round's scratch be left.
- ``replica``: the Serve replica killed (``ray.kill``); Serve starts another. Down until
  the new replica answers ``/healthz``.

Each fault's window runs from the kill to the part being back. Counted at the end:

- chat errors, each attributed to the fault window it overlaps (within ``--slack-s``) or
  to none ("outside");
- feedback accepted (event ids the API answered as accepted), found in the preference
  store exactly once, lost (accepted, not stored), stored but never acknowledged;
- duplicates: in the store impossible (``event_id`` is the feedback table's primary
  key), so they are also counted on the feedback topic by a consumer of the bench's own
  (the processor drops those as duplicates);
- interactions (answered chats) that never reached the store;
- the resident memory (with children) of each process, sampled every ``--sample-s``:
  for a process restarted during the run, that of its incarnation sampled longest, from
  ``--rss-settle-s`` after it was first seen;
- chat latency (p50, p99) in the calm warm-up against during the faults, outside their
  windows.

Writes bench/results/chaos.json (``--quick``: chaos_quick.json).

    python bench/chaos.py              # about 10 minutes on two CPU cores
    python bench/chaos.py --quick      # about 5: one fault of each kind, shorter phases
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from bench.canary_live import Users
    from livealign.stack import LocalStack

log = logging.getLogger("bench.chaos")

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("broker", "processor", "trainer", "replica")
OUTSIDE = "outside"  # an error in no fault window
# Broker kills well after a processor kill: the processor takes up to ~20 s to rejoin its
# group, and what the broker holds unread then is lost with it (see lost_to).
DEFAULT_SCHEDULE = (
    "processor@0,broker@45:20,processor@95,trainer@115,replica@150,"
    "processor@230,broker@260:15,processor@290"
)
QUICK_SCHEDULE = "processor@0,broker@10:8,trainer@25,replica@40,processor@70"
PREFIX = "chaos"  # the users' conversation ids, and so their event ids, start with it


# --- the pure part: schedule, attribution, accounting, memory ------------------------------
@dataclass(frozen=True)
class FaultSpec:
    kind: str
    at_s: float  # from the end of the warm-up
    down_s: float = 0.0  # broker, trainer: how long it stays down before it is started


def parse_schedule(text: str) -> list[FaultSpec]:
    """``kind@seconds[:down]``, comma separated, in the order they run."""
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, when = item.partition("@")
        if kind not in KINDS or not sep:
            raise ValueError(f"{item!r}: expected KIND@SECONDS[:DOWN], KIND one of {KINDS}")
        at, _, down = when.partition(":")
        spec = FaultSpec(kind, float(at), float(down or 0.0))
        if spec.at_s < 0 or spec.down_s < 0 or not math.isfinite(spec.at_s + spec.down_s):
            raise ValueError(f"{item!r}: times must be finite and >= 0")
        specs.append(spec)
    return sorted(specs, key=lambda s: s.at_s)


def start_of(planned: float, late: float, previous_end: float, gap_s: float) -> tuple[float, float]:
    """When a fault planned for ``planned`` starts, and how late the schedule now runs:
    never sooner than ``gap_s`` after the previous fault ended (a fault that ran long, a
    trainer waiting for a round, pushes the rest back), so that one does not land on the
    recovery from the other."""
    start = max(planned + late, previous_end + gap_s)
    return start, start - planned


@dataclass
class Window:
    """A fault, from the kill to the part being back (unix seconds)."""

    kind: str
    start: float
    end: float
    detail: str = ""
    injected: bool = True  # False: the fault could not be injected (detail says why)

    def overlaps(self, start: float, end: float, slack: float) -> bool:
        return self.injected and start <= self.end + slack and end >= self.start - slack


def window_of(start: float, end: float, windows: Sequence[Window], slack: float) -> str:
    """The fault a call from ``start`` to ``end`` overlapped: the replica's first (the one
    fault users may see), else the first overlapped; ``OUTSIDE`` if none."""
    kinds = [w.kind for w in windows if w.overlaps(start, end, slack)]
    if not kinds:
        return OUTSIDE
    return "replica" if "replica" in kinds else kinds[0]


def attribute(
    calls: Iterable[tuple[float, float]], windows: Sequence[Window], slack: float
) -> Counter[str]:
    """How many of the calls (start, end) fall in each kind's windows, or outside all."""
    return Counter(window_of(start, end, windows, slack) for start, end in calls)


def lost_to(
    accepted_at: Iterable[float],
    windows: Sequence[Window],
    t0: float,
    broker_forgets: bool = True,
) -> dict[str, Any]:
    """What the lost events (or interactions), acknowledged at the given times, were lost
    to, with how many and the oldest one's age at that moment. A broker on memory storage
    (``broker_forgets``) loses in a kill what it had acknowledged and the processor had
    not stored yet, so an event acknowledged before a broker kill is put down to the
    first one after it ("broker@T", T seconds from ``t0``); an age well beyond the
    processor's lag would say it was lost otherwise. Any other loss, and every loss on
    durable storage, is a bug: labelled with the window it was acknowledged in, or
    ``OUTSIDE``."""
    kills = sorted(w.start for w in windows if broker_forgets and w.injected and w.kind == "broker")
    ages: dict[str, list[float]] = {}
    for t in accepted_at:
        after = [k for k in kills if k >= t]
        label = f"broker@{after[0] - t0:.0f}s" if after else window_of(t, t, windows, 0.0)
        ages.setdefault(label, []).append(after[0] - t if after else 0.0)
    return {label: {"n": len(a), "oldest_s": max(a)} for label, a in sorted(ages.items())}


def lost_to_broker(by: dict[str, Any]) -> int:
    return sum(v["n"] for label, v in by.items() if label.startswith("broker@"))


@dataclass
class Delivery:
    """Accepted feedback against what the store and the topic hold, by event id."""

    accepted: int
    exactly_once: int
    lost: list[str]
    stored_twice: list[str]  # stored more than once
    stored_unacknowledged: int  # stored, never answered as accepted (an answer lost)
    topic_duplicates: int  # events delivered more than once on the topic
    topic_extra: int  # the extra deliveries


def account(accepted: Iterable[str], stored: Counter[str], on_topic: Counter[str]) -> Delivery:
    wanted = set(accepted)
    return Delivery(
        accepted=len(wanted),
        exactly_once=sum(1 for e in wanted if stored[e] == 1),
        lost=sorted(e for e in wanted if stored[e] == 0),
        stored_twice=sorted(e for e, n in stored.items() if n > 1),
        stored_unacknowledged=sum(1 for e in stored if e not in wanted),
        topic_duplicates=sum(1 for n in on_topic.values() if n > 1),
        topic_extra=sum(n - 1 for n in on_topic.values() if n > 1),
    )


@dataclass(frozen=True)
class Sample:
    role: str
    pid: int
    t: float
    rss: int  # bytes


def rss_summary(samples: Iterable[Sample], settle_s: float) -> dict[str, dict[str, Any]]:
    """Per process role: how many processes it had (incarnations), and the resident memory
    of the one sampled longest (a role restarted during the run had several), from
    ``settle_s`` after it was first seen (one still loading its model at its first sample
    is not growing) to its last sample."""
    by_pid: dict[tuple[str, int], list[Sample]] = {}
    for sample in sorted(samples, key=lambda x: x.t):
        by_pid.setdefault((sample.role, sample.pid), []).append(sample)
    spans: dict[str, list[tuple[Sample, Sample]]] = {}
    for (role, _), seen in by_pid.items():
        settled = [x for x in seen if x.t >= seen[0].t + settle_s] or seen[-1:]
        spans.setdefault(role, []).append((settled[0], seen[-1]))
    out = {}
    for role, candidates in spans.items():
        # The longest span; of equal ones the latest (the process still running at the end).
        first, end = max(reversed(candidates), key=lambda span: span[1].t - span[0].t)
        growth = end.rss - first.rss
        out[role] = {
            "incarnations": len(candidates),
            "pid": end.pid,
            "start_mib": first.rss / 2**20,
            "end_mib": end.rss / 2**20,
            "growth_mib": growth / 2**20,
            "growth_pct": 100 * growth / first.rss if first.rss else 0.0,
            "seconds": end.t - first.t,
            "mib_per_min": growth / 2**20 / ((end.t - first.t) / 60) if end.t > first.t else 0.0,
        }
    return out


def quantile(values: Sequence[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else math.nan


# --- the stack's processes ------------------------------------------------------------------
ROLES = {  # Ray actor class name (prefix) -> role
    "ServeReplica:": "serving replica",
    "TrainerActor": "trainer",
    "CanaryActor": "canary",
    "ProxyActor": "serve proxy",
    "ServeController": "serve controller",
}


def ray_actors() -> list[dict[str, Any]]:
    """The live actors of this Ray cluster, with their pids. The public state API
    (``ray.util.state``) asks the dashboard, which the stack does not start; this reads
    the actor table from the GCS."""
    from ray._private import state

    table: dict[str, dict[str, Any]] = state.actors(actor_state_name="ALIVE")
    return list(table.values())


def role_of(class_name: str) -> str | None:
    return next((role for prefix, role in ROLES.items() if class_name.startswith(prefix)), None)


def role_pids(stack: LocalStack) -> dict[str, int]:
    pids = {"bench (driver)": os.getpid()}
    if stack.broker is not None and stack.broker.pid is not None:
        pids["broker"] = stack.broker.pid
    proc = stack.processor
    if proc is not None and proc.poll() is None:
        pids["processor"] = proc.pid
    for actor in ray_actors():
        role = role_of(actor["ActorClassName"])
        if role is not None and actor["Pid"]:
            pids[role] = int(actor["Pid"])
    return pids


def rss(pid: int, children: bool) -> int | None:
    """Resident bytes of a process (and its descendants: vLLM's engine process), None
    once it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = int(proc.memory_info().rss)
        for child in proc.children(recursive=True) if children else ():
            try:
                total += int(child.memory_info().rss)
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return None


class Sampler:
    """Every ``every_s``: each process's resident memory, in ``samples``."""

    def __init__(self, stack: LocalStack, every_s: float) -> None:
        self.stack, self.every_s = stack, every_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-rss", daemon=True)

    def sample(self) -> None:
        try:
            pids = role_pids(self.stack)
        except Exception as exc:  # Ray busy with a kill: the next turn will do
            log.debug("no actor table this turn: %s", exc)
            return
        now = time.time()
        for role, pid in pids.items():
            value = rss(pid, children=role != "bench (driver)")  # the driver's are Ray's
            if value is not None:
                self.samples.append(Sample(role, pid, now, value))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.sample()


class Supervisor:
    """``stack.supervise()`` every ``every_s``, as ``livealign up`` does."""

    def __init__(self, stack: LocalStack, every_s: float = 5.0) -> None:
        self.stack, self.every_s = stack, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-supervisor", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.stack.supervise()
            except Exception:
                log.exception("supervise")

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


class Tail:
    """Every record on the feedback topic, read by a consumer of the bench's own (no
    group): how often each event id was delivered. After a broker restart it reads the
    new, empty broker's topic from the beginning again; a record is counted once, however
    often it is read (by partition, offset and timestamp)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.counts: Counter[str] = Counter()
        self._seen: set[tuple[int, int, int]] = set()
        self._reset = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-tail", daemon=True)

    def reset(self) -> None:
        self._reset.set()

    def _open(self) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", request_timeout_ms=10_000,
        )  # fmt: skip
        partitions = consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            consumer.close()
            raise RuntimeError(f"{self.topic}: no partitions (yet)")
        consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        return consumer

    def _run(self) -> None:
        while not self._stop.is_set():
            self._reset.clear()
            try:
                consumer = self._open()
            except Exception as exc:  # the broker is away: try again
                log.debug("tail: %s", exc)
                self._stop.wait(1.0)
                continue
            try:
                while not (self._stop.is_set() or self._reset.is_set()):
                    for batch in consumer.poll(timeout_ms=500).values():
                        for record in batch:
                            self._count(record)
            except Exception as exc:
                log.debug("tail: %s", exc)
                self._stop.wait(1.0)
            finally:
                consumer.close()

    def _count(self, record: Any) -> None:
        key = (record.partition, record.offset, record.timestamp)
        if key in self._seen:
            return
        self._seen.add(key)
        event_id = json.loads(record.value).get("event_id")
        if isinstance(event_id, str) and event_id.startswith(f"{PREFIX}-"):
            self.counts[event_id] += 1

    def __enter__(self) -> Tail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


# --- faults ---------------------------------------------------------------------------------
def wait_for(check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """``check()``'s first truthy value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    return None


def _training(folder: Path) -> bool:
    """The round in ``folder`` trains a model, or is over."""
    return _contents(folder) != []


def _contents(folder: Path) -> list[str] | None:
    """The names in ``folder``; None once it is gone."""
    try:
        return sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return None


class Chaos:
    """Injects each fault and waits (bounded) until the part is back; keeps the windows."""

    def __init__(self, stack: LocalStack, model_path: Path, tail: Tail, args: Any) -> None:
        self.stack, self.model_path, self.tail, self.args = stack, model_path, tail, args
        self.windows: list[Window] = []
        self.killed_rounds: set[str] = set()  # the scratch folders of killed rounds

    def inject(self, spec: FaultSpec) -> Window:
        window: Window = getattr(self, spec.kind)(spec)
        self.windows.append(window)
        return window

    def processor(self, spec: FaultSpec) -> Window:
        proc = self.stack.processor
        if proc is None or proc.poll() is not None:
            return self._not_injected(spec, "no processor running")
        start = time.time()
        proc.kill()
        proc.wait(10)

        def restarted() -> Any:
            now = self.stack.processor
            return now if now is not None and now is not proc else None

        new = wait_for(restarted, timeout=60)
        detail = f"pid {proc.pid} SIGKILLed" + (
            f"; the supervisor started pid {new.pid}" if new else "; not restarted within 60 s"
        )
        return Window("processor", start, time.time(), detail)

    def broker(self, spec: FaultSpec) -> Window:
        from streaming.topics import ensure_topics

        broker = self.stack.broker
        if broker is None:
            return self._not_injected(spec, "no embedded broker (--kafka)")
        pid = broker.pid
        start = time.time()
        broker.kill()
        time.sleep(spec.down_s)
        broker.start()
        ensure_topics(self.stack.bootstrap, self.stack.settings.partitions)  # it forgot them
        self.tail.reset()
        return Window(
            "broker", start, time.time(), f"pid {pid} SIGKILLed; back on {broker.bootstrap}"
        )

    def _round_in_progress(self) -> Path | None:
        work = self.stack.settings.home / "work"
        rounds = sorted(p for p in work.glob("round-*") if p.name not in self.killed_rounds)
        return rounds[-1] if rounds else None

    def trainer(self, spec: FaultSpec) -> Window:
        import ray

        deadline = time.monotonic() + self.args.trainer_wait_s
        print(f"  trainer: waiting (up to {self.args.trainer_wait_s:.0f} s) for a round to train",
              flush=True)  # fmt: skip
        while time.monotonic() < deadline:
            folder = wait_for(self._round_in_progress, max(0.0, deadline - time.monotonic()))
            if folder is None:
                break
            # Killed once it trains (a model's folder is in its scratch), not while it reads.
            wait_for(partial(_training, folder), max(0.0, deadline - time.monotonic()))
            time.sleep(self.args.trainer_kill_after_s)
            stage = _contents(folder)
            if not stage:  # that round ended (skipped, rejected) first: the next one
                continue
            start = time.time()
            ray.kill(self.stack.trainer, no_restart=True)
            self.killed_rounds.add(folder.name)
            time.sleep(spec.down_s)
            self.stack.start_trainer(self.model_path)
            ray.get(self.stack.trainer.due.remote(), timeout=120)  # it is up
            detail = f"killed in {folder.name} (training: {', '.join(stage)}); started again"
            return Window("trainer", start, time.time(), detail)
        return self._not_injected(spec, f"no round started within {self.args.trainer_wait_s} s")

    def _replica(self) -> dict[str, Any] | None:
        live = [a for a in ray_actors() if role_of(a["ActorClassName"]) == "serving replica"]
        return live[0] if live else None

    def replica(self, spec: FaultSpec) -> Window:
        import httpx
        import ray

        old = self._replica()
        if old is None:
            return self._not_injected(spec, "no live replica")
        handle = ray.get_actor(old["Name"], namespace="serve")
        start = time.time()
        ray.kill(handle, no_restart=True)

        def back() -> dict[str, Any] | None:
            new = self._replica()
            if new is None or new["ActorID"] == old["ActorID"]:
                return None
            try:
                ok = httpx.get(f"{self.stack.url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return None
            return new if ok else None

        new = wait_for(back, timeout=self.args.replica_wait_s)
        detail = f"pid {old['Pid']} killed; " + (
            f"Serve started pid {new['Pid']}" if new else "no replica back in time"
        )
        return Window("replica", start, time.time(), detail)

    def _not_injected(self, spec: FaultSpec, why: str) -> Window:
        now = time.time()
        return Window(spec.kind, now, now, f"not injected: {why}", injected=False)


# --- the run --------------------------------------------------------------------------------
def stored_feedback(url: str) -> Counter[str]:
    """How many feedback rows the store holds per event id of the bench's users."""
    from sqlalchemy import create_engine, func, select

    from streaming import store as s

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            c = s.feedback.c.event_id
            rows = conn.execute(select(c, func.count()).where(c.like(f"{PREFIX}-%")).group_by(c))
            return Counter({str(event_id): int(n) for event_id, n in rows})
    finally:
        engine.dispose()


def stored_interactions(url: str) -> set[str]:
    from sqlalchemy import create_engine, select

    from streaming import store as s

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            t = s.interactions.c
            rows = conn.execute(select(t.response_id).where(t.conversation_id.like(f"{PREFIX}-%")))
            return {str(r[0]) for r in rows}
    finally:
        engine.dispose()


def spooled(url: str) -> int | None:
    import httpx

    try:
        return int(httpx.get(f"{url}/healthz", timeout=5).json()["spooled_events"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def drain(url: str, store_url: str, accepted: set[str], answered: set[str], args: Any) -> float:
    """Until the spool is empty and the store holds every accepted event and answered
    chat, or nothing more arrived for ``--quiet-s``; at most ``--drain-s``. Returns the
    seconds it took."""
    started = time.monotonic()
    last: tuple[int, int] | None = None
    changed = started
    while time.monotonic() - started < args.drain_s:
        missing = (
            len(accepted - set(stored_feedback(store_url))),
            len(answered - stored_interactions(store_url)),
        )
        if missing != last:
            last, changed = missing, time.monotonic()
        spool = spooled(url)
        if spool == 0 and (missing == (0, 0) or time.monotonic() - changed > args.quiet_s):
            break
        print(f"  draining: spool {spool}, missing events {missing[0]}, "
              f"interactions {missing[1]}", flush=True)  # fmt: skip
        time.sleep(3.0)
    return time.monotonic() - started


def trainer_rounds(registry_dir: Path) -> list[dict[str, Any]]:
    path = registry_dir / "rounds.jsonl"
    if not path.is_file():
        return []
    rounds = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: r.get(k) for k in ("started_ms", "outcome", "version", "reasons")} for r in rounds]


def verify_versions(registry_dir: Path) -> dict[str, str]:
    """Every published version, checked against its manifest: "ok" or the error."""
    from trainer.registry import Registry

    registry = Registry(registry_dir)
    out = {}
    for manifest in registry.versions():
        try:
            registry.verify(manifest.ref)
            out[manifest.ref] = "ok"
        except Exception as exc:
            out[manifest.ref] = f"{type(exc).__name__}: {exc}"
    return out


@dataclass
class Clock:
    """Load began at ``t0``; progress lines every ``every_s`` while waiting."""

    t0: float
    users: Users
    every_s: float = 15.0
    _next: float = field(default=0.0)

    def rel(self, t: float) -> float:
        return t - self.t0

    def wait_until(self, when: float) -> None:
        while (now := time.time()) < when:
            if now >= self._next:
                self.progress()
                self._next = now + self.every_s
            time.sleep(min(1.0, when - now))

    def progress(self) -> None:
        u = self.users
        print(
            f"  t={self.rel(time.time()):5.0f}s  chats {len(u.chats)}, errors {len(u.failed())}, "
            f"feedback accepted {len(u.accepted)}, retried {len(u.retries)}",
            flush=True,
        )


def load(users: Users, chaos: Chaos, specs: list[FaultSpec], args: Any) -> dict[str, float]:
    """The phases, under the users' load: warm-up, the faults, the calm tail. Returns
    when each began (and when the load ended), unix seconds."""
    clock = Clock(time.time(), users)
    print(f"warm-up: {args.warmup_s:.0f} s of calm load, {args.clients} users", flush=True)
    clock.wait_until(clock.t0 + args.warmup_s)
    chaos_start, previous_end, late = time.time(), -math.inf, 0.0
    for spec in specs:
        when, late = start_of(chaos_start + spec.at_s, late, previous_end, args.gap_s)
        clock.wait_until(when)
        w = chaos.inject(spec)
        previous_end = w.end
        took = w.end - w.start
        print(f"[t={clock.rel(w.start):.0f}s] {w.kind}: {w.detail} ({took:.1f} s)", flush=True)
    tail_start = time.time()
    print(f"calm tail: {args.tail_s:.0f} s", flush=True)
    clock.wait_until(tail_start + args.tail_s)
    return {"t0": clock.t0, "chaos": chaos_start, "tail": tail_start, "end": time.time()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.object_store import ObjectStore
    from monitoring import logs
    from streaming.broker import MEMORY

    specs = parse_schedule(args.schedule)
    home = Path(tempfile.mkdtemp(prefix="livealign-chaos-"))
    logs.setup(home / "livealign.log", quiet=True)
    with contextlib.ExitStack() as resources:
        storage = MEMORY
        if args.broker_storage == "s3":
            storage = resources.enter_context(ObjectStore(home / "object_store.log")).url
        return _run(args, specs, home, storage)


def _run(
    args: argparse.Namespace, specs: list[FaultSpec], home: Path, storage: str
) -> dict[str, Any]:
    from bench.canary_live import Users
    from livealign.config import Settings
    from livealign.stack import LocalStack, resolve_model
    from streaming.broker import free_port
    from streaming.events import TOPIC_FEEDBACK

    # The driver's Kafka clients (the tail, the topics' admin) lose the broker on purpose.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    settings = Settings(
        home=home, model="tiny", port=free_port(), broker_port=free_port(),
        broker_storage=storage,
        max_model_len=512, default_max_tokens=16,
        settle_s=args.settle_s,  # responses settle into records soon: the trainer has data
        # Rounds on the interval alone (a count no run reaches), so they come at a known
        # pace: without a stable version every record is new, and a count would start
        # one round after another.
        trainer_interval_s=args.trainer_interval_s, trainer_min_new_records=10**9,
        # Every candidate refused (its answers' length ratio must be both >= 1e9 and <= 2):
        # a published one would go on trial as the canary, and no round runs while one is
        # on trial, so there would be no round left to kill.
        trainer_overrides={"gate": {"min_length_ratio": 1e9}},
    )  # fmt: skip
    print(f"chaos: home {home}; broker storage {storage}; faults {args.schedule}", flush=True)
    with LocalStack(settings, quiet=True) as stack:
        model_path = resolve_model(settings)
        store_url = settings.processor_config(stack.bootstrap).store_url
        users = Users(
            stack.url, args.clients, 1.0, args.seed, name=PREFIX,
            timeout=args.timeout_s, retry_s=args.retry_s, pause_s=args.pause_s,
        )  # fmt: skip
        tail = Tail(stack.bootstrap, TOPIC_FEEDBACK)
        chaos = Chaos(stack, model_path, tail, args)
        with Supervisor(stack), tail, Sampler(stack, args.sample_s) as sampler:
            with users:
                times = load(users, chaos, specs, args)
            print("load stopped; draining", flush=True)
            accepted = {event_id for event_id, _ in users.accepted}
            answered = {c.response_id for c in users.chats if c.status == 200}
            drain_s = drain(stack.url, store_url, accepted, answered, args)
            time.sleep(2.0)  # the tail's last poll
        stored = stored_feedback(store_url)
        interactions = stored_interactions(store_url)
        rounds = trainer_rounds(settings.registry_dir)
        versions = verify_versions(settings.registry_dir)
        # A killed round's scratch is removed by the next round (a round still running
        # now has its own; a kill with no round after it leaves its scratch).
        left = sorted(chaos.killed_rounds & {p.name for p in (home / "work").glob("round-*")})
        spool_left = spooled(stack.url)
    return summarize(
        args, users, chaos.windows, stored, tail.counts, interactions, sampler.samples,
        times=times,
        extra={"drain_s": drain_s, "spooled_at_end": spool_left, "trainer_rounds": rounds,
               "versions_verified": versions, "killed_round_scratch_left": left,
               "home": str(home)},
    )  # fmt: skip


def summarize(
    args: argparse.Namespace,
    users: Users,
    windows: list[Window],
    stored: Counter[str],
    on_topic: Counter[str],
    interactions: set[str],
    samples: list[Sample],
    times: dict[str, float],
    extra: dict[str, Any],
) -> dict[str, Any]:
    t0, slack = times["t0"], args.slack_s
    failed = users.failed()
    errors = attribute(((c.started, c.when) for c in failed), windows, slack)
    retried = attribute(((a.started, a.ended) for a in users.retries), windows, slack)
    delivery = account((e for e, _ in users.accepted), stored, on_topic)
    accepted_at = dict(users.accepted)
    lost_at = {e: accepted_at[e] for e in delivery.lost}
    forgets = args.broker_storage == "memory"
    lost_by = lost_to(lost_at.values(), windows, t0, forgets)
    unstored = [
        c.when for c in users.chats if c.status == 200 and c.response_id not in interactions
    ]
    unstored_by = lost_to(unstored, windows, t0, forgets)
    answered = [c for c in users.chats if c.status == 200]
    calm = [c.latency for c in answered if c.when < times["chaos"]]
    chaos_ok = [
        c.latency
        for c in answered
        if times["chaos"] <= c.started and window_of(c.started, c.when, windows, slack) == OUTSIDE
    ]
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_s": times["end"] - t0,
        "faults": [
            {**asdict(w), "start": w.start - t0, "end": w.end - t0, "down_s": w.end - w.start}
            for w in windows
        ],
        "chats": len(users.chats),
        "chat_errors": len(failed),
        "chat_errors_by_window": dict(errors),
        "chat_errors_outside_replica_windows": sum(n for k, n in errors.items() if k != "replica"),
        "chat_error_statuses": dict(Counter(c.status for c in failed)),
        "feedback_accepted": delivery.accepted,
        "feedback_exactly_once": delivery.exactly_once,
        "lost": len(delivery.lost),
        "lost_to": lost_by,
        "lost_to_broker_memory": lost_to_broker(lost_by),
        "lost_otherwise": len(delivery.lost) - lost_to_broker(lost_by),
        "lost_examples": [(e, lost_at[e] - t0) for e in delivery.lost[:20]],
        "duplicated_in_store": len(delivery.stored_twice),
        "duplicated_in_store_note": "impossible by the schema: event_id is the primary key "
        "of the feedback table",
        "duplicated_on_topic": delivery.topic_duplicates,
        "extra_topic_deliveries": delivery.topic_extra,
        "topic_events_seen": len(on_topic),
        "stored_unacknowledged": delivery.stored_unacknowledged,
        "feedback_abandoned": len(users.abandoned),
        "feedback_abandoned_statuses": dict(Counter(s for _, s in users.abandoned)),
        "feedback_retries_by_window": dict(retried),
        "interactions_answered": len(answered),
        "interactions_lost": len(unstored),
        "interactions_lost_to": unstored_by,
        "interactions_lost_otherwise": len(unstored) - lost_to_broker(unstored_by),
        "latency_calm_p50_s": quantile(calm, 0.5),
        "latency_calm_p99_s": quantile(calm, 0.99),
        "latency_chaos_outside_windows_p50_s": quantile(chaos_ok, 0.5),
        "latency_chaos_outside_windows_p99_s": quantile(chaos_ok, 0.99),
        "rss": rss_summary(samples, args.rss_settle_s),
        "rss_samples": {  # role -> [seconds from t0, pid, MiB]
            role: [[x.t - t0, x.pid, x.rss / 2**20] for x in samples if x.role == role]
            for role in sorted({x.role for x in samples})
        },
        **extra,
    }


def report(n: dict[str, Any]) -> None:
    print(
        f"\nchaos: {n['args']['clients']} users, {n['load_s'] / 60:.1f} min of load, "
        f"{sum(f['injected'] for f in n['faults'])} faults"
    )
    print("| fault | at s | down s | what happened |\n|---|---:|---:|---|")
    for f in n["faults"]:
        print(f"| {f['kind']} | {f['start']:.0f} | {f['down_s']:.1f} | {f['detail']} |")
    by = ", ".join(f"{k}: {v}" for k, v in sorted(n["chat_errors_by_window"].items())) or "none"
    print(f"\nchats: {n['chats']}")
    print(
        f"chat errors: {n['chat_errors']} ({by}); outside the replica's windows: "
        f"{n['chat_errors_outside_replica_windows']}"
    )
    print(f"feedback accepted: {n['feedback_accepted']}")
    print(
        f"feedback arrived exactly once: {n['feedback_exactly_once']} of {n['feedback_accepted']}"
    )
    print(f"lost: {n['lost']}{_lost(n['lost_to'])}; otherwise: {n['lost_otherwise']}")
    print(
        f"duplicated: {n['duplicated_in_store']} in the store ({n['duplicated_in_store_note']}); "
        f"on the topic {n['duplicated_on_topic']} events delivered more than once "
        f"({n['extra_topic_deliveries']} extra deliveries, the processor drops them)"
    )
    print(
        f"stored but never acknowledged: {n['stored_unacknowledged']}; abandoned by users: "
        f"{n['feedback_abandoned']}"
    )
    print(
        f"interactions lost: {n['interactions_lost']} of {n['interactions_answered']} answered "
        f"chats{_lost(n['interactions_lost_to'])}; otherwise: {n['interactions_lost_otherwise']}"
    )
    print(
        f"chat latency p50 / p99: calm {n['latency_calm_p50_s']:.3f} / "
        f"{n['latency_calm_p99_s']:.3f} s; during the faults, outside their windows "
        f"{n['latency_chaos_outside_windows_p50_s']:.3f} / "
        f"{n['latency_chaos_outside_windows_p99_s']:.3f} s"
    )
    print(
        f"drain: {n['drain_s']:.0f} s; spooled at the end: {n['spooled_at_end']}; trainer "
        f"rounds: {[r['outcome'] for r in n['trainer_rounds']]}; versions: "
        f"{n['versions_verified'] or 'none published'}; killed rounds' scratch left: "
        f"{n['killed_round_scratch_left'] or 'none'}"
    )
    print(
        "\n| process | incarnations | RSS start MiB | RSS end MiB | growth MiB | over s "
        "| MiB/min |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for role, r in sorted(n["rss"].items()):
        print(
            f"| {role} | {r['incarnations']} | {r['start_mib']:.0f} | {r['end_mib']:.0f} | "
            f"{r['growth_mib']:+.1f} ({r['growth_pct']:+.1f}%) | {r['seconds']:.0f} | "
            f"{r['mib_per_min']:+.2f} |"
        )


def _lost(by: dict[str, Any]) -> str:
    """`` (to broker@80s: 12, oldest acknowledged 1.2 s before; ...)``"""
    parts = [
        f"to {label}: {v['n']}, oldest acknowledged {v['oldest_s']:.1f} s before"
        if label.startswith("broker@")
        else f"{label}: {v['n']}"
        for label, v in by.items()
    ]
    return f" ({'; '.join(parts)})" if parts else ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"A smoke run: schedule {QUICK_SCHEDULE}, 20 s warm-up and tail.",
    )
    p.add_argument("--schedule", default=None, help=f"Faults (default {DEFAULT_SCHEDULE}).")
    p.add_argument("--clients", type=int, default=4, help="Concurrent simulated users.")
    p.add_argument("--pause-s", type=float, default=0.2, help="A user's pause between chats.")
    p.add_argument("--warmup-s", type=float, default=None, help="Calm load first (60; quick 20).")
    p.add_argument("--tail-s", type=float, default=None, help="Calm load last (45; quick 20).")
    p.add_argument("--timeout-s", type=float, default=30.0, help="Client timeout per request.")
    p.add_argument("--retry-s", type=float, default=120.0, help="How long feedback is retried.")
    p.add_argument("--settle-s", type=float, default=5.0, help="The processor's settle_s.")
    p.add_argument(
        "--trainer-interval-s", type=float, default=None, help="A round this often (30; quick 20)."
    )
    p.add_argument(
        "--trainer-wait-s", type=float, default=180.0, help="Longest wait for a round to kill."
    )
    p.add_argument(
        "--trainer-kill-after-s",
        type=float,
        default=3.0,
        help="How long after its training began a round is killed.",
    )
    p.add_argument(
        "--replica-wait-s",
        type=float,
        default=300.0,
        help="Longest wait for Serve to bring a replica back.",
    )
    p.add_argument(
        "--slack-s",
        type=float,
        default=1.0,
        help="A call ending this close to a fault window counts as in it.",
    )
    p.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling interval.")
    p.add_argument(
        "--rss-settle-s",
        type=float,
        default=30.0,
        help="A process's RSS is measured from this long after it appeared.",
    )
    p.add_argument("--drain-s", type=float, default=180.0, help="Longest wait at the end.")
    p.add_argument(
        "--quiet-s",
        type=float,
        default=30.0,
        help="Drain ends when nothing more arrived for this long.",
    )
    p.add_argument(
        "--gap-s",
        type=float,
        default=15.0,
        help="Least time between a fault's end and the next one's start.",
    )
    p.add_argument(
        "--broker-storage",
        choices=("s3", "memory"),
        default="s3",
        help="Where the embedded broker keeps its logs: s3 (a local S3-compatible store, "
        "which outlives a broker kill, as a Kafka broker's disk does) or memory (a kill "
        "forgets what it acknowledged).",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="Results file.")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on --quick."""
    quick = args.quick
    if args.schedule is None:  # "" is a schedule: no faults
        args.schedule = QUICK_SCHEDULE if quick else DEFAULT_SCHEDULE
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (20.0 if quick else 60.0)
    args.tail_s = args.tail_s if args.tail_s is not None else (20.0 if quick else 45.0)
    if args.trainer_interval_s is None:
        args.trainer_interval_s = 20.0 if quick else 30.0
    args.out = args.out or RESULTS / ("chaos_quick.json" if quick else "chaos.json")
    parse_schedule(args.schedule)  # a bad schedule fails before the stack starts
    return args


def main(argv: list[str] | None = None) -> int:
    args = resolve(parser().parse_args(argv))
    numbers = run(args)
    report(numbers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
