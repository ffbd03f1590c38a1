"""The ``Fuser``: one response's signals in, one score with a confidence out.

It composes the other parts of the package: the rate limiter and rater model
(``raters``), the scenario detector (``scenario``) and the implicit-signal calibration
(``calibration``), and owns the learned state they keep, saved and restored as JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streaming.events import AnyInteraction
from streaming.fusion.calibration import Calibrator
from streaming.fusion.config import SCENARIOS, FusionConfig, Scenario
from streaming.fusion.coordination import Coordination
from streaming.fusion.raters import ANONYMOUS, RateLimiter, Raters
from streaming.fusion.scenario import ScenarioDetector
from streaming.fusion.signals import Signal
from streaming.fusion.stats import EPS, Part, clamp

STATE_VERSION = 1
# fuse() promises confidence < 1; 1 - exp(-x) rounds to exactly 1.0 for large x.
_MAX_CONFIDENCE = 1.0 - 1e-9


@dataclass(slots=True)
class Fused:
    """A response's fused label. ``explicit_score``/``implicit_score`` are each part's
    weighted mean (None without evidence), reported whatever the mode; ``score``,
    ``confidence`` and ``n_signals`` only use the parts the mode selects."""

    score: float
    confidence: float
    scenario: Scenario
    explicit_score: float | None
    implicit_score: float | None
    n_signals: int


class Fuser:
    """Per-rater normalization and trust, implicit-signal calibration and fusion.

    Not thread-safe; one instance per processor (it is cheap: plain floats and dicts).
    """

    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self.raters = Raters(config)
        self.calibrator = Calibrator(config)
        self.limiter = RateLimiter(config)
        self.scenarios = ScenarioDetector(config)
        self.coordination = Coordination(config)
        self._explicit_w = dict(config.explicit_weights)
        mode_share = {"explicit": 1.0, "implicit": 0.0}.get(config.mode)
        self._share: dict[str, float] = {
            s: config.scenario_explicit_share[s] if mode_share is None else mode_share
            for s in SCENARIOS
        }
        self._use_explicit = config.mode != "implicit"
        self._use_implicit = config.mode != "explicit"
        # Bound once: they run for every event.
        self.allow = self.limiter.allow
        self.observe = self.raters.observe

        self.rater_weight = self.raters.weight

    # -- fusion

    def _accumulate(self, signals: list[Signal]) -> tuple[Part, Part]:
        # The innermost loop of the processor: locals instead of attribute lookups.
        explicit_w, implicit_w = self._explicit_w, self.calibrator.weights
        raters = self.raters.stats
        default, anonymous = self.raters.default_weight, self.raters.anonymous_default_weight
        ew = et = es = iw = it = is_ = 0.0
        ec = ic = 0
        for s in signals:
            rater = s.rater
            stats = raters.get(ANONYMOUS if rater is None else rater)
            if stats is not None:
                w = s.strength * stats.weight
            else:
                w = s.strength * (anonymous if rater is None else default)
            v = s.value
            if s.explicit:
                w *= explicit_w.get(s.name, 0.0)
                ew, et, es, ec = ew + w, et + w * v, es + w * v * v, ec + 1
            else:
                w *= implicit_w.get(s.name, 0.0)
                iw, it, is_, ic = iw + w, it + w * v, is_ + w * v * v, ic + 1
        return Part(ew, et, es, ec), Part(iw, it, is_, ic)

    def fuse(self, interaction: AnyInteraction | None, signals: list[Signal]) -> Fused:
        """Combine one response's signals; reads but never changes learned state.

        Each part is a weighted mean (weight = signal weight * strength * rater weight). The
        parts are mixed by the scenario's explicit share, each share discounted by how little
        evidence its part has (1 - exp(-weight / mixing_evidence_scale)): with plenty of
        both the mix is exactly the share, and a lone weak implicit click cannot take the
        implicit share from a thumb. Confidence = (1 - exp(-evidence /
        confidence_evidence_scale)) * (1 - weighted dispersion of the values), in [0, 1).
        """
        cfg = self.config
        scenario = "general" if interaction is None else self.scenarios.detect(interaction)
        explicit, implicit = self._accumulate(signals)
        e_score = explicit.total / explicit.weight if explicit.weight > EPS else None
        i_score = implicit.total / implicit.weight if implicit.weight > EPS else None
        share = self._share[scenario]
        scale = cfg.mixing_evidence_scale
        lam_e = lam_i = 0.0
        n_signals = 0
        if self._use_explicit:
            n_signals += explicit.count
            if e_score is not None:
                lam_e = share * (1.0 - math.exp(-explicit.weight / scale))
        if self._use_implicit:
            n_signals += implicit.count
            if i_score is not None:
                lam_i = (1.0 - share) * (1.0 - math.exp(-implicit.weight / scale))
        lam = lam_e + lam_i
        if lam <= EPS:
            return Fused(0.0, 0.0, scenario, e_score, i_score, n_signals)
        score = mean_square = evidence = 0.0
        # The parts' means as computed above (not lam * total / weight: with a weight like
        # 0.3 that rounds, and one part alone would not score exactly its mean).
        if lam_e > 0.0 and e_score is not None:
            score += lam_e * e_score
            mean_square += lam_e * explicit.square / explicit.weight
            evidence += explicit.weight
        if lam_i > 0.0 and i_score is not None:
            score += lam_i * i_score
            mean_square += lam_i * implicit.square / implicit.weight
            evidence += implicit.weight
        score /= lam
        dispersion = clamp(mean_square / lam - score * score, 0.0, 1.0)
        confidence = (1.0 - math.exp(-evidence / cfg.confidence_evidence_scale)) * (
            1.0 - dispersion
        )
        return Fused(
            clamp(score), min(confidence, _MAX_CONFIDENCE), scenario, e_score, i_score, n_signals
        )

    # -- learning from settled responses

    def calibrate(self, signals: list[Signal]) -> None:
        """Learn from one response's settled signals (the normalized ones ``observe``
        returned). Call it ONCE per response, e.g. when its label is emitted: a second call
        with the same signals counts the response twice. Responses without outcome
        evidence teach nothing and are skipped, so it is safe to call for every response.

        1. Implicit calibration: each implicit signal present (x) is compared with the
           response's outcome y as the rest of its evidence gives it (votes and edits, and
           regenerate clicks if configured: ``calibration_outcome_weights``; never the
           signal itself; see ``outcomes.outcome``); the signal's weight becomes its
           measured predictiveness of y (see ``SignalCalibration.weight``): a predictive
           signal gains weight, one that predicts nothing (or the opposite) drifts to 0.
        2. Rater consensus: each rater's explicit value is compared with the weighted mean
           of everything else on the response; raters who keep disagreeing lose trust.
           The anonymous class (signals without a rater) is compared with the named
           raters' consensus, and its trust stays within its bounds.
        """
        self.calibrator.learn(signals, self.raters.weight)
        explicit, implicit = self._accumulate(signals)
        if explicit.weight > EPS:
            self.raters.update_consensus(
                signals, explicit, implicit, self._explicit_w, self.calibrator.weights
            )

    def weights(self) -> dict[str, dict[str, float]]:
        """Effective weights {scenario: {signal: weight}}: explicit ones times the scenario's
        explicit share, implicit (calibrated) ones times the rest (mode applied)."""
        out: dict[str, dict[str, float]] = {}
        for scenario in SCENARIOS:
            share = self._share[scenario]
            row = {name: share * w for name, w in self._explicit_w.items()}
            row.update({name: (1.0 - share) * w for name, w in self.calibrator.weights.items()})
            out[scenario] = row
        return out

    # -- persistence

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable snapshot of all learned state (rater statistics in recency
        order, implicit calibration, label base rate). Rate-limit windows are transient
        and not included."""
        state = self._state_without_raters()
        state["raters"] = self.raters.to_json()
        return state

    def state_changes(
        self, everything: bool = False
    ) -> tuple[dict[str, Any], list[list[Any]], list[str]]:
        """For a store that keeps one row per rater (with thousands of raters, writing all
        of them for every batch cost more than the batch): the learned state as
        ``state_dict`` gives it but without raters (``"raters"`` is empty), the raters
        changed since the last call (``everything``: all raters), in recency order, oldest
        first, as ``[rater, stats]`` like ``state_dict``, and the raters forgotten since.
        After ``load_state_dict`` the first call returns every rater."""
        changed, forgotten = self.raters.changes(everything)
        return self._state_without_raters(), changed, forgotten

    def _state_without_raters(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "raters": [], **self.calibrator.to_json()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what ``state_dict`` saved (weights are recomputed from it)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported fusion state version {state.get('version')!r}")
        self.raters.load(state["raters"])
        self.calibrator.load(state)
