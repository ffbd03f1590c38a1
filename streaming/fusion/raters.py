"""Raters: a rate limit per rater, each rater's own scale, and how far to trust them.

A rater who gives everything 5 stars says less with a 5; a rater who keeps contradicting
everybody else on the same answers, or always gives the same extreme value, is trusted
less. All of it is learned online from the stream and round-trips through JSON.

Feedback without a user is one rater class, ``ANONYMOUS``: its events cannot be told
apart, so they share one rate-limit budget, one running scale and one trust, which starts
low (``anonymous_prior_trust``) and is learned from agreement with the named raters, within
``[anonymous_trust_floor, anonymous_trust_cap]``.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from typing import Any

from streaming.fusion.config import FusionConfig
from streaming.fusion.signals import Signal
from streaming.fusion.stats import EPS, Moments, Part, clamp
from streaming.kinds import FeedbackKind

RATE_WINDOW_MS = 60_000
# The anonymous class's key in rater statistics (and their saved rows). User hashes are
# hex (``serving.tokens.hash_user``): no user can be it. A signal's rater stays None.
ANONYMOUS = "(anonymous)"
# Signals normalized on each rater's own scale, with the prior variance of their raw values.
SCALE_PRIOR_VAR: dict[str, float] = {
    k.value: k.spec.scale_prior_var for k in FeedbackKind if k.spec.scale_prior_var is not None
}


def _admit(window: deque[int], ts_ms: int, limit: int) -> bool:
    """Whether one more event at ``ts_ms`` fits ``limit`` in the 60 s ``window`` (accepted
    times, sorted), recording it if so."""
    if window:
        # Events may arrive slightly out of order; keep the window sorted.
        ts_ms = max(ts_ms, window[-1])
    horizon = ts_ms - RATE_WINDOW_MS
    while window and window[0] <= horizon:
        window.popleft()
    if len(window) >= limit:
        return False
    window.append(ts_ms)
    return True


class RateLimiter:
    """At most ``rater_rate_limit_per_min`` accepted events per rater in any 60 s window of
    server time (the caller's: never a client's clock, which could pin a window in the far
    future), and at most ``anonymous_rate_limit_per_min`` of all events without a rater
    together. At most ``max_raters`` named windows are kept whatever the times: the least
    recently touched go first. Transient: not learned, not saved."""

    def __init__(self, config: FusionConfig) -> None:
        self.limit = config.rater_rate_limit_per_min
        self.anonymous_limit = config.anonymous_rate_limit_per_min
        self.max_windows = config.max_raters
        # Accepted event times per rater, ordered by last acceptance so idle raters are
        # cheap to forget.
        self._windows: OrderedDict[str, deque[int]] = OrderedDict()
        # The anonymous class's: apart, so no number of named raters can evict it.
        self._anonymous: deque[int] = deque()

    def allow(self, rater: str | None, ts_ms: int) -> bool:
        """False = drop. Events without a rater are one class with its own budget."""
        if rater is None:
            return _admit(self._anonymous, ts_ms, self.anonymous_limit)
        windows = self._windows
        horizon = ts_ms - RATE_WINDOW_MS
        if windows:  # (runs for every event: checked here, the loop only when there is work)
            oldest = windows[next(iter(windows))]
            if not oldest or oldest[-1] <= horizon:
                self._forget_idle(horizon)
        window = windows.get(rater)
        if window is None:
            window = windows[rater] = deque()  # a new key is the most recent already
            if len(windows) > self.max_windows:
                windows.popitem(last=False)
        else:
            windows.move_to_end(rater)
        return _admit(window, ts_ms, self.limit)

    def __len__(self) -> int:
        return len(self._windows)

    def _forget_idle(self, horizon: int) -> None:
        # Oldest-touched first; stop at the first rater still active (amortized O(1)).
        while self._windows:
            rater, window = next(iter(self._windows.items()))
            if window and window[-1] > horizon:
                return
            del self._windows[rater]


def named_trust(agreement: Moments, config: FusionConfig) -> float:
    """A named rater's trust: 0.5 + mean agreement with the consensus (shrunk toward
    ``rater_prior_agreement``), in [0, 1]. Pure."""
    mean, _ = agreement.posterior(
        config.rater_prior_agreement, 1.0, config.rater_agreement_prior_n, config.rater_memory
    )
    return clamp(0.5 + mean, 0.0, 1.0)


def anonymous_trust(agreement: Moments, config: FusionConfig) -> float:
    """The anonymous class's trust, learned as a named rater's is (0.5 + mean agreement
    with the consensus, shrunk toward the prior) but from a low prior,
    ``anonymous_prior_trust``, and kept in ``[anonymous_trust_floor, anonymous_trust_cap]``.
    Pure: ``agreement`` is all it learns from (each settled response pushes one value)."""
    mean, _ = agreement.posterior(
        config.anonymous_prior_trust - 0.5,
        1.0,
        config.rater_agreement_prior_n,
        config.rater_memory,
    )
    return clamp(0.5 + mean, config.anonymous_trust_floor, config.anonymous_trust_cap)


class RaterStats:
    """One rater's scale (per normalized signal: mean, variance of raw values) and their
    agreement with the consensus of the responses they rated. ``weight`` is cached: it is
    read for every signal fused and only changes when these statistics do. ``anonymous``:
    the anonymous class's, trusted by ``anonymous_trust``."""

    __slots__ = ("agreement", "anonymous", "scales", "weight")

    def __init__(self, anonymous: bool = False) -> None:
        self.scales: dict[str, Moments] = {}
        self.agreement = Moments()
        self.anonymous = anonymous
        self.weight = 1.0  # set by refresh(), which every update calls

    def normalize(self, name: str, value: float, config: FusionConfig) -> float:
        """Return a raw thumb/rating value z-scored on this rater's scale so far (rescaled so
        that a rater matching the population prior keeps the raw value), then add it."""
        moments = self.scales.get(name)
        if moments is None:
            moments = self.scales[name] = Moments()
        prior_var = SCALE_PRIOR_VAR[name]
        # Judged against the rater's history before this value: how unusual is it for them?
        mean, var = moments.posterior(0.0, prior_var, config.rater_prior_n, config.rater_memory)
        moments.push(value, config.rater_memory)
        return clamp((value - mean) * math.sqrt(prior_var / max(var, EPS)))

    def trust(self, config: FusionConfig) -> float:
        """0.5 + mean agreement with the consensus (shrunk to the prior), in [0, 1]; for
        the anonymous class, from its own prior and within its bounds."""
        learn = anonymous_trust if self.anonymous else named_trust
        return learn(self.agreement, config)

    def spread(self, config: FusionConfig) -> float:
        """How much of the scale this rater uses, as a factor in [floor, 1]: a rater who
        always gives the same (extreme) value tells us little."""
        total_n = 0
        total = 0.0
        for name, moments in self.scales.items():
            prior_var = SCALE_PRIOR_VAR[name]
            _, var = moments.posterior(0.0, prior_var, config.rater_prior_n, config.rater_memory)
            n = min(moments.n, config.rater_memory)
            total += n * min(1.0, math.sqrt(var / prior_var))
            total_n += n
        used = total / total_n if total_n else 1.0
        floor = config.extreme_rater_floor
        return floor + (1.0 - floor) * used

    def refresh(self, config: FusionConfig) -> None:
        self.weight = self.trust(config) * self.spread(config)

    def to_json(self) -> dict[str, Any]:
        return {
            "scales": {name: m.to_json() for name, m in self.scales.items()},
            "agreement": self.agreement.to_json(),
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], config: FusionConfig, anonymous: bool = False
    ) -> RaterStats:
        stats = cls(anonymous)
        stats.scales = {name: Moments.from_json(m) for name, m in data["scales"].items()}
        stats.agreement = Moments.from_json(data["agreement"])
        stats.refresh(config)
        return stats


