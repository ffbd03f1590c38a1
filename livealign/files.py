"""State files only their owner may read, written so a crash never leaves half of one.

The secrets file, the producer's spool and the preference store hold what a stranger on
the machine must not read (HMAC keys, users' prompts and feedback): each is created
``0600``. A file written whole (the secrets) goes to a temporary file in the same
directory, is fsynced, then renamed over (or linked to) its name: a reader sees the old
file or the new one, never a torn one. SQLite files are made ``0600`` before SQLite
opens them: SQLite gives its ``-wal`` and ``-shm`` files the database file's permissions.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

PRIVATE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def write_private(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` atomically, mode 0600. With ``replace=False`` an
    existing ``path`` wins (two processes making the same file agree on one): returns
    whether this call's data became the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, PRIVATE)  # mkstemp makes 0600 already; say it rather than rely on it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if it exists: no clobbering the other writer
            except FileExistsError:
                return False
        fsync_dir(path.parent)  # the rename itself survives a power cut
        return True
    finally:
        tmp.unlink(missing_ok=True)


def make_private(path: Path) -> None:
    """Tighten an existing file to 0600 (one made by an older version, or by hand)."""
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE:
        path.chmod(PRIVATE)


def private_sqlite(path: Path) -> None:
    """Create the SQLite file ``path`` as 0600 before SQLite opens it (its WAL and
    shared-memory files then follow), and tighten the files an older run left. A missing
    folder is left to SQLite to report, as it would without this."""
    if not path.parent.is_dir():
        return
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE))
    for candidate in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            make_private(candidate)


def fsync_dir(directory: Path) -> None:
    """fsync a directory: a rename or a new file in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
