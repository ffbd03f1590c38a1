"""From what the sources hold to the ``StatusReport``: pure (no I/O, no clock), so every
number the page shows is decided here and tested on plain values.

``Sources`` is what ``serving.status.sources`` read: the registry's state and manifests,
the canary controller's latest decision, the trainer's latest rounds, the preference
store's score buckets, canary arms, feedback counts and the processor's fusion weights.
A part that could not be read is None (or empty) and named in ``problems``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.canary.controller import Arms, ArmSummary
from serving.config import StatusConfig
from serving.status.models import (
    Arm,
    ArmName,
    Canary,
    Decision,
    Event,
    Feedback,
    Fusion,
    KindRate,
    LiveScore,
    Role,
    Round,
    ScorePoint,
    Serving,
    StatusReport,
    Version,
)
from streaming.events import BASE_ADAPTER
from streaming.kinds import FeedbackKind
from trainer.registry import Manifest, RegistryState, StateChange

# The gate's metrics a version or a round is shown with, in this order (a manifest holds
# the round's other numbers too: losses, steps, the checks' raw counts).
GATE_METRICS = (
    "reward_accuracy",
    "pref_accuracy",
    "win_rate",
    "win_rate_low",
    "win_rate_high",
    "nll_increase",
    "repetition_increase",
    "length_ratio",
)
Bucket = tuple[str, int, int, float]  # adapter, bucket index, answers, mean score


@dataclass
class Sources:
    now_ms: int
    replica: Mapping[str, Any]  # AdapterManager.loaded() of the answering replica
    state: RegistryState | None = None
    manifests: list[Manifest] = field(default_factory=list)  # newest first, the ones shown
    decision: Decision | None = None  # the canary controller's latest
    rounds: list[Mapping[str, Any]] = field(default_factory=list)  # rounds.jsonl, oldest first
    buckets: list[Bucket] = field(default_factory=list)
    arms: Arms | None = None
    feedback: tuple[int, Mapping[str, int]] | None = None
    fusion: Fusion | None = None
    problems: list[str] = field(default_factory=list)


def window(config: StatusConfig, now_ms: int) -> tuple[int, int]:
    """(since_ms, bucket_ms) of the chart and the live scores."""
    span_ms = int(config.window_s * 1000)
    return now_ms - span_ms, max(1, span_ms // config.buckets)


def assemble(config: StatusConfig, src: Sources) -> StatusReport:
    since, bucket_ms = window(config, src.now_ms)
    history = src.state.history if src.state else []
    return StatusReport(
        generated_ms=src.now_ms,
        refresh_s=config.refresh_s,
        window_s=config.window_s,
        bucket_ms=bucket_ms,
        serving=serving(src.replica),
        versions=[version(m, src.state, src.buckets) for m in src.manifests],
        series=series(src.buckets, since, bucket_ms),
        events=events(history, since, config.max_events),
        canary=canary(src.state, src.arms, src.decision),
        feedback=None if src.feedback is None else feedback(config, *src.feedback),
        fusion=src.fusion,
        rounds=[r for r in (round_(x) for x in reversed(src.rounds)) if r is not None],
        problems=src.problems,
    )


def serving(replica: Mapping[str, Any]) -> Serving:
    return Serving(
        stable=replica["stable"],
        canary=replica["canary"],
        canary_weight=replica["canary_weight"],
        refused=dict(replica["refused"]),
    )


def gate(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in GATE_METRICS if k in metrics}


def version(m: Manifest, state: RegistryState | None, buckets: Iterable[Bucket]) -> Version:
    return Version(
        ref=m.ref,
        parent=m.parent,
        created_ms=m.created_ms,
        role=role(m.ref, state),
        n_pairs=m.data_window.n_pairs,
        n_labels=m.data_window.n_labels,
        gate=gate(m.metrics),
        live=live(m.ref, buckets),
    )


def role(ref: str, state: RegistryState | None) -> Role:
    """What a version is now, or what became of it (see ``Version.role``)."""
    if state is None:
        return "published"
    if state.stable == ref:
        return "stable"
    if state.canary == ref:
        return "canary"
    if any(c.stable == ref for c in state.history):
        return "retired"
    if any(c.action == "rollback" and c.ref == ref for c in state.history):
        return "rolled_back"
    return "published"


def live(adapter: str, buckets: Iterable[Bucket]) -> LiveScore:
    """The adapter's buckets pooled: their answer-weighted mean."""
    n = total = 0.0
    for a, _, answers, mean in buckets:
        if a == adapter:
            n += answers
            total += answers * mean
    return LiveScore(answers=int(n), mean=total / n if n else None)


