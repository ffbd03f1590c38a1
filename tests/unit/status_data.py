"""A day of a deployment, written where the status page reads it: a registry with five
versions (three promoted, one rolled back, one on trial as the canary at 25%), the canary
controller's decisions, the trainer's rounds, and a preference store with the day's
outcomes, the last hour's settled answers with their feedback, and fusion weights
calibrated by the real fuser. Seeded: the same ``now_ms`` gives the same data.

The registry stamps versions and changes with ``time.time()``; ``_clock`` sets it to the
story's times, so a version published "22 hours ago" says so.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from serving.adapters import AdapterManager, Slot
from serving.canary.outcomes import summarize
from streaming import store as s
from streaming.fusion import Fuser, FusionConfig, Signal
from trainer.config import ROUNDS_LOG
from trainer.registry import DataWindow, Registry, Rollout

NOW_MS = 1_748_876_400_000  # 2025-06-02 15:00 UTC: the screenshot's "now"
MINUTE = 60_000
HOUR = 60 * MINUTE
SCORE_SD = 0.45
ANSWER_EVERY_MS = 12_000
SETTLE_MS = 2 * MINUTE
# Share of settled answers that get each kind of feedback.
FEEDBACK_RATES = {
    "thumb": 0.22,
    "rating": 0.05,
    "edit": 0.03,
    "comment": 0.04,
    "click": 0.31,
    "dwell": 0.64,
}
BASE_SCORE = 0.04


@dataclass(frozen=True)
class Planned:
    """One version: when it was published, what became of it, how users scored it."""

    hours_ago: float
    fate: str  # promote | rollback | canary
    score: float
    gate: dict[str, float]
    n_pairs: int
    n_labels: int


def _gate(
    reward: float, pref: float, win: float, nll: float, rep: float, length: float
) -> dict[str, float]:
    return {
        "reward_accuracy": reward,
        "pref_accuracy": pref,
        "win_rate": win,
        "win_rate_low": max(0.0, win - 0.11),
        "win_rate_high": min(1.0, win + 0.10),
        "nll_increase": nll,
        "repetition_increase": rep,
        "length_ratio": length,
        "dpo_loss": 0.61,
        "policy_steps": 48.0,
    }


PLAN = (
    Planned(22.0, "promote", 0.12, _gate(0.71, 0.68, 0.58, 0.21, 0.004, 1.06), 212, 640),
    Planned(17.0, "rollback", -0.10, _gate(0.69, 0.66, 0.55, 0.34, 0.011, 1.21), 188, 702),
    Planned(12.0, "promote", 0.22, _gate(0.74, 0.72, 0.63, 0.18, 0.002, 0.97), 251, 811),
    Planned(6.5, "promote", 0.31, _gate(0.77, 0.75, 0.66, 0.15, -0.003, 0.94), 296, 905),
    Planned(1.1, "canary", 0.36, _gate(0.78, 0.77, 0.69, 0.12, 0.001, 0.92), 174, 533),
)
TRIAL_STEPS_MIN = ((5, 0.05), (25, 0.10), (50, 0.25), (70, 0.50))  # minutes after publish


@dataclass(frozen=True)
class Served:
    """From ``ts_ms`` on: the stable version, the canary and its weight."""

    ts_ms: int
    stable: str
    canary: str | None
    weight: float


@contextmanager
def _clock(ms: int) -> Iterator[None]:
    with mock.patch("time.time", return_value=ms / 1000):
        yield


def adapter_dir(path: Path) -> Path:
    """Files a publish accepts (it checks their names and that the config is JSON)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    return path


def fill(root: Path, registry: Registry, store: s.PreferenceStore, now_ms: int = NOW_MS) -> None:
    """Write the whole day; ``root``: scratch space for the adapters' files."""
    rng = random.Random(now_ms)
    timeline = publish_versions(root, registry, now_ms)
    rows = outcomes(rng, timeline, now_ms)
    with store.transaction() as tx:
        store.upsert(tx, s.outcomes, rows)
    decide(registry, rows, now_ms)
    write_rounds(registry, now_ms)
    answers_with_feedback(rng, store, timeline, now_ms)
    with store.transaction() as tx:
        store.save_state(
            tx, s.FUSION_WEIGHTS, {"updated_ms": now_ms - 4000, "weights": calibrated_weights(rng)}
        )


