"""Scrape targets, announced for Prometheus' file-based service discovery.

Every part that serves metrics is one small JSON file in the stack's targets folder
(``<job>-<name>.json``, Prometheus' ``file_sd_configs`` format), there while it runs. A
serving replica announces itself (``Exporter``): Ray Serve starts, restarts and scales
replicas, and the Serve proxy's ``/metrics`` would reach one of them at random. The
processes the stack starts with a port it chose (processor, trainer, canary controller)
are announced by the stack (``register``).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# One Prometheus scrape job per part: the ``job`` label of its series.
JOBS = ("serving", "processor", "trainer", "canary")
HOST = "127.0.0.1"  # the local stack's parts and Prometheus share the machine


def target_file(folder: Path, job: str, name: str) -> Path:
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}: one of {JOBS}")
    # A name Prometheus' glob and the file system both take as is.
    return folder / f"{job}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"


def register(
    folder: Path, job: str, name: str, port: int, labels: Mapping[str, str] | None = None
) -> Path:
    """Announce ``HOST:port`` as a target of ``job``; the file written. Written whole then
    renamed, so Prometheus never reads half of it (the temporary name matches no glob)."""
    path = target_file(folder, job, name)
    folder.mkdir(parents=True, exist_ok=True)
    entry = [{"targets": [f"{HOST}:{port}"], "labels": dict(labels or {})}]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)
    return path


def unregister(path: Path) -> None:
    path.unlink(missing_ok=True)


def clear(folder: Path) -> None:
    """Forget every target: a stack starting or stopping owns the folder."""
    if folder.is_dir():
        for path in folder.glob("*.json"):
            unregister(path)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a line per scrape: no
        pass


def text_format_app() -> Any:
    """The default registry in the classic text format, whatever the scraper asks for.
    Asked for OpenMetrics (Prometheus 2 asks for it first), prometheus_client renames the
    samples of a name with a colon (vLLM's ``vllm:num_requests_waiting`` arrives as
    ``vllm_num_requests_waiting``; prometheus/client_python#1177); in the text format
    vLLM's names stay as its documentation (and ``GET /metrics``) has them."""
    inner = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return inner({**environ, "HTTP_ACCEPT": "text/plain; version=0.0.4"}, start_response)

    return app


class Exporter:
    """This process's metrics (prometheus_client's default registry) on a port of its own,
    announced as a target of ``job`` until ``close()``."""

    def __init__(
        self,
        folder: Path,
        job: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        host: str = HOST,
        port: int = 0,
    ) -> None:
        # Port 0: the OS picks a free one, no race with another process. A cluster gives a
        # fixed port on 0.0.0.0 (a PodMonitor scrapes it; the announcement goes unread).
        self._server = make_server(host, port, text_format_app(), ThreadingWSGIServer, _Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.port: int = self._server.server_port
        try:
            self.path = register(folder, job, name, self.port, labels)
        except BaseException:
            self._stop_server()
            raise

    def close(self) -> None:
        unregister(self.path)
        self._stop_server()

    def _stop_server(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
