"""The durable preference store: what the processor has seen and what it produced.

SQLAlchemy Core over SQLite by default (a file), or any SQLAlchemy URL (PostgreSQL for a
cluster). Every write the processor makes for one batch of Kafka records happens in one
transaction, together with the fuser's learned state, and offsets are committed only
after it: a batch replayed after a crash finds its events already stored (primary keys)
and changes nothing, so restarts neither lose nor duplicate records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
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
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

meta = MetaData()

interactions = Table(
    "interactions", meta,
    Column("response_id", String(200), primary_key=True),
    Column("conversation_id", String(200), nullable=False),
    Column("prompt_hash", String(64), nullable=False),
    Column("user_hash", String(64)),
    Column("adapter", String(200), nullable=False),
    Column("arm", String(50), nullable=False),
    Column("created_ms", Integer, nullable=False),
    Column("event", JSON, nullable=False),
    # Set once the response's feedback window closed and it taught the calibration.
    Column("calibrated", Boolean, nullable=False, default=False),
    Index("ix_interactions_siblings", "conversation_id", "prompt_hash"),
    Index("ix_interactions_settle", "calibrated", "created_ms"),
)  # fmt: skip

feedback = Table(
    "feedback", meta,
    Column("event_id", String(200), primary_key=True),
    Column("response_id", String(200), nullable=False, index=True),
    Column("rater", String(64)),
    Column("kind", String(20), nullable=False),
    Column("received_ms", Integer, nullable=False),
    # pending: waiting for its interaction; joined; orphaned: grace period ran out;
    # dropped: cleaned out (status_reason says why), kept so a replay stays dropped.
    Column("status", String(20), nullable=False),
    Column("status_reason", String(40)),
    Column("signal", JSON),  # the normalized Signal once joined
    Column("event", JSON, nullable=False),
    Index("ix_feedback_pending", "status", "received_ms"),
)  # fmt: skip

labels = Table(
    "labels", meta,
    Column("response_id", String(200), primary_key=True),
    Column("prompt", JSON, nullable=False),
    Column("completion", Text, nullable=False),
    Column("desirable", Boolean, nullable=False),
    Column("weight", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("scenario", String(20), nullable=False),
    Column("adapter", String(200), nullable=False),
    Column("n_signals", Integer, nullable=False),
    Column("updated_ms", Integer, nullable=False),
)  # fmt: skip

pairs = Table(
    "pairs", meta,
    Column("pair_id", String(64), primary_key=True),
    Column("prompt", JSON, nullable=False),
    Column("chosen", Text, nullable=False),
    Column("rejected", Text, nullable=False),
    Column("weight", Float, nullable=False),
    Column("provenance", String(20), nullable=False),  # edit | regenerate
    Column("chosen_response_id", String(200)),
    Column("rejected_response_id", String(200), nullable=False),
    Column("adapter", String(200), nullable=False),
    Column("updated_ms", Integer, nullable=False),
)  # fmt: skip

state = Table(
    "processor_state", meta,
    Column("key", String(100), primary_key=True),
    Column("value", JSON, nullable=False),
)  # fmt: skip


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the trainer) never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class PreferenceStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        meta.create_all(self.engine)

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

    def set_feedback(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Update status, reason and signal of stored feedback rows, in one executemany."""
        if not rows:
            return
        stmt = (
            update(feedback)
            .where(feedback.c.event_id == bindparam("key"))
            .values(status=bindparam("status"), status_reason=bindparam("status_reason"),
                    signal=bindparam("signal"))
        )  # fmt: skip
        keys = ("status", "status_reason", "signal")
        conn.execute(stmt, [{"key": r["event_id"], **{k: r[k] for k in keys}} for r in rows])

    def save_state(self, conn: Connection, key: str, value: dict[str, Any]) -> None:
        self.upsert(conn, state, [{"key": key, "value": value}])

    # --- reads ---------------------------------------------------------------------------
    def existing_ids(self, conn: Connection, table: Table, ids: Iterable[str]) -> set[str]:
        col = table.primary_key.columns.values()[0]
        found: set[str] = set()
        ids = list(ids)
        for i in range(0, len(ids), 500):  # keep under SQLite's bound-parameter limit
            found.update(conn.scalars(select(col).where(col.in_(ids[i : i + 500]))))
        return found

    def rows(
        self,
        conn: Connection,
        table: Table,
        column: str,
        values: Iterable[str],
        columns: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows whose ``column`` is in ``values`` (only ``columns``, if given)."""
        values = list(values)
        cols = [table.c[c] for c in columns] if columns else [table]
        out: list[dict[str, Any]] = []
        for i in range(0, len(values), 500):
            stmt = select(*cols).where(table.c[column].in_(values[i : i + 500]))
            out.extend(dict(r._mapping) for r in conn.execute(stmt))
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

    def close(self) -> None:
        self.engine.dispose()