def publish_versions(root: Path, registry: Registry, now_ms: int) -> list[Served]:
    """Publish the plan's versions at their times and walk their trials; the changes of
    what serves, oldest first."""
    timeline = [Served(now_ms - 26 * HOUR, "base", None, 0.0)]
    stable: str | None = None
    for i, plan in enumerate(PLAN, start=1):
        at = now_ms - int(plan.hours_ago * HOUR)
        window = DataWindow(
            from_ms=at - 6 * HOUR,
            to_ms=at - 10 * MINUTE,
            n_pairs=plan.n_pairs,
            n_labels=plan.n_labels,
        )
        with _clock(at):
            ref = registry.publish(
                adapter_dir(root / f"adapter-{i}"),
                parent=stable,
                base_model="smollm2",
                data_window=window,
                metrics=plan.gate,
            ).ref
            registry.set_state(canary=ref, action="publish", reason="gate passed: on trial")
        steps = [(m, w) for m, w in TRIAL_STEPS_MIN if at + m * MINUTE < now_ms]
        if plan.fate == "rollback":
            steps = steps[:2]
        for n, (minutes, weight) in enumerate(steps):
            t = at + minutes * MINUTE
            with _clock(t):
                registry.set_state(
                    canary_weight=weight,
                    action="canary_start" if n == 0 else "canary_step",
                    rollout=Rollout(started_ms=at + 5 * MINUTE, step=n, step_started_ms=t),
                    reason=f"step {n + 1}: {weight:.0%}",
                )
            timeline.append(Served(t, stable or "base", ref, weight))
        end = at + 90 * MINUTE
        if plan.fate == "promote":
            with _clock(end):
                registry.set_state(stable=ref, action="promote", reason="non_inferior")
            stable = ref
            timeline.append(Served(end, ref, None, 0.0))
        elif plan.fate == "rollback":
            with _clock(at + 40 * MINUTE):
                registry.set_state(canary=None, action="rollback", reason="harm")
            timeline.append(Served(at + 40 * MINUTE, stable or "base", None, 0.0))
    return timeline


def _served_at(timeline: list[Served], t: int) -> Served:
    return [x for x in timeline if x.ts_ms <= t][-1]


def _score(rng: random.Random, ref: str) -> float:
    means = {f"livealign@{i}": p.score for i, p in enumerate(PLAN, start=1)}
    return max(-1.0, min(1.0, rng.gauss(means.get(ref, BASE_SCORE), SCORE_SD)))


def outcomes(rng: random.Random, timeline: list[Served], now_ms: int) -> list[dict[str, Any]]:
    """One settled answer every ANSWER_EVERY_MS over the last day, in conversations of a
    few answers, on the arm the timeline routed it to; about 60% of them scored."""
    rows: list[dict[str, Any]] = []
    t, conv, left = now_ms - 24 * HOUR, "", 0
    while t < now_ms - SETTLE_MS:
        served = _served_at(timeline, t)
        if left == 0:
            conv, left = f"conv-{t}", rng.randint(1, 4)
            on_canary = served.canary is not None and rng.random() < served.weight
        left -= 1
        ref = served.canary if on_canary and served.canary else served.stable
        arm = "canary" if on_canary and served.canary else "stable"
        scored = rng.random() < 0.6
        error = rng.random() < 0.004
        rows.append(
            {
                "response_id": f"resp-{t}",
                "conversation_id": conv,
                "adapter": ref,
                "arm": arm,
                "created_ms": t,
                "score": _score(rng, ref) if scored and not error else None,
                "confidence": 0.6 if scored else 0.0,
                "n_signals": 2 if scored else 0,
                "thumbs_up": int(scored and rng.random() < 0.2),
                "thumbs_down": int(scored and rng.random() < 0.08),
                "regenerated": rng.random() < 0.05,
                "error": error,
                "completion_tokens": rng.randint(40, 220),
                "latency_ms": rng.uniform(800, 3200),
                "ttft_ms": rng.uniform(90, 400),
                "updated_ms": t + SETTLE_MS,
            }
        )
        t += ANSWER_EVERY_MS
    return rows


def decide(registry: Registry, rows: list[dict[str, Any]], now_ms: int) -> None:
    """The controller's log: a rollback of the second version, then a hold of the canary
    on trial, with the numbers its arms show."""
    state = registry.state()
    assert state.canary and state.stable and state.rollout
    arms = summarize(
        [r for r in rows if r["created_ms"] > state.rollout.started_ms],
        state.canary,
        state.stable,
        {},
    )
    estimate = arms.canary.scores.mean - arms.stable.scores.mean
    common = {
        "guardrails": {},
        "srm_p_value": 0.41,
        "step_weight": state.canary_weight,
        "weight": state.canary_weight,
    }
    registry.append_decision(
        {
            **common,
            "ts_ms": now_ms - 17 * HOUR + 40 * MINUTE,
            "canary": "livealign@2",
            "stable": "livealign@1",
            "action": "rollback",
            "reason": "harm",
            "message": "Worse: the confidence sequence of canary - stable is below 0.",
            "estimate": -0.21,
            "lower": -0.33,
            "upper": -0.08,
            "n_canary": 48,
            "n_stable": 377,
            "at": (now_ms - 17 * HOUR + 40 * MINUTE) / 1000,
        }
    )
    registry.append_decision(
        {
            **common,
            "ts_ms": now_ms - 20_000,
            "canary": state.canary,
            "stable": state.stable,
            "action": "hold",
            "reason": "step_minimum",
            "message": "Step 25% needs 60 scored conversations per arm and 300 s.",
            "estimate": estimate,
            "lower": estimate - 0.11,
            "upper": estimate + 0.12,
            "n_canary": arms.canary.scores.count,
            "n_stable": arms.stable.scores.count,
            "at": (now_ms - 20_000) / 1000,
        }
    )


