"""The durable preference store: what the processor has seen and what it produced.

SQLAlchemy Core over SQLite by default (a file), or any SQLAlchemy URL (PostgreSQL for a
cluster). Every write the processor makes for one batch of Kafka records happens in one
transaction, together with the fuser's learned state, and offsets are committed only
after it: a batch replayed after a crash finds its events already stored (primary keys)
and changes nothing, so restarts neither lose nor duplicate records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_json
from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    false,
    func,
    literal_column,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from livealign.files import private_sqlite
from streaming.events import (
    ARM_LEN,
    HASH_LEN,
    ID_LEN,
    ChatMessage,
    FeedbackKind,
    PreferenceLabel,
    PreferencePair,
    ResponseOutcome,
    WireFeedback,
    WireInteraction,
)

meta = MetaData()

# Unix milliseconds take 64 bits: PostgreSQL's INTEGER has 32 and refused every real
# timestamp ("integer out of range": the whole batch failed, and so did its replay). SQLite
# stores any integer in up to 64 bits: nothing changes there, new file or old.
Millis = BigInteger

interactions = Table(
    "interactions", meta,
    Column("response_id", String(ID_LEN), primary_key=True),
    Column("conversation_id", String(ID_LEN), nullable=False),
    Column("prompt_hash", String(HASH_LEN), nullable=False),
    Column("user_hash", String(HASH_LEN)),
    Column("adapter", String(ID_LEN), nullable=False),
    Column("arm", String(ARM_LEN), nullable=False),
    Column("created_ms", Millis, nullable=False),
    Column("event", JSON, nullable=False),
    # Set once the response's feedback window closed and it taught the calibration.
    Column("calibrated", Boolean, nullable=False, default=False),
    Index("ix_interactions_siblings", "conversation_id", "prompt_hash"),
    Index("ix_interactions_settle", "calibrated", "created_ms"),
)  # fmt: skip

# A literal, not a bound parameter: SQLite only uses a partial index for a query whose
# WHERE clause repeats the index's own condition.
PENDING = text("status = 'pending'")

feedback = Table(
    "feedback", meta,
    Column("event_id", String(ID_LEN), primary_key=True),
    Column("response_id", String(ID_LEN), nullable=False, index=True),
    Column("rater", String(HASH_LEN)),
    Column("kind", String(20), nullable=False),
    Column("received_ms", Millis, nullable=False),
    # pending: waiting for its interaction; joined; orphaned: grace period ran out;
    # dropped: cleaned out (status_reason says why), kept so a replay stays dropped.
    Column("status", String(20), nullable=False),
    Column("status_reason", String(40)),
    Column("signal", JSON),  # the normalized Signal once joined
    Column("event", JSON, nullable=False),
    # Only pending feedback is indexed by age, for the grace-period sweep: the rest (most
    # of it joins or is dropped at once) no longer costs every insert an index entry.
    # (Stores made before keep their full index on (status, received_ms): also right.)
    Index("ix_feedback_pending", "received_ms", sqlite_where=PENDING, postgresql_where=PENDING),
)  # fmt: skip
# The order feedback was stored in, which the processor reads it back in (a rater's latest
# vote supersedes the earlier, the latest edit makes the pair, the fuser learns in order).
# SQLite numbers rows as they are inserted (rowid; feedback rows are never deleted).
# PostgreSQL has no such number, and returns rows in an order its updates reshuffle: there
# the table gets a column the database numbers as rows are inserted. Not one of the
# table's columns above: rows are written without it, and SQLite files stay as they are.
STORED = "stored_seq"
event.listen(
    feedback, "after_create",
    DDL(f"ALTER TABLE feedback ADD COLUMN {STORED} BIGINT GENERATED ALWAYS AS IDENTITY")
    .execute_if(dialect="postgresql"),
)  # fmt: skip

labels = Table(
    "labels", meta,
    Column("response_id", String(ID_LEN), primary_key=True),
    Column("prompt", JSON, nullable=False),
    Column("completion", Text, nullable=False),
    Column("desirable", Boolean, nullable=False),
    Column("weight", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("scenario", String(20), nullable=False),
    Column("adapter", String(ID_LEN), nullable=False),
    Column("n_signals", Integer, nullable=False),
    Column("updated_ms", Millis, nullable=False),
)  # fmt: skip

pairs = Table(
    "pairs", meta,
    Column("pair_id", String(64), primary_key=True),
    Column("prompt", JSON, nullable=False),
    Column("chosen", Text, nullable=False),
    Column("rejected", Text, nullable=False),
    Column("weight", Float, nullable=False),
    Column("provenance", String(20), nullable=False),  # edit | regenerate | compare
    Column("chosen_response_id", String(ID_LEN)),
    Column("rejected_response_id", String(ID_LEN), nullable=False),
    Column("adapter", String(ID_LEN), nullable=False),
    Column("updated_ms", Millis, nullable=False),
)  # fmt: skip

# One row per settled response: what the canary controller reads, per adapter and arm.
outcomes = Table(
    "outcomes", meta,
    Column("response_id", String(ID_LEN), primary_key=True),
    Column("conversation_id", String(ID_LEN), nullable=False),
    Column("adapter", String(ID_LEN), nullable=False),
    Column("arm", String(ARM_LEN), nullable=False),
    Column("created_ms", Millis, nullable=False),
    Column("score", Float),
    Column("confidence", Float, nullable=False),
    Column("n_signals", Integer, nullable=False),
    Column("thumbs_up", Integer, nullable=False),
    Column("thumbs_down", Integer, nullable=False),
    Column("regenerated", Boolean, nullable=False),
    Column("error", Boolean, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),  # the event's: any 64-bit one
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=False),
    Column("updated_ms", Millis, nullable=False),
    Index("ix_outcomes_adapter", "adapter", "created_ms"),
)  # fmt: skip

state = Table(
    "processor_state", meta,
    Column("key", String(100), primary_key=True),
    Column("value", JSON, nullable=False),
)  # fmt: skip

# The fuser's rater statistics, one row per rater (the rest of its state is the
# processor_state row "fuser"): a batch rewrites only the raters it changed.
raters = Table(
    "rater_state", meta,
    Column("rater", String(ID_LEN), primary_key=True),
    # Recency (the fuser forgets the oldest first); one more per rater changed, ever.
    Column("seq", BigInteger, nullable=False),
    Column("value", JSON, nullable=False),
)  # fmt: skip
FUSER = "fuser"
# The fusion weights the processor fuses with now ({"updated_ms", "weights"}), saved with
# its state: what the status page shows, read without knowing the processor's config.
FUSION_WEIGHTS = "fusion_weights"


# A row for ``write``: one value per column, in the table's column order, JSON columns as
# JSON text (the processor stores events as received and serializes the rest with
# pydantic-core: several times faster than the JSON type's json.dumps).
Row = tuple[Any, ...]
# Values per IN (...) query: under SQLite's bound-parameter limit.
CHUNK = 500


def _json_columns(table: Table) -> frozenset[str]:
    return frozenset(c.name for c in table.columns if isinstance(c.type, JSON))


def _select_in_chunks(conn: Connection, head: str, values: list[Any], tail: str = "") -> list[Row]:
    """Rows of ``{head} (?, ?, ...){tail}`` through the driver, one query per CHUNK of
    values."""
    cursor = conn.connection.cursor()
    out: list[Row] = []
    for i in range(0, len(values), CHUNK):
        chunk = values[i : i + CHUNK]
        cursor.execute(f"{head} ({', '.join('?' * len(chunk))}){tail}", chunk)
        out.extend(cursor.fetchall())
    return out


def loads(value: Any) -> Any:
    """A JSON column's value as read by ``select_in``: text from SQLite's driver, already
    decoded from SQLAlchemy (other databases)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the trainer) never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# libpq waits for a server forever unless told: a database server out of reach must fail
