"""Running statistics shared by the rater model and the calibration."""

from __future__ import annotations

from dataclasses import dataclass

EPS = 1e-12


def clamp(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo if x < lo else hi if x > hi else x


@dataclass(slots=True)
class Moments:
    """Running mean and variance: exact for the first ``memory`` observations, then an
    exponential window of about that many, so that old behaviour fades."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0

    def push(self, x: float, memory: int) -> None:
        self.n += 1
        rate = 1.0 / (self.n if self.n < memory else memory)
        delta = x - self.mean
        self.mean += rate * delta
        self.var = (1.0 - rate) * (self.var + rate * delta * delta)

    def posterior(
        self, prior_mean: float, prior_var: float, prior_n: float, memory: int
    ) -> tuple[float, float]:
        """Mean and variance shrunk toward a prior worth ``prior_n`` observations
        (normal-inverse-gamma style: the variance also grows with the mean's distance)."""
        n = self.n if self.n < memory else memory
        total = prior_n + n
        if total <= 0:
            return prior_mean, prior_var
        diff = self.mean - prior_mean
        mean = (prior_n * prior_mean + n * self.mean) / total
        var = (prior_n * prior_var + n * self.var + prior_n * n / total * diff * diff) / total
        return mean, var

    def to_json(self) -> list[float]:
        return [self.n, self.mean, self.var]

    @classmethod
    def from_json(cls, data: list[float]) -> Moments:
        n, mean, var = data
        return cls(int(n), float(mean), float(var))


@dataclass(slots=True)
class Part:
    """Accumulates one part (explicit or implicit) of a response's signals: sum of
    weights, of weight * value and of weight * value^2, and how many signals."""

    weight: float = 0.0
    total: float = 0.0
    square: float = 0.0
    count: int = 0
