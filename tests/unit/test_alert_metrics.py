"""The metrics the alerts read, as the code sets them: the producer's and the processor's
newest Kafka timestamps (the processor's lag in seconds), the trainer's streaks of
rejected and failed rounds, the canary rollout's step start, and the drop reasons."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import TopicPartition
from prometheus_client import REGISTRY

import streaming.processor as proc
from serving.canary import rollout
from serving.canary.actor import CanaryController
from serving.canary.policy import CanaryPolicy
from serving.config import ControllerConfig
from streaming import producer as prod
from streaming.events import InteractionEvent
from streaming.processor import Processor, ProcessorConfig
from tests.unit.test_canary_controller import T0, scores, settle
from tests.unit.test_registry import make_adapter, publish
from trainer import round as r
from trainer.config import TrainerConfig
from trainer.registry import Registry


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# --- the processor's lag in seconds: both sides ----------------------------------------
class FakeFuture:
    """kafka-python's send future, acknowledged at once with this timestamp."""

    def __init__(self, timestamp_ms: int) -> None:
        self.metadata = SimpleNamespace(timestamp=timestamp_ms)

    def add_callback(self, fn: Callable[[Any], None]) -> FakeFuture:
        fn(self.metadata)
        return self

    def add_errback(self, fn: Callable[[Any], None]) -> FakeFuture:
        return self


class FakeKafka:
    """Acknowledges every send with the next timestamp of ``stamps``."""

    stamps: list[int] = []

    def __init__(self, **_: Any) -> None:
        pass

    def send(self, topic: str, key: bytes | None, value: bytes) -> FakeFuture:
        return FakeFuture(self.stamps.pop(0))

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def event(i: int) -> InteractionEvent:
    return InteractionEvent(
        response_id=f"r{i}", conversation_id="c", model="m", adapter="base", arm="stable",
        messages=[], completion="a", prompt_tokens=1, completion_tokens=1, ttft_ms=1,
        latency_ms=1, created_ms=1,
    )  # fmt: skip


def test_the_producer_exports_the_newest_acknowledged_timestamp_and_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Acknowledged out of order (two partitions): the newest stays.
    monkeypatch.setattr(FakeKafka, "stamps", [5_000_000, 7_000_000, 6_000_000])
    monkeypatch.setattr(prod, "KafkaProducer", FakeKafka)
    config = prod.ProducerConfig(spool_dir=tmp_path / "spool", spool_max_bytes=12_345)
    producer = prod.EventProducer(config).start()
    try:
        futures = [producer.submit("alerts.topic", "c", event(i)) for i in range(3)]
        assert [f.result(timeout=10) for f in futures] == ["sent"] * 3
    finally:
        producer.close()
    assert metric("livealign_producer_acked_timestamp_seconds", topic="alerts.topic") == 7_000
    assert metric("livealign_producer_spool_capacity_bytes") == 12_345


def test_the_processor_exports_the_newest_committed_timestamp(tmp_path: Path) -> None:
    processor = Processor(ProcessorConfig(store_url=f"sqlite:///{tmp_path / 'p.sqlite'}"))
    stamped = lambda ms: SimpleNamespace(timestamp=ms)  # noqa: E731 (a Kafka record)
    p0, p1 = TopicPartition("alerts.consumed", 0), TopicPartition("alerts.consumed", 1)
    processor._report_progress({p0: [stamped(3_000), stamped(4_000)], p1: [stamped(2_000)]})
    assert metric("livealign_processor_consumed_timestamp_seconds", topic="alerts.consumed") == 4
    # A partition that lags behind does not move it back.
    processor._report_progress({p1: [stamped(2_500)]})
    assert metric("livealign_processor_consumed_timestamp_seconds", topic="alerts.consumed") == 4


def test_every_drop_reason_exists_from_the_start() -> None:
    """The drop series are made at 0 when the processor starts, for the reasons in
    DROP_REASONS: every reason it counts must be one of them."""
    counted = set(re.findall(r'_count\(m\.PROC_DROPS, "(\w+)"', Path(proc.__file__).read_text()))
    assert counted and counted <= set(proc.DROP_REASONS)


