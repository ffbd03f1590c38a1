"""``FusionConfig``: every knob of signal cleaning, rater normalization, calibration and
fusion, grouped by what it controls. The signal weights' defaults come from the table of
feedback kinds (``streaming.kinds``), and a config must weigh every signal of it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streaming.kinds import FeedbackKind, signals

Scenario = Literal["safety", "open_domain", "general"]
SCENARIOS: tuple[Scenario, ...] = ("safety", "open_domain", "general")

DEFAULT_SAFETY_KEYWORDS = [
    # health
    "medic*", "doctor*", "diagnos*", "symptom*", "dose", "doses", "dosage*", "overdos*",
    "prescri*", "pregnan*", "disease*", "cancer", "infection*", "vaccin*", "antibiotic*",
    "chest pain", "allerg*",
    # self-harm and mental health crises
    "suicid*", "self-harm", "kill myself", "hurt myself", "end my life",
    "want to die", "eating disorder", "anorexi*", "bulimi*", "depress*",
    # legal
    "legal", "illegal", "lawyer*", "attorney*", "lawsuit*", "sue", "sued", "court",
    "contract", "contracts", "custody", "divorce", "immigration", "visa", "arrest*", "evict*",
    # weapons, violence, drugs
    "weapon*", "gun", "guns", "firearm*", "rifle*", "bomb*", "explosive*", "poison*",
    "drug", "drugs", "cocaine", "heroin", "fentanyl", "opioid*", "meth", "abuse*",
    "violen*", "malware",
    # money
    "financ*", "invest*", "stock", "stocks", "crypto*", "bitcoin", "loan*", "mortgage*",
    "taxes", "tax return", "retirement", "debt*", "bankrupt*", "insurance",
]  # fmt: skip

DEFAULT_OPEN_DOMAIN_KEYWORDS = [
    "story", "stories", "poem*", "poetry", "haiku*", "limerick*", "joke*", "funny",
    "riddle*", "chat", "chit-chat", "lyrics", "song*", "rap", "fiction*", "fantasy",
    "roleplay", "role-play", "pretend", "imagine", "brainstorm*", "fun fact*",
    "how are you", "what's up", "tell me about yourself", "favorite", "favourite",
    "creative", "character", "characters", "game", "games", "movie*",
]  # fmt: skip


def _default_weights(explicit: bool) -> dict[str, float]:
    return {name: spec.weight for name, spec in signals(explicit).items()}


# How much each signal counts in the calibration target of the others (``outcomes``): votes
# and edits as in fusion; the implicit signals nothing by default. A regenerate click can
# be an outcome too (-1), but in the simulated population (bench/calibration.py: users
# regenerate with 0.3 x displeasure) it is a weaker outcome than dwell is a predictor, so
# as a target it lowered the informative signals' weights and the labels they make.
# Copy, link, share and dwell are what calibration measures: as targets they would teach
# each other their own noise.
def _default_outcome_weights() -> dict[str, float]:
    return {**_default_weights(explicit=True), **dict.fromkeys(signals(explicit=False), 0.0)}


def _default_click_values() -> dict[str, float]:
    return {name: float(t.value or 0.0) for name, t in FeedbackKind.click.spec.targets.items()}


class FusionConfig(BaseModel):
    """Knobs of signal cleaning, rater normalization, calibration and fusion.

    > Which signals count, and by scenario

    mode, safety_keywords, open_domain_keywords, scenario_explicit_share

    > Signal weights (every signal of ``streaming.kinds`` needs one)

    explicit_weights, implicit_prior_weights, mixing_evidence_scale,
    confidence_evidence_scale

    > Reading each kind's value

    click_values, dwell_half_point_ms, dwell_full_factor, edit_full_change,
    edit_no_context_value, edit_no_context_strength, comment_max_chars

    > One voice per rater per response

    latest_wins_signals, max_signals_per_rater

    > Raters: rate limit, normalization, trust

    rater_rate_limit_per_min, rater_prior_n, rater_memory, rater_prior_agreement,
    rater_agreement_prior_n, extreme_rater_floor, consensus_min_evidence, max_raters

    > Anonymous feedback (events without a user): one rater class

    anonymous_rate_limit_per_min, anonymous_prior_trust, anonymous_trust_floor,
    anonymous_trust_cap

    > Coordinated raters (``coordination``)

    coordination_window_s, newcomer_chats, newcomer_share, newcomer_floor, lockstep_bucket_ms,
    lockstep_min_group, lockstep_repeats, lockstep_factor, principal_max_share, edit_budget

    > Calibration of implicit signals against the other evidence (votes, edits, regenerates)

    calibration_outcome_weights, calibration_label_saturation, calibration_lr,
    calibration_prior_n, calibration_lcb_z
    """

    model_config = ConfigDict(extra="forbid")  # a misspelled knob is an error, not a no-op

    # --- which signals count, and by scenario ----------------------------------------------
    mode: Literal["explicit", "implicit", "fused"] = Field(
        "fused",
        description="Which signals make the score: only explicit, only implicit, or both mixed "
        "by the scenario's explicit share.",
    )
    safety_keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SAFETY_KEYWORDS),
        description="Words or phrases in the user's messages that mark a safety-sensitive "
        "conversation (health, self-harm, legal, weapons, drugs, money). Matched "
        "case-insensitively on word boundaries; a trailing '*' matches any word ending.",
    )
    open_domain_keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OPEN_DOMAIN_KEYWORDS),
        description="Words or phrases that mark chit-chat or creative requests (same syntax). "
        "Safety keywords win when both match.",
    )
    scenario_explicit_share: dict[str, float] = Field(
        default_factory=lambda: {"safety": 0.85, "general": 0.65, "open_domain": 0.45},
        description="Prior share of the score given to explicit signals (the rest to implicit), "
        "per scenario. Needs every scenario, each in [0, 1]. A signal's weight in a scenario "
        "is this share (or the rest) times its weight below.",
    )

    # --- signal weights ----------------------------------------------------------------------
    explicit_weights: dict[str, float] = Field(
        default_factory=lambda: _default_weights(explicit=True),
        description="Fixed weight of each explicit signal inside the explicit part.",
    )
    implicit_prior_weights: dict[str, float] = Field(
        default_factory=lambda: _default_weights(explicit=False),
        description="Starting weight of each implicit signal before calibration has evidence.",
    )
    mixing_evidence_scale: float = Field(
        0.5,
        gt=0,
        description="Evidence weight at which a part (explicit or implicit) gets 63% of its "
        "scenario share; a part with little evidence gives up its share to the other.",
    )
    confidence_evidence_scale: float = Field(
        1.0,
        gt=0,
        description="Total evidence weight at which confidence (before the agreement factor) "
        "reaches 63%; one thumb from an unknown rater weighs 0.75, one without a user "
        "anonymous_prior_trust (0.3) at first.",
    )

    # --- reading each kind's value -----------------------------------------------------------
    click_values: dict[str, float] = Field(
        default_factory=_default_click_values,
        description="Value of each click target in [-1, 1].",
    )
    dwell_half_point_ms: float = Field(
        15_000,
        gt=0,
        description="Dwell time that maps to a neutral dwell signal (log scale around it).",
    )
    dwell_full_factor: float = Field(
        10.0,
        gt=1,
        description="Dwell this many times longer (shorter) than the half point saturates at "
        "+1 (-1).",
    )
    edit_full_change: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Fraction of words changed at which an edit counts as a full rejection "
        "(value -1, strength 1).",
    )
    edit_no_context_value: float = Field(
        -0.5, ge=-1, le=1, description="Value of an edit whose interaction is unknown."
    )
    edit_no_context_strength: float = Field(
        0.5, ge=0, le=1, description="Strength of an edit whose interaction is unknown."
    )
    comment_max_chars: int = Field(
        2000, ge=1, description="Characters of a comment given to the sentiment model."
    )

    # --- one voice per rater per response (``voice``) ------------------------------------------
    latest_wins_signals: list[str] = Field(
        default_factory=lambda: ["thumb", "rating", "edit", "compare"],
        description="Signals of which a rater has one on a response: a new one replaces the "
        "rater's earlier one there (dropped as superseded). Events without a user count as "
        "one rater per response (the holder of its feedback token).",
    )
    max_signals_per_rater: int = Field(
        3,
        ge=1,
        description="Of any other signal (comment, each click, dwell), at most this many per "
        "rater per response are fused; later ones are dropped (repeat_limit).",
    )

    # --- raters: rate limit, normalization, trust --------------------------------------------
    rater_rate_limit_per_min: int = Field(
        30,
        ge=1,
        description="More events than this from one rater in 60 s of server time (when the "
        "event was received; the client's clock is never used) are dropped.",
    )
    rater_prior_n: float = Field(
        5.0,
        ge=0,
        description="Pseudo-count pulling a rater's scale (mean, variance) toward the "
        "population prior, so a new rater's first ratings pass through almost unchanged.",
    )
    rater_memory: int = Field(
        200,
        ge=1,
        description="Observations a rater's statistics remember (older ones fade), so a rater "
        "who changes behaviour is re-judged.",
    )
    rater_prior_agreement: float = Field(
        0.25,
        ge=-1,
        le=1,
        description="Assumed agreement with the consensus for a rater with no history; "
        "trust = 0.5 + agreement, clipped to [0, 1], so unknown raters get 0.75 (anonymous "
        "feedback has its own prior: anonymous_prior_trust).",
    )
    rater_agreement_prior_n: float = Field(
        5.0, ge=0, description="Pseudo-count behind rater_prior_agreement."
    )
    extreme_rater_floor: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Trust factor left to a rater who always gives the same extreme value "
        "(1 for a rater who uses the whole scale).",
    )
    consensus_min_evidence: float = Field(
        0.3,
        ge=0,
        description="Weight of other signals on a response needed before a rater's agreement "
        "with them is recorded.",
    )
    max_raters: int = Field(
        200_000,
        ge=1,
        description="Raters kept in memory (and in state_dict), and rate-limit windows kept; "
        "the least recently seen go first.",
    )

    # --- anonymous feedback: one rater class (``raters.ANONYMOUS``) ---------------------------
    # Events without a user cannot be told apart, so they are one rater: one rate-limit
    # budget, one running scale, one trust. That trust starts low (anyone can send them)
    # and is learned like a named rater's, from agreement with the others on the same
    # responses, but kept within [floor, cap].
    anonymous_rate_limit_per_min: int = Field(
        120,
        ge=1,
        description="More events without a user than this, all of them together, in 60 s of "
        "server time are dropped (rate_limited). One budget for the class, apart from every "
        "named rater's: an anonymous flood cannot use up a named rater's, nor theirs it.",
    )
    anonymous_prior_trust: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Trust in feedback without a user before its agreement is known (a named "
        "rater with no history gets 0.75). Learned from then on, with the pseudo-count "
        "rater_agreement_prior_n behind this prior.",
    )
    anonymous_trust_floor: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Least trust anonymous feedback can fall to, however much it disagrees "
        "with the named raters (the scale-use factor still applies on top).",
    )
    anonymous_trust_cap: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Most trust anonymous feedback can earn, however much it agrees: below "
        "an unknown named rater's 0.75, as anyone can send it.",
    )

    # --- coordinated raters (``coordination``) ----------------------------------------------
    # The training weight of a rater's records (labels, edit and sibling pairs) is also
    # scaled by what many raters do together: fresh ids in a burst, a ring voting in
    # lockstep, one rater's flood of edits. Scores and canary outcomes are not. Transient:
    # a restart starts the windows again.
    coordination_window_s: float = Field(
        3600.0,
        gt=0,
        description="The window newcomers' and established raters' votes, and each rater's "
        "edits, are counted over.",
    )
    newcomer_chats: int = Field(
        3,
        ge=0,
        description="A rater is a newcomer until this many of their chats were answered: a "
        "fresh id made for one vote stays one. 0: nobody is.",
    )
    newcomer_share: float = Field(
        0.1,
        ge=0,
        description="Newcomers' explicit votes in the window weigh, all together, as at most "
        "this share of the established raters' votes (or newcomer_floor): beyond it every "
        "newcomer's records weigh less alike. Organic sign-ups stay under it; a burst of "
        "fresh ids (Sybils) does not. bench/poisoning.py: 0.25 let a 20% share of Sybils "
        "move the labels by 0.055, 0.1 by 0.026.",
    )
    newcomer_floor: int = Field(
        50,
        ge=0,
        description="Newcomer votes in the window that always count fully (a new deployment's "
        "first users are all newcomers).",
    )
    lockstep_bucket_ms: int = Field(
        1000, ge=1, description="Votes in the same bucket of server time are 'together'."
    )
    lockstep_min_group: int = Field(
        4,
        ge=2,
        description="Distinct raters voting together that make a bucket count as a group; "
        "a bucket of more than 16 times this is not examined (too busy to tell).",
    )
    lockstep_repeats: int = Field(
        3,
        ge=2,
        description="Times two raters must vote together to be partners. A rater with "
        "lockstep_min_group - 1 partners votes in lockstep.",
    )
    lockstep_factor: float = Field(
        0.05, ge=0, le=1, description="Weight factor of a rater who votes in lockstep."
    )
    principal_max_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="While two API-key principals or more voted in the window, one "
        "principal's votes weigh at most this share of all (0.5: as much as all the others "
        "together): one tenant or script cannot write a shared model's training data.",
    )
    edit_budget: int = Field(
        2,
        ge=1,
        description="Edits of one rater in the window that count fully; beyond, each of the "
        "rater's edit pairs weighs budget / edits (one rater rewriting every answer into the "
        "same text cannot become the training set).",
    )

    # --- calibration of implicit signals -----------------------------------------------------
    calibration_outcome_weights: dict[str, float] = Field(
        default_factory=_default_outcome_weights,
        description="Weight of each signal (times its strength and its rater's trust) in the "
        "outcome implicit signals are calibrated against: thumb 1, rating 1, edit 0.8, comment "
        "0.6 (as in fusion), every implicit signal 0. Every signal needs one, each in [0, 1]; "
        "a signal is never part of its own target (leave-one-out). Regenerate 0.5 makes a "
        "regenerate click (-1) an outcome too: more responses teach, but in the simulated "
        "population (bench/calibration.py) it lowered dwell's and copy's weights.",
    )
    calibration_label_saturation: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Outcome magnitude that counts as a full like/dislike when calibrating "
        "implicit signals (the question is whether the user liked the answer, and rater "
        "normalization rarely leaves a label at exactly ±1).",
    )
    calibration_lr: float = Field(
        0.001,
        gt=0,
        le=1,
        description="Online learning rate of implicit-signal calibration: the floor of the "
        "running averages' update rate, so about 1/lr recent responses with a target count.",
    )
    calibration_prior_n: float = Field(
        20.0,
        ge=0,
        description="Pseudo-count of responses with a target pulling a signal's weight toward "
        "its prior.",
    )
    calibration_lcb_z: float = Field(
        1.0,
        ge=0,
        description="Standard errors subtracted from a signal's estimated predictiveness, so a "
        "signal that predicts nothing settles at 0 instead of wandering above it on noise.",
    )

    @model_validator(mode="after")
    def _check_shares(self) -> FusionConfig:
        missing = set(SCENARIOS) - set(self.scenario_explicit_share)
        if missing:
            raise ValueError(f"scenario_explicit_share lacks {sorted(missing)}")
        for name, share in self.scenario_explicit_share.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"scenario_explicit_share[{name!r}] must be in [0, 1]")
        return self

    @model_validator(mode="after")
    def _check_anonymous_trust(self) -> FusionConfig:
        lo, hi = self.anonymous_trust_floor, self.anonymous_trust_cap
        prior = self.anonymous_prior_trust
        if not lo <= prior <= hi:
            raise ValueError(
                "anonymous trust needs anonymous_trust_floor <= anonymous_prior_trust <= "
                f"anonymous_trust_cap (got {lo}, {prior}, {hi})"
            )
        return self

    @model_validator(mode="after")
    def _check_every_signal_weighed(self) -> FusionConfig:
        # A signal without a weight would silently count for nothing; an unknown name is
        # a typo that would silently do nothing.
        expected = {
            "explicit_weights": signals(explicit=True),
            "implicit_prior_weights": signals(explicit=False),
            "click_values": FeedbackKind.click.spec.targets,
            "calibration_outcome_weights": {**signals(explicit=True), **signals(explicit=False)},
        }
        for field, names in expected.items():
            given = getattr(self, field)
            if missing := sorted(set(names) - set(given)):
                raise ValueError(f"{field} lacks {missing}: every signal needs a value")
            if unknown := sorted(set(given) - set(names)):
                raise ValueError(f"{field}: unknown signals {unknown} (known: {sorted(names)})")
        known = {**signals(explicit=True), **signals(explicit=False)}
        if unknown := sorted(set(self.latest_wins_signals) - set(known)):
            raise ValueError(f"latest_wins_signals: unknown signals {unknown}")
        for name, weight in self.calibration_outcome_weights.items():
            if not 0.0 <= weight <= 1.0:
                raise ValueError(f"calibration_outcome_weights[{name!r}] must be in [0, 1]")
        return self
