"""Calibration: how well each implicit signal predicts the explicit label, as its weight.

Learned online from responses whose feedback window has closed and that have explicit
evidence: a signal that predicts the users' own judgement gains weight, one that predicts
nothing (or the opposite) drifts to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streaming.fusion.config import FusionConfig
from streaming.fusion.signals import Signal
from streaming.fusion.stats import Moments, clamp


@dataclass(slots=True)
class SignalCalibration:
    """Running averages, over labeled responses where one implicit signal is present, of
    x (its value), |x|, u = x*y (y = the explicit label) and u^2."""

    n: int = 0
    x: float = 0.0
    abs_x: float = 0.0
    u: float = 0.0
    u2: float = 0.0

    def push(self, x: float, y: float, lr: float) -> None:
        self.n += 1
        rate = max(1.0 / self.n, lr)
        u = x * y
        self.x += rate * (x - self.x)
        self.abs_x += rate * (abs(x) - self.abs_x)
        self.u += rate * (u - self.u)
        self.u2 += rate * (u * u - self.u2)

    def weight(self, label_mean: float, prior: float, config: FusionConfig) -> float:
        """Predictiveness in [0, 1], shrunk toward ``prior``.

        Lift = E[x (y - ybar) | present]: how far the label moves from its base rate in the
        direction of x when the signal shows up. Divided by its largest possible value
        (E[|x| (1 - ybar sign x)], a perfect predictor) it is 1 for a signal that always
        points the right way, 0 for one independent of the label, negative for one that
        points the wrong way (clipped to 0: a misleading signal is ignored, not inverted).
        """
        if self.n == 0:
            return prior
        n_eff = min(float(self.n), 1.0 / config.calibration_lr)
        room = self.abs_x - label_mean * self.x
        if room <= 1e-6:
            # Every label already agrees with the signal's sign: nothing to learn from.
            return prior
        raw = (self.u - label_mean * self.x) / room
        std_err = math.sqrt(max(self.u2 - self.u * self.u, 0.0) / n_eff) / room
        estimate = raw - config.calibration_lcb_z * std_err
        k = config.calibration_prior_n
        return clamp((k * prior + n_eff * estimate) / (k + n_eff), 0.0, 1.0)

    def to_json(self) -> list[float]:
        return [self.n, self.x, self.abs_x, self.u, self.u2]

    @classmethod
    def from_json(cls, data: list[float]) -> SignalCalibration:
        n, x, abs_x, u, u2 = data
        return cls(int(n), float(x), float(abs_x), float(u), float(u2))


class Calibrator:
    """The implicit signals' weights (``weights``, read by the fuser for every response)
    and the running statistics they are computed from."""

    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self.signals: dict[str, SignalCalibration] = {}
        self.label = Moments()  # running mean of the explicit label (base rate)
        self.weights: dict[str, float] = {}
        self.refresh()

    def learn(self, label: float, signals: list[Signal]) -> None:
        """One settled response with explicit label ``label`` in [-1, 1]: each implicit
        signal present (x) is compared with it, and every weight is recomputed."""
        cfg = self.config
        self.label.push(label, max(1, round(1.0 / cfg.calibration_lr)))
        for name, x in _implicit_values(signals).items():
            calibration = self.signals.get(name)
            if calibration is None:
                calibration = self.signals[name] = SignalCalibration()
            calibration.push(x, label, cfg.calibration_lr)
        self.refresh()

    def refresh(self) -> None:
        # Every weight depends on the label base rate, which every learn() moves.
        cfg = self.config
        priors = cfg.implicit_prior_weights
        label_mean = self.label.mean
        weights = self.weights
        for name in priors:
            if name not in self.signals:
                weights[name] = priors[name]
        for name, calibration in self.signals.items():
            weights[name] = calibration.weight(label_mean, priors.get(name, 0.0), cfg)

    def to_json(self) -> dict[str, Any]:
        return {
            "calibration": {name: c.to_json() for name, c in self.signals.items()},
            "label": self.label.to_json(),
        }

    def load(self, calibration: dict[str, list[float]], label: list[float]) -> None:
        self.weights = {}
        self.signals = {name: SignalCalibration.from_json(c) for name, c in calibration.items()}
        self.label = Moments.from_json(label)
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
