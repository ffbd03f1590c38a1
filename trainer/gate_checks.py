"""The offline gate's decisions, apart from the models that feed them (``trainer.gate``).

Everything here is plain Python on numbers and strings, so each rule can be tested, and
read, without loading a model:

- pairwise judging with position swapping (`Judge`, `judge_both_orders`, `count_verdicts`),
  and the reward-model judge built from scalar scores (`ScoreJudge`);
- the Wilson score interval on the candidate's win rate (`wilson_interval`);
- the n-gram repetition measure of the degeneration guard (`repetition`);
- one `Check` per gate check: its decision, numbers, thresholds and reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal, Protocol

from streaming.events import ChatMessage

Decision = Literal["passed", "failed", "skipped"]

# Word 3-grams: a loop of a short phrase shows at once, while a fluent 30-word answer
# rarely says the same three words twice (SmolLM2-135M's base answers: 0.03 on average).
REPETITION_NGRAM = 3


@dataclass
class Check:
    """One check's verdict as it goes into GateReport.checks and rounds.jsonl.

    `values` are the numbers measured (they also land in the gate's flat metrics), and
    `thresholds` the GateConfig fields they were held to, under those fields' names.
    """

    name: str
    decision: Decision
    reason: str
    values: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


def skipped(name: str, reason: str, values: dict[str, float] | None = None) -> Check:
    return Check(name, "skipped", reason, values or {})


def _decided(
    name: str, ok: bool, reason: str, values: dict[str, float], thresholds: dict[str, float]
) -> Check:
    return Check(name, "passed" if ok else "failed", reason, values, thresholds)


# ---- pairwise judging ------------------------------------------------------------------------


class Judge(Protocol):
    """Compares two answers to each prompt. A judge may favour whichever answer it is shown
    first (LLM judges do); `judge_both_orders` asks it both ways round so that such a
    bias cannot produce a win."""

    def compare(
        self,
        prompts: Sequence[Sequence[ChatMessage]],
        firsts: Sequence[str],
        seconds: Sequence[str],
    ) -> list[float]:
        """P(the first answer is the better one), per prompt; exactly 0.5 is a tie (the
        judge applies its own margin)."""
        ...


class Scorer(Protocol):
    """A scalar reward r(prompt, answer), such as trainer.train.RewardModel."""

    def score(self, prompts: list[list[ChatMessage]], completions: list[str]) -> list[float]: ...


def pairwise_from_scores(
    firsts: Sequence[float], seconds: Sequence[float], margin: float
) -> list[float]:
    """P(first better) = sigmoid(r_first - r_second), as in the Bradley-Terry loss the
    reward model is trained with; 0.5 (a tie) when |difference| < margin, which also
    absorbs the float noise between two scoring batches of the same answer."""
    out = []
    for a, b in zip(firsts, seconds, strict=True):
        diff = a - b
        out.append(0.5 if abs(diff) < margin else 1.0 / (1.0 + math.exp(-diff)))
    return out


class ScoreJudge:
    """The reward-model judge. Its verdict depends on the two scores only, not on which
    answer is shown first, so it is order-consistent by construction (a tie in one order
    is a tie in the other): the swap costs it a second pair of scoring passes (cheap beside
    generation) and changes nothing.
    The swap is there for judges that do have a position bias."""

    def __init__(self, scorer: Scorer, margin: float) -> None:
        self.scorer = scorer
        self.margin = margin

    def compare(
        self,
        prompts: Sequence[Sequence[ChatMessage]],
        firsts: Sequence[str],
        seconds: Sequence[str],
    ) -> list[float]:
        chats = [list(p) for p in prompts]
        a = self.scorer.score(chats, list(firsts))
        b = self.scorer.score(chats, list(seconds))
        return pairwise_from_scores(a, b, self.margin)


@dataclass(frozen=True)
class Verdicts:
    """Per-prompt verdicts on the candidate, over both presentation orders."""

    wins: int = 0
    losses: int = 0
    ties: int = 0  # both orders: a tie
    inconsistent: int = 0  # the two orders disagree: no verdict

    @property
    def consistent(self) -> int:
        return self.wins + self.losses


def _side(p: float) -> int:
    """+1 the first answer is better, -1 the second, 0 a tie."""
    return (p > 0.5) - (p < 0.5)


def count_verdicts(candidate_first: Sequence[float], current_first: Sequence[float]) -> Verdicts:
    """`candidate_first[i]`: P(candidate better) with the candidate shown first;
    `current_first[i]`: P(current better) with the current answer shown first.

    Only the orders agreeing make a win or a loss. A judge that always prefers the first
    (or second) answer disagrees with itself on every prompt, so its verdicts count for
    nothing; a tie in one order and a preference in the other is inconsistent too."""
    wins = losses = ties = inconsistent = 0
    for p, q in zip(candidate_first, current_first, strict=True):
        a, b = _side(p), -_side(q)  # both as "+1 = the candidate is better"
        if a != b:
            inconsistent += 1
        elif a > 0:
            wins += 1
        elif a < 0:
            losses += 1
        else:
            ties += 1
    return Verdicts(wins, losses, ties, inconsistent)


def judge_both_orders(
    judge: Judge,
    prompts: Sequence[Sequence[ChatMessage]],
    candidate: Sequence[str],
    current: Sequence[str],
) -> Verdicts:
    return count_verdicts(
        judge.compare(prompts, candidate, current), judge.compare(prompts, current, candidate)
    )


# ---- the win-rate check ----------------------------------------------------------------------


def wilson_interval(successes: float, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Wilson score interval of a binomial proportion. Unlike the normal
    approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n, which matters
    at the gate's 10-30 verdicts. n = 0 says nothing: [0, 1]. `successes` may be
    fractional (the learning bench counts a tie as half a win)."""
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = successes / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def check_win_rate(v: Verdicts, confidence: float, min_lower: float) -> Check:
    """Wins over order-consistent verdicts; ties and inconsistent verdicts are not
    evidence either way, so they are left out of the count (and recorded)."""
    low, high = wilson_interval(v.wins, v.consistent, confidence)
    # No consistent verdict: no point estimate; 0.5 (the interval's centre) keeps the
    # metric a number, and the interval [0, 1] fails the check.
    rate = v.wins / v.consistent if v.consistent else 0.5
    values = {
        "win_rate": rate,
        "win_rate_low": low,
        "win_rate_high": high,
        "n_consistent": float(v.consistent),
        "n_inconsistent": float(v.inconsistent),
        "n_ties": float(v.ties),
    }
    ok = low >= min_lower
    reason = (
        f"win rate: {v.wins}/{v.consistent} order-consistent wins, {confidence:.0%} interval "
        f"[{low:.3f}, {high:.3f}], lower bound {'>=' if ok else '<'} {min_lower:.3f} "
        f"({v.ties} ties and {v.inconsistent} inconsistent not counted)"
    )
    thresholds = {"min_win_rate_lower": min_lower, "win_rate_confidence": confidence}
    return _decided("win_rate", ok, reason, values, thresholds)


# ---- the other checks ------------------------------------------------------------------------


def check_preferences(accuracy: float, n_pairs: int, min_pairs: int, min_accuracy: float) -> Check:
    values = {"pref_accuracy": accuracy, "n_pairs": float(n_pairs)}
    if n_pairs < min_pairs:
        return skipped(
            "pref_accuracy",
            f"preference accuracy: {n_pairs} held-out pairs < {min_pairs}, not judged",
            values,
        )
    ok = accuracy >= min_accuracy
    reason = (
        f"preference accuracy {accuracy:.3f} {'>=' if ok else '<'} {min_accuracy:.3f} "
        f"on {n_pairs} held-out pairs"
    )
    thresholds = {"min_pref_accuracy": min_accuracy, "min_pref_pairs": float(min_pairs)}
    return _decided("pref_accuracy", ok, reason, values, thresholds)


def check_fluency(
    nll_candidate: float, nll_current: float, nll_base: float, max_increase: float
) -> Check:
    increase = nll_candidate - nll_base
    values = {
        "nll_candidate": nll_candidate,
        "nll_current": nll_current,
        "nll_base": nll_base,
        "nll_increase": increase,
    }
    ok = increase <= max_increase
    reason = (
        f"fluency: base-model NLL of the candidate's answers {nll_candidate:.3f} vs the base "
        f"model's own {nll_base:.3f}: {increase:+.3f} {'<=' if ok else '>'} {max_increase:.3f} "
        "nats/token"
    )
    return _decided("fluency", ok, reason, values, {"max_nll_increase": max_increase})


def repetition(text: str, n: int = REPETITION_NGRAM) -> float:
    """Share of the answer's word n-grams that repeat an earlier one: 0 when none does,
    approaching 1 for a loop ("1. 1. 1. 1." -> 0.5 at n = 3, over 4 words). Case and
    punctuation are ignored; an answer shorter than n words cannot repeat: 0."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def mean_repetition(texts: Sequence[str], n: int = REPETITION_NGRAM) -> float:
    """Averaged per answer, so one long loop weighs as one answer, not as many words."""
    return sum(repetition(t, n) for t in texts) / len(texts) if texts else 0.0


def check_repetition(
    candidate: Sequence[str], current: Sequence[str], base: Sequence[str], max_increase: float
) -> Check:
    """Against the base model's own answers, not zero (SmolLM2 repeats itself too) and not
    the current adapter's (drift could add up round after round, as the NLL did). A loop
    is predictable text, so its NLL can stay low: the fluency check alone misses it."""
    rep_cand, rep_base = mean_repetition(candidate), mean_repetition(base)
    values = {
        "repetition_candidate": rep_cand,
        "repetition_current": mean_repetition(current),
        "repetition_base": rep_base,
        "repetition_increase": rep_cand - rep_base,
    }
    ok = rep_cand - rep_base <= max_increase
    reason = (
        f"repetition: {rep_cand:.3f} of the candidate's word {REPETITION_NGRAM}-grams repeat "
        f"(base model {rep_base:.3f}), increase {rep_cand - rep_base:.3f} "
        f"{'<=' if ok else '>'} {max_increase:.3f}"
    )
    return _decided("repetition", ok, reason, values, {"max_repetition_increase": max_increase})


def check_length(
    len_candidate: float, len_current: float, min_ratio: float, max_ratio: float
) -> Check:
    if len_current == 0:
        ratio = 1.0 if len_candidate == 0 else float("inf")
    else:
        ratio = len_candidate / len_current
    values = {
        "length_candidate": len_candidate,
        "length_current": len_current,
        "length_ratio": ratio,
    }
    ok = min_ratio <= ratio <= max_ratio
    reason = (
        f"length: candidate answers average {len_candidate:.1f} tokens vs current "
        f"{len_current:.1f} (ratio {ratio:.2f} {'inside' if ok else 'outside'} "
        f"[{min_ratio:.2f}, {max_ratio:.2f}])"
    )
    thresholds = {"min_length_ratio": min_ratio, "max_length_ratio": max_ratio}
    return _decided("length", ok, reason, values, thresholds)
