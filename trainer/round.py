"""One training round, start to end: data -> reward model -> policy -> gate -> publish.

Plain Python, so it can be tested and timed without Ray; ``trainer.actor`` schedules it.
Each round trains from the stable adapter, on the records that arrived after the data
window of that adapter, and never leaves a half-published version behind (the registry
renames a complete folder into place or nothing at all).

A version that passes the offline gate is published as the *canary*, never straight to
stable: the canary controller gives it a share of live traffic and promotes or rolls it
back on the users' feedback. While a canary is on trial the trainer waits (no round):
a newer candidate replacing it would restart the analysis and expose users to two
untested versions in a row, and nothing is lost by waiting, because the next round's
data window starts where the stable version's ended and so covers the trial's feedback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from monitoring import metrics as m
from streaming.events import BASE_ADAPTER, ChatMessage, PreferenceLabel, PreferencePair, now_ms
from streaming.store import PreferenceStore
from trainer import memory
from trainer.config import ROUNDS_LOG, TrainerConfig
from trainer.gate import evaluate
from trainer.registry import DataWindow, Registry
from trainer.teacher import Lesson, Sampler, TeacherReport, cut_ids, teach
from trainer.train import RewardModel, threads, train_policy, train_reward_model

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    outcome: str  # published | rejected | skipped | failed
    started_ms: int
    version: str | None = None
    parent: str | None = None
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)  # the gate's, one per check
    seconds: dict[str, float] = field(default_factory=dict)
    n_pairs: int = 0
    n_labels: int = 0
    teacher: TeacherReport | None = None  # what the reward model taught (None: not reached)


@dataclass
class Streaks:
    """How many rounds in a row the gate rejected, and how many failed: what the trainer's
    alerts watch. A skipped round (too few records, a canary on trial) tried nothing, so
    it neither extends a streak nor breaks one."""

    rejected: int = 0
    failed: int = 0

    def after(self, outcome: str) -> None:
        if outcome == "skipped":
            return
        self.rejected = self.rejected + 1 if outcome == "rejected" else 0
        self.failed = self.failed + 1 if outcome == "failed" else 0

    @classmethod
    def from_log(cls, path: Path) -> Streaks:
        """The streaks as the rounds log leaves them, so a restarted trainer still counts
        the rounds before it (a line cut short by a crash is left out)."""
        streaks = cls()
        if path.is_file():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    streaks.after(json.loads(line)["outcome"])
        return streaks

    def export(self) -> None:
        m.CONSECUTIVE_REJECTIONS.set(self.rejected)
        m.CONSECUTIVE_FAILURES.set(self.failed)


def _held_out(key: str, fraction: float) -> bool:
    """Deterministic split: a record stays on the same side in every round."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


