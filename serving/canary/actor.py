"""The canary controller at work: every interval, read the arms' outcomes, decide, apply.

``CanaryController.tick`` is one interval: it reads the registry's state (the canary, its
weight, where its rollout stands) and the settled outcomes in the preference store,
summarizes the two arms (``outcomes``), asks the pure decision logic (``controller``),
logs the decision (decisions.jsonl in the registry, and the ``livealign.decisions``
topic), exports it as metrics, and applies it to the registry (``rollout``), which every
serving replica follows. Everything it needs to resume is in state.json, written
atomically with each step: a controller killed at any point and started again goes on
from the step it was at, never repeating or skipping one.

``CanaryActor`` runs it as a Ray actor next to the serving app (``livealign up``).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import ray
from kafka import KafkaProducer
from prometheus_client import start_http_server

from monitoring import logs
from monitoring import metrics as m
from serving.canary import rollout
from serving.canary.controller import ROLLBACK_REASONS, Action, Decision, decide
from serving.canary.outcomes import CANARY, STABLE, summarize
from serving.config import ControllerConfig
from streaming.events import BASE_ADAPTER, TOPIC_DECISIONS, now_ms
from streaming.store import PreferenceStore
from trainer.registry import Registry, RegistryError

log = logging.getLogger(__name__)


class CanaryController:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.policy = config.policy
        self.registry = Registry(config.registry_dir)
        self.store = PreferenceStore(config.store_url)
        self.producer: KafkaProducer | None = None
        if config.bootstrap_servers:
            self.producer = KafkaProducer(
                bootstrap_servers=config.bootstrap_servers.split(","),
                acks="all",
                request_timeout_ms=config.request_timeout_ms,
                max_block_ms=config.request_timeout_ms,
            )

    def tick(self, now: int | None = None) -> Decision | None:
        """One interval; the decision taken, or None when no canary is on trial."""
        now = now or now_ms()
        state = self.registry.state()
        # Only the canary on trial has a step start: one dropped meanwhile (by an operator,
        # or a decision) must not look like a rollout stuck at its step.
        m.CANARY_STEP_STARTED.clear()
        if state.canary is None:
            return None
        if state.rollout is None:  # just published: its trial begins
            state = rollout.start(self.registry, self.policy, now)
            log.info(
                "canary %s: rollout started at %.0f%%", state.canary, 100 * state.canary_weight
            )
        canary, stable = state.canary, state.stable or BASE_ADAPTER
        trial = state.rollout
        if canary is None or trial is None:
            return None
        arms = summarize(
            self.store.outcomes_since([canary, stable], trial.started_ms),
            canary,
            stable,
            self.store.conversations_by_arm(trial.step_started_ms),
        )
        decision = decide(self.policy, rollout.controller_state(trial), arms, now / 1000)
        if not decision.final:  # a promotion starts the next step now
            promoted = decision.action is Action.PROMOTE
            started = decision.at if promoted else trial.step_started_ms / 1000
            m.CANARY_STEP_STARTED.labels(canary).set(started)
        self._record(decision, canary, stable, now)
        for arm, summary in ((CANARY, arms.canary), (STABLE, arms.stable)):
            m.CANARY_SCORE.labels(canary, arm).set(summary.scores.mean)
        try:
            rollout.apply(self.registry, canary, decision)
        except RegistryError as exc:  # replaced meanwhile (an operator, the trainer)
            log.warning("canary %s: decision not applied: %s", canary, exc)
        return decision

    def _record(self, decision: Decision, canary: str, stable: str, now: int) -> None:
        entry = {"ts_ms": now, "canary": canary, "stable": stable, **decision.as_dict()}
        self.registry.append_decision(entry)
        self._export(decision, canary)
        if decision.action != "hold":
            log.info("canary %s: %s: %s", canary, decision.action, decision.message)
        if self.producer is not None:
            try:
                self.producer.send(
                    TOPIC_DECISIONS, key=canary.encode(), value=json.dumps(entry).encode()
                )
            except Exception as exc:  # the registry's log is the record; the topic a copy
                log.warning("decision not published: %s", exc)

    def _export(self, decision: Decision, canary: str) -> None:
        stats = decision.stats
        for reason in ROLLBACK_REASONS:  # at 0 first: increase() then sees a rollback's 1
            m.CANARY_DECISIONS.labels(canary, Action.ROLLBACK, reason)
        m.CANARY_DECISIONS.labels(canary, decision.action, decision.reason).inc()
        m.CANARY_SETTLED.labels(canary, CANARY).set(stats.n_canary)
        m.CANARY_SETTLED.labels(canary, STABLE).set(stats.n_stable)
        for bound, value in (
            ("estimate", stats.interval.estimate),
            ("lower", stats.interval.lower),
            ("upper", stats.interval.upper),
        ):
            m.CANARY_DIFFERENCE.labels(canary, bound).set(value)

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=5)
        self.store.close()


@ray.remote(num_cpus=0.1, max_concurrency=2)
class CanaryActor:
    """``loop()`` runs until ``stop()`` (two concurrent calls: stop while it waits)."""

    def __init__(
        self, config: ControllerConfig, metrics_port: int = 0, metrics_host: str = "127.0.0.1"
    ) -> None:
        logs.setup()
        self.controller = CanaryController(config)
        self._stop = threading.Event()
        if metrics_port:
            start_http_server(metrics_port, addr=metrics_host)

    def tick(self) -> dict[str, Any] | None:
        decision = self.controller.tick()
        return None if decision is None else decision.as_dict()

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.controller.tick()
            except Exception:
                log.exception("canary controller")
            self._stop.wait(self.controller.policy.interval_s)
        self.controller.close()

    def stop(self) -> None:
        self._stop.set()
