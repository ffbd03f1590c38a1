"""The body of ``GET /v1/status``: what the status page shows, typed (and so documented in
the OpenAPI document). Times are epoch milliseconds; scores are fused scores in [-1, 1]."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Role = Literal["stable", "canary", "rolled_back", "retired", "published"]
ArmName = Literal["stable", "canary"]


class LiveScore(BaseModel):
    answers: int = Field(description="Settled answers with a fused score in the window.")
    mean: float | None = Field(description="Their mean fused score (None: no answers).")


class Version(BaseModel):
    """One published adapter version."""

    ref: str
    parent: str | None = Field(description="The version it was trained from.")
    created_ms: int = Field(description="When it was published.")
    role: Role = Field(
        description="stable or canary now; else what became of it: rolled_back (its trial "
        "failed), retired (stable once, replaced since), published (neither yet)."
    )
    n_pairs: int = Field(description="Preference pairs it was trained on.")
    n_labels: int = Field(description="Labels it was trained on.")
    gate: dict[str, float] = Field(description="The offline gate's metrics it passed with.")
    live: LiveScore = Field(description="How the users scored its answers in the window.")


class ScorePoint(BaseModel):
    """One bucket of one adapter's line on the chart."""

    adapter: str = Field(description='A version, or "base" (the base model, no adapter).')
    start_ms: int = Field(description="The bucket's start.")
    answers: int
    mean: float


class Event(BaseModel):
    """A change of what serves (the registry's history)."""

    ts_ms: int
    action: str = Field(description="publish, canary_start, canary_step, promote, rollback...")
    ref: str | None
    reason: str


class Arm(BaseModel):
    """One canary arm, over the settled answers since the rollout started."""

    arm: ArmName
    adapter: str
    share: float = Field(description="Share of new conversations it gets.")
    conversations: int = Field(description="Settled, scored conversations.")
    mean_score: float | None = Field(
        description="Their mean fused score (each conversation's answers averaged first, "
        "as the canary controller does)."
    )
    answers: int = Field(description="Settled answers, scored or not.")
    error_rate: float | None
    thumbs_down_rate: float | None
    regenerate_rate: float | None
    latency_p95_s: float | None


class Decision(BaseModel):
    """The canary controller's latest decision (a line of its decisions log)."""

    ts_ms: int
    canary: str = Field(description="The version it is about.")
    action: str = Field(description="hold, promote (a step up), complete, rollback.")
    reason: str
    message: str = Field(description="The decision in one sentence.")
    estimate: float | None = Field(description="Canary minus stable mean score.")
    lower: float | None = Field(description="Its anytime-valid confidence bounds.")
    upper: float | None
    n_canary: int
    n_stable: int


class Canary(BaseModel):
    canary: str
    stable: str
    weight: float = Field(description="The canary's share of new conversations.")
    step: int | None = Field(description="Index of the rollout's step (None: not started).")
    started_ms: int | None
    step_started_ms: int | None
    paused: bool
    arms: list[Arm]
    decision: Decision | None = Field(description="None until the controller has decided.")


class KindRate(BaseModel):
    kind: str
    events: int = Field(description="Joined feedback events of this kind.")
    per_answer: float | None = Field(description="Events per settled answer (None: none).")


class Feedback(BaseModel):
    window_s: float
    answers: int = Field(description="Answers in the window whose feedback window closed.")
    kinds: list[KindRate] = Field(description="Every kind, in the kinds table's order.")


class Fusion(BaseModel):
    updated_ms: int = Field(description="When the processor last saved them.")
    weights: dict[str, dict[str, float]] = Field(
        description="{scenario: {signal: weight}}: explicit weights times the scenario's "
        "explicit share, calibrated implicit ones times the rest."
    )


class Round(BaseModel):
    """One training round (the trainer's rounds log)."""

    started_ms: int
    outcome: str = Field(description="published, rejected, skipped or failed.")
    version: str | None
    parent: str | None
    n_pairs: int
    n_labels: int
    checks: dict[str, str] = Field(description="Each gate check's decision.")
    reasons: list[str] = Field(
        description="Why it was rejected or skipped (failed: the error's type only, which "
        "names no path; the trainer's log has the rest)."
    )
    gate: dict[str, float]


class Serving(BaseModel):
    """What the answering replica serves (another may lag by one registry poll)."""

    stable: str
    canary: str | None
    canary_weight: float
    refused: dict[str, str] = Field(description="Versions it refused to load, and why.")


class StatusReport(BaseModel):
    generated_ms: int
    refresh_s: float = Field(description="How often the page fetches this again.")
    window_s: float = Field(description="The span of ``series`` and of the live scores.")
    bucket_ms: int
    serving: Serving
    versions: list[Version] = Field(description="Newest first.")
    series: list[ScorePoint] = Field(description="The chart: each adapter's score over time.")
    events: list[Event] = Field(description="The latest registry changes, oldest first.")
    canary: Canary | None = Field(description="None: no canary on trial.")
    feedback: Feedback | None = Field(description="None: no preference store.")
    fusion: Fusion | None = Field(description="None: the processor has saved none yet.")
    rounds: list[Round] = Field(description="The latest training rounds, newest first.")
    problems: list[str] = Field(
        description="Parts that could not be read (the rest is shown as it is)."
    )
