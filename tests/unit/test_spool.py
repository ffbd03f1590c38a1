"""streaming.spool: the producer's on-disk spool for events the broker could not take."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming.spool import Spool, SpoolFull


def test_spool_keeps_order_survives_reopen_and_is_bounded(tmp_path: Path) -> None:
    spool = Spool.claim(tmp_path, max_bytes=100)
    for i in range(5):
        spool.append("t", f"k{i}".encode(), b"0123456789")
    with pytest.raises(SpoolFull):
        spool.append("t", None, b"x" * 60)
    first = spool.peek(2)
    assert [r.key for r in first] == [b"k0", b"k1"]
    spool.remove(first)
    spool.close()
    reopened = Spool.claim(tmp_path, max_bytes=100)  # the lock was released: same file
    assert [r.key for r in reopened.peek(10)] == [b"k2", b"k3", b"k4"]
    assert reopened.size_bytes == 3 * 12
    second = Spool.claim(tmp_path, max_bytes=100)  # file 0 is held: a fresh one
    assert second.path != reopened.path and len(second) == 0
    reopened.close()
    second.close()
