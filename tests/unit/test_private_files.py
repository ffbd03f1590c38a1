"""State files (secrets, spool, preference store) are 0600 and never left half written."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from livealign.config import Settings
from livealign.files import write_private
from streaming.spool import Spool
from streaming.store import PreferenceStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that hides nothing: what a file gets is what the code asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_write_private_is_0600_and_replaces_whole(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "state.json"
    assert write_private(path, b"one")
    assert (path.read_bytes(), mode(path)) == (b"one", 0o600)
    assert write_private(path, b"two")
    assert path.read_bytes() == b"two"
    assert not write_private(path, b"three", replace=False)  # the file there wins
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    write_private(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_private(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_secrets_are_made_0600_and_kept(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("LIVEALIGN_"):
            monkeypatch.delenv(name)
    settings = Settings(home=tmp_path)
    first = settings._secrets()
    path = tmp_path / "secrets.json"
    assert mode(path) == 0o600
    assert json.loads(path.read_text()) == first
    assert settings._secrets() == first  # made once per home: tokens survive restarts
    path.chmod(0o644)  # written by an older version, or copied by hand
    assert settings._secrets() == first
    assert mode(path) == 0o600


def test_spool_files_are_0600(tmp_path: Path, open_umask: None) -> None:
    spool = Spool.claim(tmp_path, max_bytes=1_000)
    spool.append("t", None, b"an event")
    files = {p.name: mode(p) for p in tmp_path.iterdir()}
    assert {"spool-0.lock", "spool-0.sqlite", "spool-0.sqlite-wal"} <= set(files)
    assert set(files.values()) == {0o600}, files
    spool.close()


def test_spool_left_loose_by_an_older_run_is_tightened(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool-0.sqlite", max_bytes=1_000)
    first.append("t", None, b"an event")
    for p in tmp_path.iterdir():
        p.chmod(0o644)
    second = Spool(tmp_path / "spool-0.sqlite", max_bytes=1_000)
    assert len(second) == 1
    assert {mode(p) for p in tmp_path.iterdir()} == {0o600}
    first.close()
    second.close()


def test_store_files_are_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "preferences.sqlite"
    store = PreferenceStore(f"sqlite:///{path}")
    with store.engine.connect() as conn:  # a reader keeps the WAL and its index open
        conn.exec_driver_sql("SELECT COUNT(*) FROM interactions").fetchall()
        files = {p.name: mode(p) for p in tmp_path.iterdir()}
    assert {"preferences.sqlite", "preferences.sqlite-wal", "preferences.sqlite-shm"} <= set(files)
    assert set(files.values()) == {0o600}, files
    store.engine.dispose()
