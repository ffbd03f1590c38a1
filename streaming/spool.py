"""A bounded, ordered, on-disk spool for events the broker could not take yet.

SQLite gives us ordering (rowid), atomic append/delete and durability across a
process crash with no extra dependency: a record is in the file whole or not at all, so
the spool needs no write-and-rename of its own. Its files are 0600 (users' events). The
spool is bounded in bytes: a full spool raises ``SpoolFull``, a file that cannot be
written ``SpoolUnwritable`` (both ``SpoolError``), so the caller can refuse the event
loudly instead of losing it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from livealign.files import PRIVATE, private_sqlite


class SpoolError(RuntimeError):
    """The spool could not take the event; it was not accepted."""


class SpoolFull(SpoolError):
    """The spool reached its byte bound; the event was not accepted."""


class SpoolUnwritable(SpoolError):
    """The spool's file could not be written (disk full, I/O error, removed)."""


@dataclass(frozen=True)
class SpooledRecord:
    rowid: int
    topic: str
    key: bytes | None
    value: bytes


class Spool:
    @classmethod
    def claim(cls, directory: Path, max_bytes: int) -> Spool:
        """Open the first spool file in ``directory`` that no live process holds.

        Each producer (one per serving replica) takes its own file under an exclusive
        lock; a replica that restarts adopts a file left behind by a dead one, so its
        spooled events are replayed instead of stranded.
        """
        directory.mkdir(parents=True, exist_ok=True)
        for n in range(1024):
            fd = os.open(directory / f"spool-{n}.lock", os.O_CREAT | os.O_RDWR, PRIVATE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            spool = cls(directory / f"spool-{n}.sqlite", max_bytes)
            spool._lock_fd = fd
            return spool
        raise RuntimeError(f"no free spool slot in {directory}")

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._lock_fd: int | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        private_sqlite(path)  # users' events: 0600, and so are the WAL files SQLite adds
        # Autocommit; each statement is its own transaction. WAL keeps appends cheap.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " key BLOB, value BLOB NOT NULL)"
        )
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(value) + COALESCE(LENGTH(key), 0)), 0) FROM spool"
        ).fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        size = len(value) + len(key or b"")
        with self._lock:
            if self._bytes + size > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.path} is full ({self._bytes} of {self.max_bytes} bytes)"
                )
            try:
                self._db.execute(
                    "INSERT INTO spool (topic, key, value) VALUES (?, ?, ?)", (topic, key, value)
                )
            except sqlite3.Error as exc:  # the caller refuses the event, as when full
                raise SpoolUnwritable(f"spool {self.path} cannot be written: {exc}") from exc
            self._count += 1
            self._bytes += size

    def peek(self, limit: int) -> list[SpooledRecord]:
        """The oldest ``limit`` records, in the order they were spooled."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, key, value FROM spool ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [SpooledRecord(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def remove(self, records: list[SpooledRecord]) -> None:
        if not records:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM spool WHERE id = ?", [(r.rowid,) for r in records])
            self._db.execute("COMMIT")
            self._count -= len(records)
            self._bytes -= sum(len(r.value) + len(r.key or b"") for r in records)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
