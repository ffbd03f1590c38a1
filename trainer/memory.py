"""The trainer process's resident memory: measured per round, and handed back after it.

A round loads several models one after the other (reward model, policy stages, the gate's
policies) and frees each; glibc keeps much of what Python and torch free in its arenas,
so without a trim the process's resident size only ever grows, round after round.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from pathlib import Path

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Resident size now (Linux; None elsewhere)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """Most resident size since the last ``reset_peak`` (or since the process started)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_peak() -> None:
    """Start a new peak measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        log.debug("cannot reset the peak RSS here; peaks are since the process started")


def release() -> None:
    """Collect garbage and give freed heap back to the system (glibc's malloc_trim)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
