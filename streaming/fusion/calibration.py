"""Calibration: how well each implicit signal predicts the response's outcome, as its weight.

Learned online from responses whose feedback window has closed, against the outcome the
rest of their evidence gives (``outcomes``: votes, edits, regenerate clicks if so
configured, never the signal itself): a signal that predicts the users' own judgement
gains weight, one that predicts nothing (or the opposite) drifts to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streaming.fusion.config import FusionConfig
from streaming.fusion.outcomes import Outcome, Trust, is_outcome, outcome
from streaming.fusion.signals import Signal
from streaming.fusion.stats import clamp


def _rate(n: float, w: float, lr: float) -> float:
    """Update rate of a running average that has seen total weight ``n`` (this one's
    ``w`` included): the exact weighted mean until 1/lr, then an exponential window."""
    return min(1.0, w / min(n, 1.0 / lr))


@dataclass(slots=True)
class Mean:
    """Running weighted mean (``n``: total weight seen)."""

    n: float = 0.0
    mean: float = 0.0

    def push(self, y: float, w: float, lr: float) -> None:
        if w <= 0.0:
            return
        self.n += w
        self.mean += _rate(self.n, w, lr) * (y - self.mean)

    def to_json(self) -> list[float]:
        return [self.n, self.mean]

    @classmethod
    def from_json(cls, data: list[float]) -> Mean:
        # (An older state's label base rate was [n, mean, var]: the variance is dropped.)
        return cls(float(data[0]), float(data[1]))


@dataclass(slots=True)
class SignalCalibration:
    """Running weighted averages, over settled responses where one implicit signal is
    present and that have a target, of x (its value), |x|, u = x*y (y = the target), u^2,
    x^2 and x^2*y (the last three give the spread of x*(y - ybar) for any base rate ybar).
    ``n`` and ``n2`` are the total weight of those responses (each at most 1) and of its
    squares: their effective number is n^2 / n2."""

    n: float = 0.0
    x: float = 0.0
    abs_x: float = 0.0
    u: float = 0.0
    u2: float = 0.0
    x2: float = 0.0
    x2y: float = 0.0
    n2: float = 0.0

    def push(self, x: float, y: float, w: float, lr: float) -> None:
        if w <= 0.0:
            return
        self.n += w
        self.n2 += w * w
        rate = _rate(self.n, w, lr)
        u = x * y
        self.x += rate * (x - self.x)
        self.abs_x += rate * (abs(x) - self.abs_x)
        self.u += rate * (u - self.u)
        self.u2 += rate * (u * u - self.u2)
        self.x2 += rate * (x * x - self.x2)
        self.x2y += rate * (x * u - self.x2y)

    def weight(self, label_mean: float, prior: float, config: FusionConfig) -> float:
        """Predictiveness in [0, 1], shrunk toward ``prior``.

        Lift = E[x (y - ybar) | present]: how far the outcome moves from its base rate in
        the direction of x when the signal shows up. Divided by its largest possible value
        (E[|x| (1 - ybar sign x)], a perfect predictor) it is 1 for a signal that always
        points the right way, 0 for one independent of the outcome, negative for one that
        points the wrong way (clipped to 0: a misleading signal is ignored, not inverted).
        The estimate is lowered by ``calibration_lcb_z`` standard errors.
        """
        if self.n <= 0.0:
            return prior
        # The effective number of responses (Kish): equal weights count as that many
        # responses, a few heavy ones among many light ones as about the heavy ones.
        n_eff = min(self.n * self.n / self.n2, 1.0 / config.calibration_lr)
        room = self.abs_x - label_mean * self.x
        if room <= 1e-6:
            # Every outcome already agrees with the signal's sign: nothing to learn from.
            return prior
        lift = self.u - label_mean * self.x
        # The spread of what is averaged, x (y - ybar), not of x y: with a lopsided base
        # rate (most answers disliked) and a signal that keeps one sign (short dwell on
        # most of them), x y varies with x alone, and that spread buried a real lift.
        spread = self.u2 - 2.0 * label_mean * self.x2y + label_mean**2 * self.x2 - lift * lift
        std_err = math.sqrt(max(spread, 0.0) / n_eff) / room
        estimate = lift / room - config.calibration_lcb_z * std_err
        k = config.calibration_prior_n
        return clamp((k * prior + n_eff * estimate) / (k + n_eff), 0.0, 1.0)

    def to_json(self) -> list[float]:
        return [self.n, self.x, self.abs_x, self.u, self.u2, self.x2, self.x2y, self.n2]

    @classmethod
    def from_json(cls, data: list[float]) -> SignalCalibration:
        n, x, abs_x, u, u2, *more = (float(v) for v in data)
        # Saved before responses were weighted (each counted 1: n2 = n) and x^2 and x^2 y
        # were kept: x^2 = u^2 (labels were mostly saturated at ±1) and x^2 y = 0 make the
        # spread at least the old estimate's (more cautious, never less) until new
        # responses replace them.
        x2, x2y, n2 = more if more else (u2, 0.0, n)
        return cls(n, x, abs_x, u, u2, x2, x2y, n2)


class Calibrator:
    """The implicit signals' weights (``weights``, read by the fuser for every response)
    and the running statistics they are computed from."""

    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self.signals: dict[str, SignalCalibration] = {}
        # Per implicit signal: its target's base rate. Targets differ by signal (each
        # leaves itself out), and a signal's lift is measured against its own.
        self.base: dict[str, Mean] = {}
        self.weights: dict[str, float] = {}
        self.refresh()

    def learn(self, signals: list[Signal], trust: Trust) -> bool:
        """One settled response: each implicit signal's target (``outcomes.outcome``, the
        signal itself left out) moves that signal's base rate, and each signal present (x)
        is compared with its target. Returns whether anything was learned."""
        cfg, lr = self.config, self.config.calibration_lr
        values = _implicit_values(signals)
        shared: list[Outcome | None] = []  # the target of every signal that is no outcome
        learned = False
        priors = cfg.implicit_prior_weights
        for name in [*priors, *(n for n in values if n not in priors)]:
            if is_outcome(name, cfg):
                target = outcome(signals, cfg, trust, leave_out=name)
            else:
                if not shared:
                    shared.append(outcome(signals, cfg, trust))
                target = shared[0]
            if target is None:
                continue
            learned = True
            self._base(name).push(target.value, target.weight, lr)
            if (x := values.get(name)) is not None:
                calibration = self.signals.get(name)
                if calibration is None:
                    calibration = self.signals[name] = SignalCalibration()
                calibration.push(x, target.value, target.weight, lr)
        if learned:
            self.refresh()
        return learned

    def _base(self, name: str) -> Mean:
        base = self.base.get(name)
        if base is None:
            base = self.base[name] = Mean()
        return base

    def refresh(self) -> None:
        # Every weight depends on its base rate, which every learn() moves.
        cfg = self.config
        priors = cfg.implicit_prior_weights
        weights = self.weights
        for name in priors:
            if name not in self.signals:
                weights[name] = priors[name]
        for name, calibration in self.signals.items():
            base = self.base.get(name)
            mean = 0.0 if base is None else base.mean
            weights[name] = calibration.weight(mean, priors.get(name, 0.0), cfg)

    def to_json(self) -> dict[str, Any]:
        return {
            "calibration": {name: c.to_json() for name, c in self.signals.items()},
            "base": {name: b.to_json() for name, b in self.base.items()},
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore ``to_json``'s state (its keys, in a larger dict). A state saved before
        targets were per signal has one explicit-label base rate, ``label``, instead:
        every signal's starts from it."""
        self.weights = {}
        self.signals = {
            name: SignalCalibration.from_json(c) for name, c in state["calibration"].items()
        }
        base = state.get("base")
        if base is None and (label := state.get("label")) is not None:
            base = dict.fromkeys(self.config.implicit_prior_weights, label)
        self.base = {name: Mean.from_json(b) for name, b in (base or {}).items()}
        self.refresh()


def _implicit_values(signals: list[Signal]) -> dict[str, float]:
    """Strength-weighted mean value of each implicit signal present (two copies or two
    dwell reports of one response are one observation of that signal)."""
    sums: dict[str, list[float]] = {}
    for s in signals:
        if s.explicit or s.strength <= 0.0:
            continue
        acc = sums.setdefault(s.name, [0.0, 0.0])
        acc[0] += s.strength
        acc[1] += s.strength * s.value
    return {name: total / w for name, (w, total) in sums.items()}