# the processor's start (or batch), not hang it. A URL's own connect_timeout wins.
PG_CONNECT_TIMEOUT_S = 10


def _connect_args(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        return {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    return {}


def sqlite_file(engine: Engine) -> Path | None:
    """The file a SQLite engine opens; None for an in-memory database or a URI."""
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


class PreferenceStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, future=True, connect_args=_connect_args(url))
        # SQLite, the default, is written and read through its driver (plain executemany,
        # tuples, JSON as text): SQLAlchemy's per-row parameter processing cost more than
        # SQLite itself. Other databases go through SQLAlchemy Core (the same rows).
        self.direct = self.engine.dialect.name == "sqlite"
        if self.direct:
            file = sqlite_file(self.engine)
            if file is not None:  # users' prompts and feedback: 0600, WAL files alike
                private_sqlite(file)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # How feedback is put in the order stored (see STORED).
        self._stored = "rowid" if self.engine.dialect.name == "sqlite" else STORED
        self._create_tables()
        self._sql: dict[tuple[str, ...], str] = {}
        self._rater_seq: int | None = None  # the next rater_state.seq, once known

    def _create_tables(self, attempts: int = 5) -> None:
        """Create missing tables. Processors of one group start together and each creates
        what it finds missing: one may create a table after another looked for it, and
        the loser's CREATE fails. Looking again then finds it. (On PostgreSQL the loser
        may also fail on its catalog's unique index: an IntegrityError.)"""
        for attempt in range(attempts):
            try:
                meta.create_all(self.engine)
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _insert(self, table: Table) -> Any:
        return (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)

    # --- writes (inside a transaction) ---------------------------------------------------
    def add_new(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert rows whose primary key is new; existing ones are left as they are."""
        if rows:
            conn.execute(self._insert(table).on_conflict_do_nothing(), rows)

    def upsert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert or replace by primary key: a record written twice is stored once."""
        if not rows:
            return
        stmt = self._insert(table)
        key = [c.name for c in table.primary_key.columns]
        cols = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in key}
        conn.execute(stmt.on_conflict_do_update(index_elements=key, set_=cols), rows)

    def write(self, conn: Connection, table: Table, rows: Sequence[Row], replace: bool) -> None:
        """Insert ``rows`` (see ``Row``) whose primary key is new; with ``replace``, rows
        whose key exists replace the stored ones (upsert), otherwise they are left as is."""
        if not rows:
            return
        if not self.direct:
            json_cols = _json_columns(table)
            names = [c.name for c in table.columns]
            dicts = [
                {n: loads(v) if n in json_cols else v for n, v in zip(names, row, strict=True)}
                for row in rows
            ]
            (self.upsert if replace else self.add_new)(conn, table, dicts)
            return
        key = ("write", table.name, str(replace))
        sql = self._sql.get(key)
        if sql is None:
            names = [c.name for c in table.columns]
            pk = [c.name for c in table.primary_key.columns]
            sql = (
                f"INSERT INTO {table.name} ({', '.join(_q(n) for n in names)}) "
                f"VALUES ({', '.join('?' for _ in names)}) ON CONFLICT "
            )
            if replace:
                sets = ", ".join(f"{_q(n)} = excluded.{_q(n)}" for n in names if n not in pk)
                sql += f"({', '.join(_q(n) for n in pk)}) DO UPDATE SET {sets}"
            else:
                sql += "DO NOTHING"
            self._sql[key] = sql
        conn.connection.cursor().executemany(sql, rows)

    def set_feedback(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Update status, reason and signal (JSON text) of stored feedback rows, in one
        executemany."""
        if not rows:
            return
        if not self.direct:
            self._set_feedback_core(conn, rows)
            return
        sql = "UPDATE feedback SET status = ?, status_reason = ?, signal = ? WHERE event_id = ?"
        params = [(r["status"], r["status_reason"], r["signal"], r["event_id"]) for r in rows]
        conn.connection.cursor().executemany(sql, params)

    def _set_feedback_core(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        stmt = (
            update(feedback)
            .where(feedback.c.event_id == bindparam("key"))
            .values(status=bindparam("status"), status_reason=bindparam("status_reason"),
                    signal=bindparam("signal"))
        )  # fmt: skip
        conn.execute(
            stmt,
            [
                {"key": r["event_id"], "status": r["status"], "status_reason": r["status_reason"],
                 "signal": loads(r["signal"])}
                for r in rows
            ],
        )  # fmt: skip

    def save_state(self, conn: Connection, key: str, value: dict[str, Any]) -> None:
        self.write(conn, state, [(key, to_json(value).decode())], replace=True)

    def save_fuser(
        self,
        conn: Connection,
        base: dict[str, Any],
        changed: list[list[Any]],
        forgotten: list[str],
        everything: bool,
    ) -> None:
        """Save ``Fuser.state_changes()``: its raters one row each, the rest under the key
        "fuser". ``everything``: ``changed`` holds all raters, and no other row stays."""
        if everything:
            conn.execute(delete(raters))
            self._rater_seq = 0
        else:
            for i in range(0, len(forgotten), CHUNK):
                conn.execute(delete(raters).where(raters.c.rater.in_(forgotten[i : i + CHUNK])))
        if self._rater_seq is None:
            self._rater_seq = int(conn.scalar(select(func.max(raters.c.seq))) or 0) + 1
        seq = self._rater_seq
        rows = [(r, seq + i, to_json(value).decode()) for i, (r, value) in enumerate(changed)]
        self._rater_seq = seq + len(rows)
        self.write(conn, raters, rows, replace=True)
        self.save_state(conn, FUSER, base)

    def load_fuser(self) -> dict[str, Any] | None:
        """The fuser's state as ``Fuser.state_dict`` gives it (raters in recency order)."""
        base = self.load_state(FUSER)
        if base is None:
            return None
        with self.engine.connect() as conn:
            rows = conn.execute(select(raters.c.rater, raters.c.value).order_by(raters.c.seq))
            # Raters saved before they had rows of their own come first (older).
            base["raters"] = [*base.get("raters", []), *([r, loads(v)] for r, v in rows)]
        return base

    # --- reads ---------------------------------------------------------------------------
    def existing_ids(self, conn: Connection, table: Table, ids: Iterable[str]) -> set[str]:
        col = table.primary_key.columns.values()[0].name
        return {row[0] for row in self.select_in(conn, table, (col,), col, ids)}

    def select_in(
        self,
        conn: Connection,
        table: Table,
        columns: Sequence[str],
        column: str,
        values: Iterable[str],
        as_stored: bool = False,
    ) -> list[Row]:
        """``columns`` of the rows whose ``column`` is in ``values``, as tuples (JSON
        columns: pass them through ``loads``). ``as_stored`` (feedback only): by ``column``
        (as the index gives them), then in the order stored."""
        values = list(values)
        out: list[Row] = []
        if not self.direct:
            cols = [table.c[c] for c in columns]
            for i in range(0, len(values), CHUNK):
                stmt = select(*cols).where(table.c[column].in_(values[i : i + CHUNK]))
                if as_stored:
                    stmt = stmt.order_by(table.c[column], literal_column(self._stored))
                out.extend(tuple(r) for r in conn.execute(stmt))
            return out
        head = f"SELECT {', '.join(_q(c) for c in columns)} FROM {table.name} WHERE {_q(column)} IN"
        tail = f" ORDER BY {_q(column)}, {self._stored}" if as_stored else ""
        return _select_in_chunks(conn, head, values, tail)

    def labels_of_conversations(self, conn: Connection, conversations: Iterable[str]) -> list[Row]:
        """(conversation_id, prompt_hash, response_id, score, confidence, completion,
        adapter) of every label of these conversations' responses: the candidates for
        sibling pairs."""
        convs = list(conversations)
        cols = (
            interactions.c.conversation_id, interactions.c.prompt_hash, labels.c.response_id,
            labels.c.score, labels.c.confidence, labels.c.completion, labels.c.adapter,
        )  # fmt: skip
        out: list[Row] = []
        if self.direct:
            names = ", ".join(f"{c.table.name}.{_q(c.name)}" for c in cols)
            head = (
                f"SELECT {names} FROM labels JOIN interactions "
                "ON interactions.response_id = labels.response_id "
                "WHERE interactions.conversation_id IN"
            )
            return _select_in_chunks(conn, head, convs)
        for i in range(0, len(convs), CHUNK):
            stmt = (
                select(*cols)
                .join(interactions, interactions.c.response_id == labels.c.response_id)
                .where(interactions.c.conversation_id.in_(convs[i : i + CHUNK]))
            )
            out.extend(tuple(r) for r in conn.execute(stmt))
        return out

    def load_state(self, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            value = conn.scalar(select(state.c.value).where(state.c.key == key))
        return json.loads(value) if isinstance(value, str) else value

    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(table)) or 0)

    def all(self, table: Table) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(table))]

    # --- the processor's questions and writes -------------------------------------------
    def new_interactions(self, conn: Connection, response_ids: Iterable[str]) -> set[str]:
        """Those of ``response_ids`` already stored (a replay or a duplicate)."""
        return self.existing_ids(conn, interactions, response_ids)

    def known_events(self, conn: Connection, event_ids: Iterable[str]) -> set[str]:
        """Those of ``event_ids`` already stored, whatever became of them."""
        return self.existing_ids(conn, feedback, event_ids)

    def add_interactions(self, conn: Connection, rows: Sequence[Row]) -> None:
        """Store interactions (``interaction_row``); one already stored stays as it is."""
        self.write(conn, interactions, rows, replace=False)

    def add_feedback(self, conn: Connection, rows: Sequence[Row]) -> None:
        """Store feedback events (``feedback_row``); one already stored stays as it is."""
        self.write(conn, feedback, rows, replace=False)

    def upsert_labels(self, conn: Connection, rows: Sequence[Row]) -> None:
        self.write(conn, labels, rows, replace=True)

    def upsert_pairs(self, conn: Connection, rows: Sequence[Row]) -> None:
        self.write(conn, pairs, rows, replace=True)

    def stored_pairs(self, conn: Connection, pair_ids: Iterable[str]) -> set[str]:
        """Those of these pair ids the store holds."""
        return {r[0] for r in self.select_in(conn, pairs, ("pair_id",), "pair_id", pair_ids)}

    def upsert_outcomes(self, conn: Connection, rows: Sequence[Row]) -> None:
        self.write(conn, outcomes, rows, replace=True)

    def interactions_of(self, conn: Connection, response_ids: Iterable[str]) -> list[Row]:
        """(response_id, prompt_hash, calibrated, event JSON) of the stored interactions
        among these."""
        columns = ("response_id", "prompt_hash", "calibrated", "event")
        return self.select_in(conn, interactions, columns, "response_id", response_ids)

    def feedback_status(self, conn: Connection, response_ids: Iterable[str]) -> list[Row]:
        """(event_id, status) of every stored feedback event about these responses, each
        response's in the order stored."""
        return self.select_in(conn, feedback, ("event_id", "status"), "response_id", response_ids,
                              as_stored=True)  # fmt: skip

    def feedback_events(self, conn: Connection, event_ids: Iterable[str]) -> list[Row]:
        """(event_id, event JSON) of these stored feedback events."""
        return self.select_in(conn, feedback, ("event_id", "event"), "event_id", event_ids)

    def feedback_of(self, conn: Connection, response_ids: Iterable[str]) -> list[Row]:
        """(response_id, event_id, status, kind, signal JSON, event JSON) of every stored
        feedback event about these responses, each response's in the order stored."""
        columns = ("response_id", "event_id", "status", "kind", "signal", "event")
        return self.select_in(conn, feedback, columns, "response_id", response_ids, as_stored=True)

    def mark_orphans(self, conn: Connection, received_before_ms: int) -> int:
        """Pending feedback received before the cutoff becomes orphaned; returns how many."""
        stmt = (
            update(feedback)
            .where(and_(PENDING, feedback.c.received_ms < received_before_ms))
            .values(status="orphaned")
        )
        return int(conn.execute(stmt).rowcount)

    def settled(self, conn: Connection, created_before_ms: int, limit: int) -> list[str]:
        """Response ids, created before the cutoff, that have not calibrated the fuser yet,
        oldest first."""
        stmt = (
            select(interactions.c.response_id)
            # "= false", not "NOT calibrated": SQLite then searches the settle index.
            .where(
                interactions.c.calibrated == false(), interactions.c.created_ms < created_before_ms
            )
            # Said, not left to the database: calibration learns in this order, a backlog
            # settles its oldest first, and PostgreSQL returns rows in an order its updates
            # (of calibrated) reshuffle.
            .order_by(interactions.c.created_ms, interactions.c.response_id)
            .limit(limit)
        )
        return list(conn.scalars(stmt))

    def joined_signals(self, conn: Connection, response_ids: Iterable[str]) -> list[Row]:
        """(response_id, signal JSON) of every joined feedback event about these, each
        response's in the order stored."""
        rows = self.select_in(conn, feedback, ("response_id", "status", "signal"), "response_id",
                              response_ids, as_stored=True)  # fmt: skip
        return [(rid, signal) for rid, status, signal in rows if status == "joined"]

    def unsettled(self) -> int:
        """Stored responses whose feedback window has not closed yet (no records made)."""
        stmt = select(func.count()).select_from(interactions).where(~interactions.c.calibrated)
        with self.engine.connect() as conn:
            return int(conn.scalar(stmt) or 0)

    def mark_calibrated(self, conn: Connection, response_ids: list[str]) -> None:
        for i in range(0, len(response_ids), CHUNK):
            conn.execute(
                update(interactions)
                .where(interactions.c.response_id.in_(response_ids[i : i + CHUNK]))
                .values(calibrated=True)
            )

    # --- the canary controller's questions -------------------------------------------------
    def outcomes_since(self, adapters: Sequence[str], since_ms: int) -> list[dict[str, Any]]:
        """Settled outcomes of responses by these adapters created after ``since_ms``."""
        stmt = select(outcomes).where(
            and_(outcomes.c.adapter.in_(list(adapters)), outcomes.c.created_ms > since_ms)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def conversations_by_arm(self, since_ms: int) -> dict[str, int]:
        """Conversations whose first interaction came after ``since_ms``, by arm."""
        first = (
            select(interactions.c.conversation_id, func.min(interactions.c.created_ms).label("t"),
                   func.min(interactions.c.arm).label("arm"))
            .group_by(interactions.c.conversation_id)
            .subquery()
        )  # fmt: skip
        stmt = select(first.c.arm, func.count()).where(first.c.t > since_ms).group_by(first.c.arm)
        with self.engine.connect() as conn:
            return {str(arm): int(n) for arm, n in conn.execute(stmt)}

    # --- the status page's questions (read-only, each bounded by an index) ---------------
    def score_buckets(
        self, adapters: Sequence[str], since_ms: int, bucket_ms: int
    ) -> list[tuple[str, int, int, float]]:
        """(adapter, bucket, answers, mean score) of the settled, scored answers of these
        adapters created after ``since_ms``; bucket ``i`` holds those created in
        ``(since_ms + i * bucket_ms, since_ms + (i + 1) * bucket_ms]`` (about). Naming the
        adapters lets the (adapter, created_ms) index bound the rows read."""
        if not adapters:
            return []
        bucket = ((outcomes.c.created_ms - since_ms) // bucket_ms).label("bucket")
        stmt = (
            select(outcomes.c.adapter, bucket, func.count(), func.avg(outcomes.c.score))
            .where(
                outcomes.c.adapter.in_(list(adapters)),
                outcomes.c.created_ms > since_ms,
                outcomes.c.score.is_not(None),
            )
            .group_by(outcomes.c.adapter, bucket)
        )
        with self.engine.connect() as conn:
            return [(str(a), int(b), int(n), float(mean)) for a, b, n, mean in conn.execute(stmt)]

    def feedback_on_settled(self, since_ms: int) -> tuple[int, dict[str, int]]:
        """The answers created after ``since_ms`` whose feedback window has closed, and the
        feedback events joined to them, by kind (duplicates, rate-limited and invalid
        events are not joined, so not counted)."""
        settled = and_(interactions.c.calibrated == true(), interactions.c.created_ms > since_ms)
        answers = select(func.count()).select_from(interactions).where(settled)
        joined = interactions.join(feedback, feedback.c.response_id == interactions.c.response_id)
        by_kind = (
            select(feedback.c.kind, func.count())
            .select_from(joined)
            .where(settled, feedback.c.status == "joined")
            .group_by(feedback.c.kind)
        )
        with self.engine.connect() as conn:
            n = int(conn.scalar(answers) or 0)
            return n, {str(kind): int(count) for kind, count in conn.execute(by_kind)}

    def fusion_weights(self) -> dict[str, Any] | None:
        """What the processor last saved under ``FUSION_WEIGHTS`` (None: not yet)."""
        return self.load_state(FUSION_WEIGHTS)

    # --- the trainer's questions ----------------------------------------------------------
    def records_since(
        self, since_ms: int, limit: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The newest ``limit`` pairs and labels written after ``since_ms`` (newest first),
        as dicts of the records' fields."""
        out: list[list[dict[str, Any]]] = []
        with self.engine.connect() as conn:
            for table in (pairs, labels):
                stmt = (
                    select(table).where(table.c.updated_ms > since_ms)
                    .order_by(table.c.updated_ms.desc()).limit(limit)
                )  # fmt: skip
                out.append(
                    [{k: v for k, v in r._mapping.items() if k != "updated_ms"}
                     for r in conn.execute(stmt)]
                )  # fmt: skip
        return out[0], out[1]

    def cut_off(self, response_ids: Sequence[str]) -> frozenset[str]:
        """The responses among these whose answer stopped at ``max_tokens``
        (``finish_reason`` "length"): cut off, not finished."""
        with self.engine.connect() as conn:
            rows = self.select_in(conn, interactions, ("response_id", "event"), "response_id",
                                  response_ids)  # fmt: skip
        return frozenset(rid for rid, ev in rows if loads(ev).get("finish_reason") == "length")

    def recent_prompts(self, limit: int) -> list[tuple[str, list[dict[str, Any]]]]:
        """(response_id, messages) of the newest ``limit`` interactions, newest first: the
        prompts users asked, which the trainer's teacher samples the policy on."""
        stmt = (
            select(interactions.c.response_id, interactions.c.event)
            .order_by(interactions.c.created_ms.desc()).limit(limit)
        )  # fmt: skip
        with self.engine.connect() as conn:
            return [(rid, loads(event)["messages"]) for rid, event in conn.execute(stmt)]

    def count_records_since(self, since_ms: int) -> int:
        """Pairs and labels written after ``since_ms``, counted in the database."""
        with self.engine.connect() as conn:
            return sum(
                int(conn.scalar(select(func.count()).where(t.c.updated_ms > since_ms)) or 0)
                for t in (pairs, labels)
            )

    def close(self) -> None:
        self.engine.dispose()


# --- rows for ``write``, in the tables' column order, JSON columns as JSON text ------------
_MESSAGES = TypeAdapter(list[ChatMessage])
_KIND = {kind: kind.value for kind in FeedbackKind}  # Enum .value is slow in a hot loop


def interaction_row(e: WireInteraction, json_text: str, prompt_hash: str) -> Row:
    return (
        e.response_id, e.conversation_id, prompt_hash, e.user_hash, e.adapter, e.arm,
        e.created_ms, json_text, False,
    )  # fmt: skip


def feedback_row(
    e: WireFeedback, json_text: str, status: str, reason: str | None, signal: str | None
) -> Row:
    return (
        e.event_id, e.response_id, e.user_hash, _KIND[e.kind], e.received_ms, status, reason,
        signal, json_text,
    )  # fmt: skip


def label_row(r: PreferenceLabel, updated_ms: int) -> Row:
    return (
        r.response_id, _messages_json(r.prompt), r.completion, r.desirable, r.weight, r.score,
        r.confidence, r.scenario, r.adapter, r.n_signals, updated_ms,
    )  # fmt: skip


def outcome_row(o: ResponseOutcome, updated_ms: int) -> Row:
    return (
        o.response_id, o.conversation_id, o.adapter, o.arm, o.created_ms, o.score, o.confidence,
        o.n_signals, o.thumbs_up, o.thumbs_down, o.regenerated, o.error, o.completion_tokens,
        o.latency_ms, o.ttft_ms, updated_ms,
    )  # fmt: skip


def pair_row(p: PreferencePair, updated_ms: int) -> Row:
    if p.provenance == "teacher":  # a model's guess must never pass for the users' data
        raise ValueError(f"{p.pair_id}: teacher pairs are made in a round, never stored")
    return (
        p.pair_id, _messages_json(p.prompt), p.chosen, p.rejected, p.weight, p.provenance,
        p.chosen_response_id, p.rejected_response_id, p.adapter, updated_ms,
    )  # fmt: skip


def _messages_json(messages: list[ChatMessage]) -> str:
    return _MESSAGES.dump_json(messages).decode()


def _q(name: str) -> str:
    return f'"{name}"'  # some column names ("key") are SQL keywords
