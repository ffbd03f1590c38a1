"""The Prometheus server a local stack starts (``livealign up --monitoring``).

Debian's ``prometheus`` binary with a config generated per stack: one scrape job per part
(``monitoring.targets.JOBS``), each discovering its targets from the stack's targets folder,
and the alert rules (``helm/livealign/files/alerts.yaml``) where they exist. Its storage is in the
stack's home, so history survives a restart of the stack.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from livealign.processes import stop_process
from monitoring.targets import HOST, JOBS

log = logging.getLogger(__name__)

# The one source of the rules is the Helm chart's copy (Helm reads files inside a chart only).
ALERT_RULES = Path(__file__).resolve().parents[1] / "helm/livealign/files/alerts.yaml"
MAX_SCRAPE_TIMEOUT_S = 10.0  # Prometheus' own default, but never longer than the interval


def shipped_rules() -> list[Path]:
    """LiveAlign's alert rules, where this checkout has them."""
    return [ALERT_RULES] if ALERT_RULES.is_file() else []


class QueryError(RuntimeError):
    """Prometheus refused or failed a query (a bad expression, say)."""


def duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds where they are, else milliseconds (it takes
    no fractions)."""
    if seconds <= 0 or not math.isfinite(seconds):
        raise ValueError(f"a duration must be positive: {seconds}")
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def config(targets_dir: Path, scrape_interval_s: float, rule_files: list[Path]) -> dict[str, Any]:
    """The server's configuration. The targets files are re-read every interval, on top of
    the file watch, so a missed file event delays a new target by one interval only."""
    interval = duration(scrape_interval_s)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": duration(min(scrape_interval_s, MAX_SCRAPE_TIMEOUT_S)),
            "evaluation_interval": interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "file_sd_configs": [
                    {"files": [str(targets_dir / f"{job}-*.json")], "refresh_interval": interval}
                ],
            }
            for job in JOBS
        ],
    }


def query(url: str, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """An instant query's result (``/api/v1/query``); ``QueryError`` when Prometheus says
    the expression is wrong or could not be evaluated."""
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=timeout)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200 or body.get("status") != "success":
        raise QueryError(f"{expr}: {body.get('errorType', r.status_code)}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


class PrometheusServer:
    """Start and stop Prometheus on 127.0.0.1. Use as a context manager."""

    def __init__(
        self,
        folder: Path,
        targets_dir: Path,
        port: int,
        scrape_interval_s: float = 15.0,
        rule_files: list[Path] | None = None,
        binary: str = "prometheus",
    ) -> None:
        self.folder = folder
        self.targets_dir = targets_dir
        self.port = port
        self.scrape_interval_s = scrape_interval_s
        self.rule_files = list(rule_files or [])
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "prometheus.log"

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        binary = shutil.which(self.binary)
        if binary is None:
            raise FileNotFoundError(
                f"{self.binary} not found: install Debian's prometheus package (make system)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "prometheus.yml"
        # JSON is YAML: no YAML writer needed.
        config_path.write_text(
            json.dumps(config(self.targets_dir, self.scrape_interval_s, self.rule_files))
        )
        cmd = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
        ]
        out = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own session: the stack stops it, not the terminal's Ctrl-C
        out.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("Prometheus at %s (scraping every %gs)", self.url, self.scrape_interval_s)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self._proc.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url}/-/ready not ready after {timeout:.0f}s ({self.log_path})")

    def stop(self, timeout: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
