"""File primitives the registry is built on: checksums, fsynced writes and copies, the lock.

A publish and a state change are crash-safe because their data is fsynced before the
rename that makes it visible, and that rename is fsynced through its directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"
CHUNK = 1 << 20
TAIL_BLOCK = 1 << 16


def sha256_file(path: Path) -> str:
    """sha256 hex of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def last_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` non-empty lines of a text file, oldest first, read from its end (an
    append-only log grows without bound: its start is never read for its tail)."""
    if n <= 0:
        return []
    with Path(path).open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        data, start = b"", end
        # One newline more than lines wanted: the first line read may be cut in two.
        while start > 0 and data.count(b"\n") <= n:
            step = min(TAIL_BLOCK, start)
            start -= step
            f.seek(start)
            data = f.read(step) + data
    lines = data.splitlines()
    if start > 0:
        lines = lines[1:]  # began mid-line
    return [line.decode() for line in lines if line.strip()][-n:]


def write_durably(path: Path, data: bytes) -> None:
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def copy_and_hash(src: Path, dst: Path) -> str:
    """Copy src to a new file dst, fsync it, and return its sha256 (one read pass)."""
    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the registry's exclusive lock, `root/.lock` (version allocation, state.json)."""
    # flock locks belong to the open file description, so this excludes other threads
    # of this process as well as other processes. Not re-entrant: never nest.
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