def series(buckets: Iterable[Bucket], since_ms: int, bucket_ms: int) -> list[ScorePoint]:
    return [
        ScorePoint(adapter=a, start_ms=since_ms + b * bucket_ms, answers=n, mean=mean)
        for a, b, n, mean in sorted(buckets)
    ]


def events(history: Iterable[StateChange], since_ms: int, most: int) -> list[Event]:
    """The registry's changes in the window, the latest ``most``, oldest first."""
    shown = [
        Event(ts_ms=c.ts_ms, action=c.action, ref=c.ref, reason=c.reason)
        for c in history
        if c.ts_ms > since_ms
    ]
    return shown[-most:] if most else []


def canary(
    state: RegistryState | None, arms: Arms | None, decision: Decision | None
) -> Canary | None:
    if state is None or state.canary is None:
        return None
    stable = state.stable or BASE_ADAPTER
    trial = state.rollout
    shown = []
    if arms is not None:
        w = state.canary_weight
        shown = [
            arm("stable", stable, 1.0 - w, arms.stable),
            arm("canary", state.canary, w, arms.canary),
        ]
    # A decision about an earlier canary says nothing about this one.
    latest = decision if decision is not None and decision.canary == state.canary else None
    return Canary(
        canary=state.canary,
        stable=stable,
        weight=state.canary_weight,
        step=trial.step if trial else None,
        started_ms=trial.started_ms if trial else None,
        step_started_ms=trial.step_started_ms if trial else None,
        paused=trial.paused if trial else False,
        arms=shown,
        decision=latest,
    )


def arm(name: ArmName, adapter: str, share: float, s: ArmSummary) -> Arm:
    return Arm(
        arm=name,
        adapter=adapter,
        share=share,
        conversations=s.scores.count,
        mean_score=s.scores.mean if s.scores.count else None,
        answers=s.requests,
        error_rate=_rate(s.errors, s.requests),
        thumbs_down_rate=_rate(s.thumbs_down, s.answered),
        regenerate_rate=_rate(s.regenerates, s.answered),
        latency_p95_s=s.latency_p95_s,
    )


def feedback(config: StatusConfig, answers: int, by_kind: Mapping[str, int]) -> Feedback:
    return Feedback(
        window_s=config.feedback_window_s,
        answers=answers,
        kinds=[
            KindRate(
                kind=kind.value,
                events=by_kind.get(kind.value, 0),
                per_answer=_rate(by_kind.get(kind.value, 0), answers),
            )
            for kind in FeedbackKind
        ],
    )


def round_(report: Mapping[str, Any]) -> Round | None:
    """One line of the rounds log; None for a line this version cannot read."""
    try:
        outcome = str(report["outcome"])
        reasons = [str(r) for r in report.get("reasons", [])]
        if outcome == "failed":  # "TypeError: ..." : the message may name paths
            reasons = [r.split(":", 1)[0] for r in reasons]
        return Round(
            started_ms=int(report["started_ms"]),
            outcome=outcome,
            version=report.get("version"),
            parent=report.get("parent"),
            n_pairs=int(report.get("n_pairs", 0)),
            n_labels=int(report.get("n_labels", 0)),
            checks={str(c["name"]): str(c["decision"]) for c in report.get("checks", [])},
            reasons=reasons,
            gate=gate(report.get("metrics", {})),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def charted(manifests: Sequence[Manifest]) -> list[str]:
    """The adapters whose scores the chart shows: the versions shown, and the base model."""
    return [BASE_ADAPTER, *(m.ref for m in manifests)]
