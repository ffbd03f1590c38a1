"""A throwaway S3-compatible object store on 127.0.0.1 (moto's server), for an embedded
broker whose logs outlive it: ``EmbeddedBroker(storage="s3://BUCKET/")`` reads the AWS_*
variables this sets. A Kafka broker keeps what it acknowledged on disk; the embedded
broker's memory storage forgets it when the process dies, so a benchmark that kills the
broker would count the broker's losses as LiveAlign's. moto keeps the objects in its own
process's memory: they outlive a broker restart, not the store.

    with ObjectStore() as store:
        broker = EmbeddedBroker(storage=store.url).start()
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from livealign.processes import stop_process
from streaming.broker import free_port, wait_for_port

BUCKET = "livealign-broker"


class ObjectStore:
    """Start moto's S3 server with one bucket, and point the AWS_* variables of this
    process (which a broker started from it inherits) at it; ``stop`` puts them back."""

    def __init__(self, log_path: Path | None = None, bucket: str = BUCKET) -> None:
        self.host, self.port = "127.0.0.1", free_port()
        self.bucket = bucket
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._saved: dict[str, str | None] = {}

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The broker's ``--storage-engine``."""
        return f"s3://{self.bucket}/"

    def start(self, timeout: float = 30.0) -> ObjectStore:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for_port(self.host, self.port, timeout)
            # moto checks no signature: a plain PUT makes the bucket.
            httpx.put(f"{self.endpoint}/{self.bucket}", timeout=10.0).raise_for_status()
        except BaseException:
            self.stop()
            raise
        self._point_environment()
        return self

    def _point_environment(self) -> None:
        env = {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "livealign",  # moto takes any
            "AWS_SECRET_ACCESS_KEY": "livealign",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name, value in env.items():
            self._saved.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def stop(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved.clear()
        proc, self._proc = self._proc, None
        stop_process(proc, 10.0)

    def __enter__(self) -> ObjectStore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
