"""Coordinated raters: what many raters do together, and how much it counts.

A feedback token gives its holder one voice on one response (``voice``), so an attacker
who wants to write the training data needs many responses and many voices: fresh ids, a
ring of ids voting together, or one id rewriting every answer it gets. Each leaves a
trace in server time that one honest user does not, and each scales the training weight
of the records made from the rater's responses (``factor`` on labels, edit and sibling
pairs; ``edit_factor`` on edit pairs too). Their scores, and the outcomes the canary
judges on, are left alone: a deployment whose every user is new loses no label.

- **fresh ids in bursts**: a rater is a *newcomer* until ``newcomer_chats`` of their
  chats were answered. Newcomers' votes in the window count, all together, as at most
  ``newcomer_share`` of the established raters' votes (at least ``newcomer_floor``):
  beyond it, every newcomer's records weigh less alike (and the window's are made again
  once the scale has fallen by a fifth);
- **lockstep**: votes are bucketed by server time; two raters in the same bucket of at
  least ``lockstep_min_group`` raters, ``lockstep_repeats`` times, are partners, and a
  rater with ``lockstep_min_group - 1`` partners votes in lockstep (weight times
  ``lockstep_factor``, their earlier records made again). Honest raters rarely share a
  second with the same people twice;
- **edit floods**: one rater's edits beyond ``edit_budget`` in the window make each of
  their edit pairs weigh budget / edits;
- **one principal's flood**: with API keys, while two principals or more voted in the
  window, one principal's votes weigh at most ``principal_max_share`` of all (at 0.5: as
  much as all the others together), however many conversations it opens.

Not saved: a restart starts the windows again (and everyone is a newcomer for a few
chats). Bounded: at most ``max_raters`` raters, and partner counts for as many pairs.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from streaming.fusion.config import FusionConfig

_BUSY_FACTOR = 16  # a bucket of more than min_group x this is not examined


_RECENT = 256  # a rater's edits (and votes) remembered, to remake their records


_NONE: deque[tuple[int, str]] = deque(maxlen=0)  # shared, never appended to


def _no_events() -> deque[tuple[int, str]]:
    return _NONE


@dataclass(slots=True)
class _Rater:
    chats: int = 0
    # (server time, response id) of their edits in the window, and of their last votes:
    # when what is known of the rater changes, those responses' records are remade. Made
    # at the first one: most raters never edit or vote, and an empty deque costs ~400
    # bytes, times max_raters.
    edits: deque[tuple[int, str]] = field(default_factory=_no_events)
    votes: deque[tuple[int, str]] = field(default_factory=_no_events)
    partners: dict[str, int] = field(default_factory=dict)  # times voted together
    lockstep: bool = False

    def voted(self, ms: int, response_id: str) -> None:
        if self.votes is _NONE:
            self.votes = deque(maxlen=_RECENT)
        self.votes.append((ms, response_id))

    def edited(self, ms: int, response_id: str) -> deque[tuple[int, str]]:
        if self.edits is _NONE:
            self.edits = deque(maxlen=_RECENT)
        self.edits.append((ms, response_id))
        return self.edits


class Coordination:
    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self.window_ms = int(config.coordination_window_s * 1000)
        self.raters: OrderedDict[str, _Rater] = OrderedDict()
        # Explicit votes in the window, oldest first: (ms, by a newcomer, response id).
        self._votes: deque[tuple[int, bool, str]] = deque()
        self._newcomer_votes = 0
        self._remade_at_scale = 1.0  # the newcomer scale newcomers' records were last made with
        # Every explicit vote in the window (anonymous ones too) by principal: (ms, principal).
        self._principal_votes: deque[tuple[int, str]] = deque()
        self._by_principal: Counter[str] = Counter()
        # Lockstep buckets not yet closed: bucket -> raters who voted in it.
        self._buckets: dict[int, set[str]] = {}
        self.flagged = 0  # raters found voting in lockstep (a metric)
        # Responses whose records were made with a factor that has changed since.
        self._dirty: set[str] = set()

    # ── What happens ─────────────────────────────────────────────────────────────────────

    def chat(self, rater: str | None) -> None:
        """One of ``rater``'s chats was answered."""
        if rater is not None:
            self._get(rater).chats += 1

    def vote(
        self, rater: str | None, ms: int, response_id: str = "", principal: str | None = None
    ) -> None:
        """``rater`` cast an explicit vote (a new one, joined) on ``response_id`` at server
        time ``ms``, through ``principal``'s API key (None: unknown)."""
        self._count_principal(principal, ms)
        if rater is None:
            return  # the anonymous class is one rater already, with its own budget
        self._get(rater).voted(ms, response_id)
        newcomer = self.newcomer(rater)
        self._votes.append((ms, newcomer, response_id))
        self._newcomer_votes += newcomer
        self._expire(ms)
        if newcomer:
            self._remake_newcomers()
        bucket = ms // self.config.lockstep_bucket_ms
        self._buckets.setdefault(bucket, set()).add(rater)
        for closed in [b for b in self._buckets if b < bucket - 1]:  # late votes: one bucket
            self._examine(self._buckets.pop(closed))

    def edit(self, rater: str | None, ms: int, response_id: str = "") -> None:
        """``rater``'s edit of ``response_id`` joined at server time ``ms``. Past the
        budget, the rater's earlier edit pairs in the window are remade, lighter."""
        if rater is None:
            return
        edits = self._get(rater).edited(ms, response_id)
        while edits and edits[0][0] <= ms - self.window_ms:
            edits.popleft()
        if len(edits) > self.config.edit_budget:
            self._dirty.update(rid for _, rid in edits)

    def take_dirty(self) -> set[str]:
        """Responses to make the records of again (their raters' factors changed)."""
        dirty, self._dirty = self._dirty, set()
        dirty.discard("")
        return dirty

    # ── What it counts ───────────────────────────────────────────────────────────────────

    def newcomer(self, rater: str) -> bool:
        known = self.raters.get(rater)
        return (known.chats if known else 0) < self.config.newcomer_chats

    def newcomer_scale(self) -> float:
        """The factor every newcomer's weight gets now (1 while under the budget)."""
        n_new = self._newcomer_votes
        budget = max(
            self.config.newcomer_floor,
            self.config.newcomer_share * (len(self._votes) - n_new),
        )
        return 1.0 if n_new <= budget else budget / n_new

    def principal_scale(self, principal: str | None) -> float:
        """The factor of every vote through ``principal`` now (1 with one principal)."""
        counts = self._by_principal
        if principal is None or len(counts) < 2 or counts[principal] == 0:
            return 1.0
        share = self.config.principal_max_share
        others = len(self._principal_votes) - counts[principal]
        return min(1.0, share / (1.0 - share) * others / counts[principal])

    def factor(
        self,
        rater: str | None,
        newcomer_scale: float | None = None,
        principal: str | None = None,
    ) -> float:
        """This rater's weight factor, answering through ``principal`` (anonymous raters:
        the principal's only). Pass ``newcomer_scale`` when asking for many at once."""
        if principal is not None:
            return self.principal_scale(principal) * self.factor(rater, newcomer_scale)
        if rater is None:
            return 1.0
        known = self.raters.get(rater)
        f = self.config.lockstep_factor if known is not None and known.lockstep else 1.0
        if (known.chats if known else 0) < self.config.newcomer_chats:
            f *= self.newcomer_scale() if newcomer_scale is None else newcomer_scale
        return f

    def edit_factor(self, rater: str | None) -> float:
        known = self.raters.get(rater) if rater is not None else None
        n = len(known.edits) if known is not None else 0
        return 1.0 if n <= self.config.edit_budget else self.config.edit_budget / n

    # ── Internals ────────────────────────────────────────────────────────────────────────

    def _get(self, rater: str) -> _Rater:
        known = self.raters.get(rater)
        if known is None:
            known = self.raters[rater] = _Rater()
            if len(self.raters) > self.config.max_raters:
                self.raters.popitem(last=False)
        else:
            self.raters.move_to_end(rater)
        return known

    def _count_principal(self, principal: str | None, ms: int) -> None:
        votes, counts = self._principal_votes, self._by_principal
        if principal is not None:
            votes.append((ms, principal))
            counts[principal] += 1
        while votes and votes[0][0] <= ms - self.window_ms:
            _, gone = votes.popleft()
            counts[gone] -= 1
            if not counts[gone]:
                del counts[gone]

    def _expire(self, now: int) -> None:
        votes, horizon = self._votes, now - self.window_ms
        while votes and votes[0][0] <= horizon:
            _, newcomer, _ = votes.popleft()
            self._newcomer_votes -= newcomer
        if self._newcomer_votes == 0:
            self._remade_at_scale = 1.0

    def _remake_newcomers(self) -> None:
        """A burst's first votes were weighed at the scale of their moment: once it has
        fallen by a fifth since, the window's newcomer records are made again with it."""
        scale = self.newcomer_scale()
        if scale < 0.8 * self._remade_at_scale:
            self._dirty.update(rid for _, newcomer, rid in self._votes if newcomer)
            self._remade_at_scale = scale

    def _examine(self, group: set[str]) -> None:
        """A closed bucket: its raters voted together once more."""
        cfg = self.config
        if not cfg.lockstep_min_group <= len(group) <= cfg.lockstep_min_group * _BUSY_FACTOR:
            return
        need = cfg.lockstep_min_group - 1
        for a, b in itertools.permutations(sorted(group), 2):
            partners = self._get(a).partners
            partners[b] = partners.get(b, 0) + 1
            if len(partners) > 4 * cfg.lockstep_min_group * _BUSY_FACTOR:
                del partners[min(partners, key=partners.__getitem__)]  # the rarest goes
        for a in group:
            known = self._get(a)
            if not known.lockstep:
                repeated = sum(n >= cfg.lockstep_repeats for n in known.partners.values())
                if repeated >= need:
                    known.lockstep = True
                    self.flagged += 1
                    if cfg.lockstep_factor < 1.0:  # their records weigh less now: remake
                        self._dirty.update(rid for _, rid in known.votes)
