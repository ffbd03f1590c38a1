"""The canary policy, TRL-style: typed, documented fields with working defaults.

The defaults are sized for the traffic of one small deployment (about 2 conversations a
second, half of them scored by the feedback pipeline, a 120 s feedback window): there a
canary that is as good as stable walks 5 → 10 → 25 → 50 → 100% in about an hour and a
half, and one that is clearly worse (-0.3 on the fused score) is rolled back at 5% after
some 80 conversations served by it. ``bench/canary.py --replay`` measures both.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Limit(BaseModel):
    """The two thresholds of one guardrail: above ``hold`` the rollout waits, above
    ``rollback`` it is rolled back at once. Values are "higher is worse"."""

    model_config = ConfigDict(extra="forbid")

    hold: float = Field(description="An ordinary breach above this holds the rollout.")
    rollback: float = Field(description="A severe breach above this rolls back at once.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.rollback < self.hold:
            raise ValueError("a guardrail's rollback threshold must not be below its hold one")
        return self


def _limit(hold: float, rollback: float, description: str) -> Any:
    return Field(
        default_factory=lambda: Limit(hold=hold, rollback=rollback), description=description
    )


class CanaryPolicy(BaseModel):
    """How a canary earns its traffic, and when it loses it."""

    model_config = ConfigDict(extra="forbid")  # a misspelled knob is an error, not a no-op

    # ── Steps ────────────────────────────────────────────────────────────────────────────
    steps: list[float] = Field(
        default_factory=lambda: [0.05, 0.10, 0.25, 0.50, 1.0],
        description="Canary traffic weights (share of new conversations), in order. After "
        "the last step's check passes, the canary becomes stable.",
    )
    interval_s: float = Field(
        30.0, gt=0, description="Seconds between two decisions (used by the caller's loop)."
    )
    min_step_s: float = Field(
        300.0,
        ge=0,
        description="Least time at a step before it may be left. Longer than the feedback "
        "window (120 s), so that conversations served at this step's weight have settled "
        "and the guardrails have seen this step's load.",
    )
    step_min_conversations: list[int] = Field(
        default_factory=lambda: [50, 100, 200, 400, 800],
        description="Settled, scored conversations each arm needs (counted since the rollout "
        "started) to leave step i; one entry per step.",
    )
    max_duration_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="Longest a rollout may take. A canary as good as stable needs about 1.5 h "
        "at the defaults; 6 h lets nearly every such run finish while bounding a stuck one.",
    )
    max_duration_action: Literal["rollback", "complete"] = Field(
        "rollback",
        description="What happens at max_duration_s. Rollback: a canary that could not show "
        "non-inferiority in that time has not earned stable, stable is the known-good "
        "version, and holding forever keeps two adapters loaded and blocks the next version.",
    )

    # ── Primary metric: the fused score of settled conversations ────────────────────────
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="The confidence sequence misses the true score difference at some time "
        "with probability at most alpha; so both a false rollback (of a canary as good as "
        "stable) and a false promotion (of one worse than -margin) have probability <= alpha.",
    )
    margin: float = Field(
        0.1,
        gt=0,
        description="Non-inferiority margin on the fused-score scale [-1, 1]: a step is "
        "passed when canary - stable is above -margin. 0.1 is the drop of a thumbs-only "
        "score when the thumbs-up share falls 5 points (score = 2p - 1); 0.05 would need "
        "four times the conversations (some 5 h at the first step at the default traffic).",
    )
    mixture_sd: float = Field(
        0.2,
        gt=0,
        description="Standard deviation of the normal mixing distribution over the true "
        "difference (the mSPRT's tau). The confidence sequence is tightest where the "
        "standard error of the difference is about tau / 2.9 (here 0.07, some 50 scored "
        "canary conversations): where a harmful canary must be caught. Differences between "
        "adapter versions of 0.1 to 0.3 are the expected size.",
    )
    min_conversations: int = Field(
        30,
        ge=2,
        description="Settled, scored conversations each arm needs before any decision on "
        "the score (rollback or promotion): the interval plugs in the sample variance, "
        "which is unreliable on fewer.",
    )

    # ── Guardrails (canary against stable; higher is worse) ──────────────────────────────
    guardrail_min_requests: int = Field(
        100,
        ge=1,
        description="Requests each arm needs before its guardrails are evaluated. The severe "
        "thresholds are wide against the noise at this count, so chance alone (almost) "
        "never rolls back; they still act well before min_conversations have settled.",
    )
    error_rate: Limit = _limit(0.01, 0.05, "Canary error rate minus stable's (share of requests).")
    latency_p95_ratio: Limit = _limit(1.25, 2.0, "Canary p95 request latency over stable's.")
    ttft_p95_ratio: Limit = _limit(1.25, 2.0, "Canary p95 time to first token over stable's.")
    thumbs_down_rate: Limit = _limit(
        0.05, 0.15, "Canary thumbs-down per answered response minus stable's."
    )
    regenerate_rate: Limit = _limit(
        0.05, 0.15, "Canary regenerations per answered response minus stable's."
    )
    answer_length_fold: Limit = _limit(
        1.5,
        3.0,
        "How many times longer or shorter the canary's mean answer is "
        "(max(r, 1/r) of the ratio of mean completion tokens): rambling and truncation "
        "both count.",
    )

    # ── Health ───────────────────────────────────────────────────────────────────────────
    srm_p_value: float = Field(
        0.001,
        gt=0,
        lt=1,
        description="Sample-ratio mismatch: when the arms' conversation counts in this step "
        "fit the step's weight with a chi-square p-value below this, the rollout holds "
        "(routing or logging is broken; the data cannot be trusted). Low because it is "
        "checked every interval.",
    )

    @model_validator(mode="after")
    def _steps(self) -> Self:
        if not self.steps or any(not 0 < w <= 1 for w in self.steps):
            raise ValueError("steps must be weights in (0, 1]")
        if any(a >= b for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must increase")
        if len(self.step_min_conversations) != len(self.steps):
            raise ValueError("step_min_conversations needs one entry per step")
        return self
