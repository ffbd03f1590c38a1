"""Stopping a child process the stack started (broker, processor, Prometheus)."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM (each of these finishes its work in hand and exits), then SIGKILL if it
    has not exited within `timeout` seconds. Nothing to do for one already gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