class Trainer:
    def __init__(self, config: TrainerConfig, sampler: Sampler | None = None) -> None:
        self.config = config
        self.sampler = sampler  # serving's sampling path; None (offline): no teacher
        self.registry = Registry(config.registry_dir)
        self.store = PreferenceStore(config.store_url)
        self.streaks = Streaks.from_log(self.rounds_log)
        self.streaks.export()

    @property
    def rounds_log(self) -> Path:
        return self.config.registry_dir / ROUNDS_LOG

    # --- data ------------------------------------------------------------------------
    def window_start(self) -> int:
        """Records newer than this have not taught the served adapter yet."""
        stable = self.registry.state().stable
        return self.registry.get(stable).data_window.to_ms if stable else 0

    def records(self, since_ms: int) -> tuple[list[PreferencePair], list[PreferenceLabel]]:
        """The newest ``max_records`` pairs and labels written after ``since_ms``."""
        pair_rows, label_rows = self.store.records_since(since_ms, self.config.max_records)
        pairs = [PreferencePair.model_validate(r) for r in pair_rows]
        labels = [PreferenceLabel.model_validate(r) for r in label_rows]
        return pairs, labels

    def canary_on_trial(self) -> str | None:
        return self.registry.state().canary

    def cut_off(self, pairs: list[PreferencePair], labels: list[PreferenceLabel]) -> frozenset[str]:
        """The records' response ids whose answers stopped at max_tokens, not by choice."""
        ids = (
            {x.response_id for x in labels}
            | {p.rejected_response_id for p in pairs}
            | {p.chosen_response_id for p in pairs if p.chosen_response_id}
        )
        return self.store.cut_off(sorted(ids))

    def new_records(self) -> int:
        """Counted in the store (the actor asks every few seconds: nothing is loaded)."""
        return self.store.count_records_since(self.window_start())

    # --- the round ---------------------------------------------------------------------
    def run_round(self) -> RoundReport:
        report = RoundReport(outcome="skipped", started_ms=now_ms())
        m.ROUNDS.labels("started").inc()
        memory.reset_peak()
        try:
            with threads(self.config.train.num_threads):  # reward scoring and the gate too
                self._run(report)
        except Exception as exc:
            report.outcome, report.reasons = "failed", [f"{type(exc).__name__}: {exc}"]
            log.exception("training round failed")
        self._memory(report)
        m.ROUNDS.labels(report.outcome).inc()
        self.streaks.after(report.outcome)
        self.streaks.export()
        self._log(report)
        return report

    def _run(self, report: RoundReport) -> None:
        cfg = self.config
        self.registry.gc_temp(older_than_s=0)  # leftovers of a round killed midway
        if canary := self.canary_on_trial():
            report.reasons = [f"{canary} is on trial as the canary: waiting for its verdict"]
            return
        stable = self.registry.state().stable
        report.parent = stable
        parent_dir = self.registry.path(stable) if stable else None
        since, until = self.window_start(), now_ms()
        pairs, labels = self.records(since)
        report.n_pairs, report.n_labels = len(pairs), len(labels)
        if len(pairs) + len(labels) < cfg.min_records:
            report.reasons = [f"{len(pairs) + len(labels)} new records < {cfg.min_records}"]
            return
        # Train on the new records; judge on the held-out share of ALL records, old ones
        # too, so a candidate that unlearns what earlier rounds established fails the gate.
        frac = cfg.held_out_fraction
        train_pairs = [p for p in pairs if not _held_out(p.pair_id, frac)]
        train_labels = [x for x in labels if not _held_out(x.response_id, frac)]
        every_pair, every_label = self.records(0) if since else (pairs, labels)
        held_pairs = [p for p in every_pair if _held_out(p.pair_id, frac)]
        held_labels = [x for x in every_label if _held_out(x.response_id, frac)]
        for old in cfg.work_dir.glob("round-*"):  # scratch of a round killed midway
            shutil.rmtree(old, ignore_errors=True)
        work = cfg.work_dir / f"round-{report.started_ms}"
        work.mkdir(parents=True)
        try:
            reward = self._reward_model(train_pairs, held_pairs, work, report)
            lesson = Lesson(
                stable or BASE_ADAPTER, train_pairs, [*held_pairs, *held_labels],
                partial(_held_out, fraction=frac), report.metrics.get("reward_accuracy"),
                cfg.min_reward_accuracy, keep_cut=cfg.train.cut_aware,
            )  # fmt: skip
            taught, report.teacher = teach(cfg.teacher, self.sampler, reward, self.store, lesson)
            if report.teacher.seconds:  # it sampled (a refusal takes no time worth a stage)
                report.seconds["teacher"] = report.teacher.seconds
            t = time.perf_counter()
            policy = train_policy(
                cfg.base_model, parent_dir, train_pairs + taught, train_labels, work / "candidate",
                cfg.train, progress=_progress("policy"),
                cut=self.cut_off(train_pairs, train_labels) | cut_ids(taught),
            )  # fmt: skip
            report.seconds["policy"] = time.perf_counter() - t
            report.metrics["policy_steps"] = float(policy.steps)
            for key, value in (("dpo_loss", policy.dpo_loss), ("kto_loss", policy.kto_loss)):
                if value is not None:
                    report.metrics[key] = value
            t = time.perf_counter()
            prompts = _prompts(held_pairs, held_labels, cfg.gate.n_prompts)
            gate = evaluate(
                cfg.base_model,
                policy.adapter_dir,
                parent_dir,
                held_pairs,
                prompts,
                reward,
                cfg.gate,
            )
            report.seconds["gate"] = time.perf_counter() - t
            report.metrics.update(gate.metrics)
            report.checks = [asdict(c) for c in gate.checks]
            for key, value in gate.metrics.items():
                m.GATE_METRIC.labels("candidate", key).set(value)
            if not gate.passed:
                report.outcome, report.reasons = "rejected", gate.reasons
                log.info("candidate rejected: %s", "; ".join(gate.reasons))
                return
            t = time.perf_counter()
            window = DataWindow(
                from_ms=since, to_ms=until, n_pairs=len(pairs), n_labels=len(labels)
            )
            manifest = self.registry.publish(
                policy.adapter_dir, parent=stable, base_model=str(cfg.base_model),
                data_window=window, metrics=report.metrics,
            )  # fmt: skip
            self.registry.set_state(
                canary=manifest.ref, action="publish", reason="gate passed: on trial as canary"
            )
            report.seconds["publish"] = time.perf_counter() - t
            report.outcome, report.version = "published", manifest.ref
            log.info("published %s as the canary (parent %s)", manifest.ref, stable)
        finally:
            for stage, secs in report.seconds.items():
                m.ROUND_SECONDS.labels(stage).observe(secs)
            shutil.rmtree(work, ignore_errors=True)

    def _reward_model(
        self,
        train_pairs: list[PreferencePair],
        held_pairs: list[PreferencePair],
        work: Path,
        report: RoundReport,
    ) -> RewardModel | None:
        if len(train_pairs) < self.config.min_reward_pairs:
            report.reasons.append(
                f"{len(train_pairs)} pairs < {self.config.min_reward_pairs}: no reward model, "
                "win rate not judged"
            )
            return None
        t = time.perf_counter()
        result = train_reward_model(
            self.config.base_model, train_pairs, work / "reward", self.config.train,
            held_out=held_pairs or None, progress=_progress("reward"),
        )  # fmt: skip
        report.seconds["reward"] = time.perf_counter() - t
        accuracy = result.held_out_accuracy
        if accuracy is not None:
            report.metrics["reward_accuracy"] = accuracy
        report.metrics["reward_scale"] = result.scale
        # A reward model that cannot rank held-out pairs would judge the candidate by noise.
        if accuracy is not None and accuracy < self.config.min_reward_accuracy:
            report.reasons.append(
                f"reward model held-out accuracy {accuracy:.3f} < "
                f"{self.config.min_reward_accuracy}: win rate not judged"
            )
            return None
        return RewardModel.load(self.config.base_model, result.model_dir)

    def _memory(self, report: RoundReport) -> None:
        """Peak resident memory of the round, and what is left once freed memory is handed
        back: the peak is what a machine must have, the rest what stays taken between
        rounds."""
        peak = memory.peak_rss_bytes()
        memory.release()
        after = memory.rss_bytes()
        for when, value in (("peak", peak), ("after", after)):
            if value is not None:
                report.metrics[f"rss_{when}_gb"] = round(value / 2**30, 3)
                m.TRAINER_RSS.labels(when).set(value)

    def _log(self, report: RoundReport) -> None:
        path = self.rounds_log
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(asdict(report)) + "\n")


def _prompts(
    pairs: list[PreferencePair], labels: list[PreferenceLabel], n: int
) -> list[list[ChatMessage]]:
    seen: dict[str, list[ChatMessage]] = {}
    for prompt in [p.prompt for p in pairs] + [x.prompt for x in labels]:
        seen.setdefault(json.dumps([msg.model_dump() for msg in prompt]), prompt)
    return list(seen.values())[:n]


def _progress(stage: str) -> Any:
    def report(update: dict[str, float]) -> None:
        if "loss" in update:
            m.TRAIN_LOSS.labels(stage).set(update["loss"])

    return report