class Raters:
    """Every known rater's statistics, least recently seen first (forgotten first beyond
    ``max_raters``; the anonymous class too, which then starts again from its low prior),
    and which of them changed since the last ``changes()``. Signals without a rater are
    the anonymous class's, under the key ``ANONYMOUS``."""

    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self.stats: OrderedDict[str, RaterStats] = OrderedDict()
        # Changed (each also moved to the end of stats) and forgotten since the last
        # changes(): what a store keeping one row per rater must write.
        self._changed: set[str] = set()
        self._forgotten: set[str] = set()
        self.default_weight = clamp(0.5 + config.rater_prior_agreement, 0.0, 1.0)
        self.anonymous_default_weight = anonymous_trust(Moments(), config)

    def for_update(self, rater: str) -> RaterStats:
        """The rater's statistics, about to change: marked as such and most recent."""
        stats = self.stats.get(rater)
        if stats is None:
            stats = self.stats[rater] = RaterStats(anonymous=rater == ANONYMOUS)
            self._forgotten.discard(rater)
            if len(self.stats) > self.config.max_raters:
                oldest, _ = self.stats.popitem(last=False)
                self._changed.discard(oldest)
                self._forgotten.add(oldest)
        else:
            self.stats.move_to_end(rater)
        self._changed.add(rater)
        return stats

    def observe(self, signal: Signal) -> Signal:
        """Update the rater's statistics with this NEW signal (call once per event) and
        return it normalized for the rater: thumbs and ratings are z-scored on the rater's
        own scale (a rater who gives everything 5 says little with a 5, a lot with a 1);
        without a rater, on the anonymous class's. Other signals come back unchanged."""
        if signal.name not in SCALE_PRIOR_VAR:
            return signal
        stats = self.for_update(ANONYMOUS if signal.rater is None else signal.rater)
        value = stats.normalize(signal.name, signal.value, self.config)
        stats.refresh(self.config)
        return Signal(signal.name, value, signal.strength, signal.rater, signal.explicit)

    def weight(self, rater: str | None) -> float:
        """Trust in [0, 1]: (0.5 + agreement with the consensus) times a factor for how much
        of the scale the rater uses. Unknown raters get the prior (0.75); no rater, the
        anonymous class's learned trust (its prior, 0.3, until it has some)."""
        if rater is None:
            stats = self.stats.get(ANONYMOUS)
            return self.anonymous_default_weight if stats is None else stats.weight
        stats = self.stats.get(rater)
        return self.default_weight if stats is None else stats.weight

    def update_consensus(
        self,
        signals: list[Signal],
        explicit: Part,
        implicit: Part,
        explicit_weights: dict[str, float],
        implicit_weights: dict[str, float],
    ) -> None:
        """Each rater's explicit value on one settled response is compared with the
        weighted mean of everything else on it (other raters' explicit signals and all
        implicit ones); raters who keep disagreeing lose trust. The anonymous class is
        compared with the named raters' consensus: its implicit signals are left out too,
        so it never agrees with itself."""
        cfg = self.config
        # Per rater: their trust-weighted explicit sums (to leave them out of the consensus)
        # and unweighted ones (their own opinion, even once their trust is 0).
        own: dict[str, list[float]] = {}
        anon_w = anon_wv = 0.0  # the anonymous class's implicit sums, trust-weighted
        for s in signals:
            if not s.explicit:
                if s.rater is None:
                    w = implicit_weights.get(s.name, 0.0) * s.strength * self.weight(None)
                    anon_w += w
                    anon_wv += w * s.value
                continue
            base = explicit_weights.get(s.name, 0.0) * s.strength
            sums = own.setdefault(ANONYMOUS if s.rater is None else s.rater, [0.0] * 4)
            w = base * self.weight(s.rater)
            sums[0] += w
            sums[1] += w * s.value
            sums[2] += base
            sums[3] += base * s.value
        for rater, (w, wv, base, base_v) in own.items():
            if base <= EPS:
                continue
            if rater == ANONYMOUS:
                w, wv = w + anon_w, wv + anon_wv
            others_w = explicit.weight - w + implicit.weight
            if others_w < cfg.consensus_min_evidence:
                continue
            consensus = (explicit.total - wv + implicit.total) / others_w
            stats = self.for_update(rater)
            stats.agreement.push(clamp(base_v / base * consensus), cfg.rater_memory)
            stats.refresh(cfg)

    def changes(self, everything: bool = False) -> tuple[list[list[Any]], list[str]]:
        """The raters changed since the last call (``everything``: all raters), in recency
        order, oldest first, as ``[rater, stats]``, and the raters forgotten since."""
        # Every changed rater was moved to the end of stats, and no other rater since the
        # last call: the changed ones are exactly the last len(_changed).
        n = len(self.stats) if everything else len(self._changed)
        changed = [[rater, stats.to_json()] for rater, stats in _last(self.stats, n)]
        forgotten = sorted(self._forgotten)
        self._changed.clear()
        self._forgotten.clear()
        return changed, forgotten

    def to_json(self) -> list[list[Any]]:
        return [[rater, stats.to_json()] for rater, stats in self.stats.items()]

    def load(self, data: list[list[Any]]) -> None:
        self.stats = OrderedDict(
            (str(rater), RaterStats.from_json(stats, self.config, str(rater) == ANONYMOUS))
            for rater, stats in data
        )
        self._changed = set(self.stats)  # changes() after a load returns them all
        self._forgotten = set()


def _last(items: OrderedDict[str, RaterStats], n: int) -> list[tuple[str, RaterStats]]:
    """The last ``n`` items, in order."""
    out = list(itertools.islice(reversed(items.items()), n))
    out.reverse()
    return out
