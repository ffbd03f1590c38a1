"""The trainer as a Ray actor: wakes on a schedule or when enough new records are in.

``loop()`` runs until ``stop()``; the actor allows two concurrent calls so ``stop()`` and
``run_round()`` can be called while the loop waits. Rounds never overlap (a lock).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

import ray
from prometheus_client import start_http_server

from monitoring import logs
from trainer.round import Trainer, TrainerConfig
from trainer.teacher import Sampler

log = logging.getLogger(__name__)


@ray.remote(num_cpus=1, max_concurrency=2)
class TrainerActor:
    def __init__(
        self,
        config: TrainerConfig,
        metrics_port: int = 0,
        sampler: Sampler | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        logs.setup()
        # sampler: the serving deployment's sampling path, for the teacher; None: no teacher.
        self.trainer = Trainer(config, sampler)
        self.config = config
        self._stop = threading.Event()
        self._round_lock = threading.Lock()
        self._last_round = time.monotonic()
        if metrics_port:
            start_http_server(metrics_port, addr=metrics_host)

    def run_round(self) -> dict[str, Any]:
        with self._round_lock:
            report = self.trainer.run_round()
            self._last_round = time.monotonic()
        log.info("round %s: %s %s", report.outcome, report.version or "", report.reasons)
        return asdict(report)

    def due(self) -> bool:
        """A round is due when enough new records arrived, or the interval passed with
        at least a few (``min_records``) new ones; never while a canary is on trial."""
        if self.trainer.canary_on_trial():
            return False
        new = self.trainer.new_records()
        overdue = time.monotonic() - self._last_round >= self.config.interval_s
        return new >= self.config.min_new_records or (overdue and new >= self.config.min_records)

    def loop(self, check_every_s: float = 5.0) -> None:
        while not self._stop.is_set():
            try:
                if self.due():
                    self.run_round()
            except Exception:
                log.exception("trainer loop")
            self._stop.wait(check_every_s)

    def stop(self) -> None:
        self._stop.set()