# --- the trainer's streaks --------------------------------------------------------------
def test_streaks_count_rounds_in_a_row_and_skipped_rounds_count_neither_way() -> None:
    streaks = r.Streaks()
    for outcome in ("rejected", "skipped", "rejected", "failed", "skipped", "failed"):
        streaks.after(outcome)
    assert (streaks.rejected, streaks.failed) == (0, 2)
    for outcome in ("rejected", "rejected", "published"):
        streaks.after(outcome)
    assert (streaks.rejected, streaks.failed) == (0, 0)


def test_the_trainer_exports_its_streaks_and_a_restart_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainerConfig(
        base_model=tmp_path, registry_dir=tmp_path / "registry", work_dir=tmp_path / "work",
        store_url=f"sqlite:///{tmp_path / 'p.sqlite'}",
    )  # fmt: skip

    def rejected(self: r.Trainer, report: r.RoundReport) -> None:
        report.outcome = "rejected"

    def failing(self: r.Trainer, report: r.RoundReport) -> None:
        raise RuntimeError("out of memory")

    trainer = r.Trainer(cfg)
    assert metric("livealign_trainer_consecutive_failures") == 0
    monkeypatch.setattr(r.Trainer, "_run", rejected)
    trainer.run_round()
    trainer.run_round()
    assert metric("livealign_trainer_consecutive_rejections") == 2
    monkeypatch.setattr(r.Trainer, "_run", failing)
    trainer.run_round()
    trainer.run_round()
    assert metric("livealign_trainer_consecutive_failures") == 2
    assert metric("livealign_trainer_consecutive_rejections") == 0
    with (cfg.registry_dir / "rounds.jsonl").open("a") as f:
        f.write('{"outcome": "fail')  # a line cut short by a crash
    r.Trainer(cfg)  # restarted: the log says where the streaks stood
    assert metric("livealign_trainer_consecutive_failures") == 2


# --- the canary rollout -----------------------------------------------------------------
@pytest.fixture
def controller(tmp_path: Path) -> CanaryController:
    registry = Registry(tmp_path / "registry")
    for name in ("a", "b"):
        publish(registry, make_adapter(tmp_path / name))
    registry.set_state(stable="livealign@1", action="publish")
    policy = CanaryPolicy(
        steps=[0.1, 1.0], step_min_conversations=[30, 30], min_step_s=60,
        min_conversations=30, guardrail_min_requests=30,
    )  # fmt: skip
    config = ControllerConfig(
        registry_dir=registry.root, store_url=f"sqlite:///{tmp_path / 'p.sqlite'}", policy=policy
    )
    return CanaryController(config)


def step_started(adapter: str) -> float | None:
    return metric("livealign_canary_step_started_timestamp_seconds", adapter=adapter)


def test_only_the_canary_on_trial_has_a_step_start(controller: CanaryController) -> None:
    controller.registry.set_state(canary="livealign@2", action="publish")
    controller.tick(T0)
    assert step_started("livealign@2") == T0 / 1000
    for reason in ("harm", "guardrail_severe", "max_duration"):  # there before any rollback
        labels = {"adapter": "livealign@2", "action": "rollback", "reason": reason}
        assert metric("livealign_canary_decisions_total", **labels) is not None
    settle(controller.store, "stable", "livealign@1", scores(0.3, 80, 3), T0 + 1)
    settle(controller.store, "canary", "livealign@2", scores(0.3, 80, 4), T0 + 1)
    promoted = controller.tick(T0 + 61_000)
    assert promoted is not None and promoted.action == "promote"
    assert step_started("livealign@2") == (T0 + 61_000) / 1000  # the next step began
    rollout.abort(controller.registry, "an operator")  # not a decision of the controller
    assert controller.tick(T0 + 90_000) is None
    assert step_started("livealign@2") is None


def test_a_rolled_back_canary_has_no_step_start(controller: CanaryController) -> None:
    harm = {"adapter": "livealign@2", "action": "rollback", "reason": "harm"}
    controller.registry.set_state(canary="livealign@2", action="publish")
    controller.tick(T0)
    before = metric("livealign_canary_decisions_total", **harm)
    assert before is not None
    settle(controller.store, "stable", "livealign@1", scores(0.4, 60, 1), T0 + 1)
    settle(controller.store, "canary", "livealign@2", scores(-0.3, 60, 2), T0 + 1)
    decision = controller.tick(T0 + 30_000)
    assert decision is not None and decision.action == "rollback"
    assert step_started("livealign@2") is None
    assert metric("livealign_canary_decisions_total", **harm) == before + 1