GATE_CHECKS = ("pref_accuracy", "win_rate", "fluency", "repetition", "length")


def _round(
    started_ms: int,
    outcome: str,
    parent: str | None,
    data: tuple[int, int],
    gate: dict[str, float] | None = None,
    reasons: tuple[str, ...] = (),
    version: str | None = None,
    failed_check: str | None = None,
) -> dict[str, Any]:
    """A line of the rounds log, shaped as the trainer's ``RoundReport`` writes it."""
    checks = [
        {"name": n, "decision": "failed" if n == failed_check else "passed"} for n in GATE_CHECKS
    ]
    return {
        "outcome": outcome,
        "started_ms": started_ms,
        "version": version,
        "parent": parent,
        "reasons": list(reasons),
        "metrics": gate or {},
        "checks": checks if gate else [],
        "seconds": {"policy": 310.0, "gate": 95.0} if gate else {},
        "n_pairs": data[0],
        "n_labels": data[1],
        "teacher": None,
    }


def write_rounds(registry: Registry, now_ms: int) -> None:
    """A published round before each version; a rejected, a failed and a skipped one."""
    rounds, parent = [], None
    for i, plan in enumerate(PLAN, start=1):
        at = now_ms - int(plan.hours_ago * HOUR)
        if i == 3:
            weak = _gate(0.70, 0.64, 0.41, 0.22, 0.003, 1.02)
            why = ("win rate: 80% interval [0.30, 0.51], lower bound below 0.50",)
            rounds.append(_round(at - 2 * HOUR, "rejected", parent, (164, 590), weak, why,
                                 failed_check="win_rate"))  # fmt: skip
        if i == 4:  # the message names a path: the page shows the error's type only
            why = ("RuntimeError: /home/ops/var/work/round-1/candidate: No space left",)
            rounds.append(_round(at - 3 * HOUR, "failed", parent, (231, 770), reasons=why))
        data = (plan.n_pairs, plan.n_labels)
        ref = f"livealign@{i}"
        rounds.append(_round(at - 8 * MINUTE, "published", parent, data, plan.gate, version=ref))
        if plan.fate == "promote":
            parent = ref
    why = ("livealign@5 is on trial as the canary: waiting for its verdict",)
    rounds.append(_round(now_ms - 30 * MINUTE, "skipped", parent, (0, 0), reasons=why))
    (registry.root / ROUNDS_LOG).write_text("".join(json.dumps(r) + "\n" for r in rounds))


def answers_with_feedback(
    rng: random.Random, store: s.PreferenceStore, timeline: list[Served], now_ms: int
) -> None:
    """The last 65 minutes' answers (settled but the newest) and their feedback: joined,
    and some duplicates dropped (which are not counted)."""
    interactions: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    t = now_ms - 65 * MINUTE
    while t < now_ms:
        served = _served_at(timeline, t)
        rid = f"resp-{t}"
        interactions.append(
            {
                "response_id": rid,
                "conversation_id": f"conv-{t}",
                "prompt_hash": "0" * 64,
                "user_hash": None,
                "adapter": served.stable,
                "arm": "stable",
                "created_ms": t,
                "event": {},
                "calibrated": t < now_ms - SETTLE_MS,
            }
        )
        for kind, rate in FEEDBACK_RATES.items():
            if rng.random() < rate:
                status = "dropped" if rng.random() < 0.05 else "joined"
                feedback.append(
                    {
                        "event_id": f"fb-{t}-{kind}",
                        "response_id": rid,
                        "rater": None,
                        "kind": kind,
                        "received_ms": t + 30_000,
                        "status": status,
                        "status_reason": "duplicate" if status == "dropped" else None,
                        "signal": None,
                        "event": {},
                    }
                )
        t += ANSWER_EVERY_MS
    with store.transaction() as tx:
        store.upsert(tx, s.interactions, interactions)
        store.upsert(tx, s.feedback, feedback)


def calibrated_weights(rng: random.Random) -> dict[str, dict[str, float]]:
    """The real fuser's weights after calibrating on a few hundred answers whose copies
    and long reads go with a thumb up, and whose regenerations with a thumb down."""
    fuser = Fuser(FusionConfig())
    for _ in range(600):
        good = rng.random() < 0.55
        vote = 1.0 if good else -1.0
        signals = [Signal("thumb", vote, 1.0, f"rater-{rng.randint(1, 80)}", True)]
        if rng.random() < (0.5 if good else 0.1):
            signals.append(Signal("copy", 1.0, 1.0, None, False))
        if rng.random() < (0.1 if good else 0.4):
            signals.append(Signal("regenerate", -1.0, 1.0, None, False))
        signals.append(Signal("dwell", 0.6 if good else -0.2, 1.0, None, False))
        fuser.calibrate(signals)
    return fuser.weights()


def follow(adapters: AdapterManager, registry: Registry) -> None:
    """A fake replica's slots set to the registry's state, as its sync would set them (the
    fake engine loads nothing)."""
    state = registry.state()
    adapters.stable = Slot(state.stable or "base", None)
    adapters.canary = Slot(state.canary, None) if state.canary else None
    adapters.canary_weight = state.canary_weight
