"""The offline gate's decision rules (trainer/gate_checks.py), without any model: pairwise
judging with position swapping, the Wilson interval on the win rate, the repetition
measure, and each check's reported decision. The gate on a real (tiny) model is tested in
test_training.py."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict

import pytest

from streaming.events import ChatMessage
from trainer.config import GateConfig
from trainer.gate import GateReport
from trainer.gate_checks import (
    Check,
    ScoreJudge,
    Verdicts,
    check_fluency,
    check_length,
    check_preferences,
    check_repetition,
    check_win_rate,
    count_verdicts,
    judge_both_orders,
    mean_repetition,
    pairwise_from_scores,
    repetition,
    skipped,
    wilson_interval,
)

PROMPTS = [[ChatMessage(role="user", content=f"question {i}")] for i in range(16)]
DEFAULTS = GateConfig()


def win_rate(v: Verdicts, config: GateConfig = DEFAULTS) -> Check:
    return check_win_rate(v, config.win_rate_confidence, config.min_win_rate_lower)


# ---- the interval ------------------------------------------------------------------------


def test_wilson_interval_known_values() -> None:
    # z = 1.2816 (80% two-sided): 8/16 -> [0.347, 0.653], symmetric about 0.5.
    low, high = wilson_interval(8, 16, 0.8)
    assert (low, high) == pytest.approx((0.3474, 0.6526), abs=1e-4)
    assert wilson_interval(11, 16, 0.8) == pytest.approx((0.5275, 0.8125), abs=1e-4)
    # Not zero-width at the edges, unlike p +- z * sqrt(p(1-p)/n).
    low, high = wilson_interval(4, 4, 0.8)
    assert 0.5 < low < 1.0 and high == 1.0
    assert wilson_interval(0, 4, 0.8)[0] == 0.0
    # Wider at a higher confidence, narrower with more data.
    assert wilson_interval(8, 16, 0.95)[0] < low_at(8, 16)
    assert wilson_interval(16, 32, 0.8)[0] > low_at(8, 16)


def low_at(k: int, n: int) -> float:
    return wilson_interval(k, n, 0.8)[0]


def test_wilson_interval_without_data_says_nothing() -> None:
    assert wilson_interval(0, 0, 0.8) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4, 0.8)


def test_default_bound_fails_an_even_split_and_passes_a_clear_majority() -> None:
    """The numbers GateConfig.min_win_rate_lower's description promises."""
    assert win_rate(Verdicts(wins=8, losses=8)).decision == "failed"
    assert win_rate(Verdicts(wins=12, losses=12)).decision == "failed"
    assert win_rate(Verdicts(wins=11, losses=5)).decision == "passed"
    assert win_rate(Verdicts(wins=1)).decision == "failed"  # one lucky verdict
    # An even split fails at every count below 40 consistent verdicts.
    assert all(win_rate(Verdicts(wins=n, losses=n)).decision == "failed" for n in range(1, 20))


# ---- verdicts over both orders ---------------------------------------------------------------


class QualityJudge:
    """A judge that knows each answer's quality (its text is a number) and adds `bias` to
    the log-odds of whichever answer it is shown first, as LLM judges tend to."""

    def __init__(self, bias: float) -> None:
        self.bias = bias
        self.calls = 0

    def compare(
        self,
        prompts: Sequence[Sequence[ChatMessage]],
        firsts: Sequence[str],
        seconds: Sequence[str],
    ) -> list[float]:
        self.calls += 1
        return [
            1 / (1 + math.exp(-(float(a) - float(b) + self.bias)))
            for a, b in zip(firsts, seconds, strict=True)
        ]


def test_position_biased_judge_gets_no_wins_from_its_bias() -> None:
    # The candidate is slightly better on 12 prompts (0.5 points), clearly worse on 4 (3).
    cand = ["1.5"] * 12 + ["0.0"] * 4
    cur = ["1.0"] * 12 + ["3.0"] * 4
    biased = QualityJudge(bias=2.0)
    # Asked in one order only, the bias alone makes the candidate win 12/16 (0.75).
    one_order = biased.compare(PROMPTS, cand, cur)
    assert sum(p > 0.5 for p in one_order) == 12
    # Swapped, those 12 disagree with themselves (the judge prefers whichever is first):
    # they are recorded as inconsistent, not counted, and the 4 clear losses remain.
    v = judge_both_orders(biased, PROMPTS, cand, cur)
    assert biased.calls == 3
    assert v == Verdicts(wins=0, losses=4, ties=0, inconsistent=12)
    check = win_rate(v)
    assert check.decision == "failed"
    assert check.values["win_rate"] == 0.0
    assert check.values["n_inconsistent"] == 12 and check.values["n_consistent"] == 4
    # The same judge without its bias sees the 12 small wins.
    fair = judge_both_orders(QualityJudge(bias=0.0), PROMPTS, cand, cur)
    assert fair == Verdicts(wins=12, losses=4)
    assert win_rate(fair).decision == "passed"


def test_a_judge_that_always_prefers_the_first_answer_decides_nothing() -> None:
    v = count_verdicts([0.9] * 16, [0.9] * 16)
    assert v == Verdicts(inconsistent=16)
    check = win_rate(v)
    # No verdict: the interval is [0, 1], the check fails, and the metric stays a number.
    assert check.decision == "failed"
    assert (check.values["win_rate_low"], check.values["win_rate_high"]) == (0.0, 1.0)
    assert check.values["win_rate"] == 0.5
    assert "0/0 order-consistent wins" in check.reason


def test_count_verdicts_classifies_each_prompt() -> None:
    # win, loss, tie, position bias (first), position bias (second), tie vs preference
    cand_first = [0.8, 0.2, 0.5, 0.8, 0.2, 0.5]
    cur_first = [0.3, 0.7, 0.5, 0.7, 0.3, 0.9]
    assert count_verdicts(cand_first, cur_first) == Verdicts(1, 1, 1, 3)
    with pytest.raises(ValueError):
        count_verdicts([0.8], [])


# ---- the reward-model judge ------------------------------------------------------------------


class FakeScorer:
    def __init__(self, scores: dict[str, float], noise: float = 0.0) -> None:
        self.scores = scores
        self.noise = noise
        self.calls = 0

    def score(self, prompts: list[list[ChatMessage]], completions: list[str]) -> list[float]:
        self.calls += 1
        # Float noise that differs between batches, as padding to another width gives.
        return [self.scores[c] + self.noise * self.calls for c in completions]


def test_pairwise_from_scores() -> None:
    p = pairwise_from_scores([2.0, 0.0, 1.0], [0.0, 2.0, 0.95], margin=0.1)
    assert p[0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert p[1] == pytest.approx(1 - p[0])
    assert p[2] == 0.5  # |difference| < margin: a tie


def test_score_judge_is_order_consistent_and_ties_identical_answers() -> None:
    scorer = FakeScorer({"good": 1.0, "bad": -1.0, "same": 0.3}, noise=1e-6)
    judge = ScoreJudge(scorer, margin=DEFAULTS.reward_tie_margin)
    cand = ["good", "bad", "same", "good"]
    cur = ["bad", "good", "same", "good"]
    v = judge_both_orders(judge, PROMPTS[:4], cand, cur)
    assert v == Verdicts(wins=1, losses=1, ties=2, inconsistent=0)
    assert scorer.calls == 4  # each order scores both sides
    check = win_rate(v)
    assert check.values["n_ties"] == 2 and check.values["n_consistent"] == 2


# ---- repetition ------------------------------------------------------------------------------


def test_repetition_measure() -> None:
    assert repetition("Photosynthesis is how plants make food from light.") == 0.0
    assert repetition("1. 1. 1. 1.") == 0.5  # 2 word 3-grams, 1 of them a repeat
    assert repetition("Yes.") == 0.0  # fewer than 3 words: nothing to repeat
    assert repetition("") == 0.0
    # Case and punctuation do not hide a loop: 12 words, 10 3-grams, 3 distinct.
    assert repetition("The cat sat. the cat sat, THE CAT SAT! the cat sat") == pytest.approx(0.7)
    loop = "I am here to help. " * 8
    assert repetition(loop) > 0.8
    assert repetition("a b a b", n=2) == pytest.approx(1 / 3)
    # Averaged per answer: one loop among four fluent answers weighs a quarter.
    fluent = "The sky is blue because air scatters blue light the most."
    assert mean_repetition([loop, fluent, fluent, fluent]) == pytest.approx(repetition(loop) / 4)
    assert mean_repetition([]) == 0.0


def test_repetition_is_judged_against_the_base_model() -> None:
    base = ["go go go go go"] + ["The sky is blue because air scatters blue light."] * 3
    assert mean_repetition(base) > 0.1
    # As repetitive as the base: passes, though far from zero.
    same = check_repetition(base, base, base, max_increase=0.1)
    assert same.decision == "passed" and same.values["repetition_increase"] == 0.0
    # One more answer of four turned into a loop: fails.
    worse = ["go go go go go"] * 2 + base[2:]
    check = check_repetition(worse, base, base, max_increase=0.1)
    assert check.decision == "failed"
    assert check.values["repetition_candidate"] > check.values["repetition_base"]
    assert check.thresholds == {"max_repetition_increase": 0.1}
    assert check.reason.startswith("repetition:")


# ---- checks and the report -------------------------------------------------------------------


def test_each_check_reports_its_decision() -> None:
    pref = check_preferences(0.4, 12, min_pairs=8, min_accuracy=0.55)
    assert (pref.decision, pref.values["pref_accuracy"]) == ("failed", 0.4)
    assert pref.reason == "preference accuracy 0.400 < 0.550 on 12 held-out pairs"
    few = check_preferences(0.0, 2, min_pairs=8, min_accuracy=0.55)
    assert few.decision == "skipped" and few.values["n_pairs"] == 2
    assert few.reason == "preference accuracy: 2 held-out pairs < 8, not judged"
    fluency = check_fluency(2.0, 1.0, 1.1, max_increase=0.6)
    assert fluency.decision == "failed"
    assert fluency.values["nll_increase"] == pytest.approx(0.9)
    assert check_length(10.0, 10.0, 0.3, 2.0).decision == "passed"
    inf = check_length(5.0, 0.0, 0.3, 2.0)
    assert inf.decision == "failed" and inf.values["length_ratio"] == math.inf


def test_report_derives_reasons_and_skips_from_checks() -> None:
    checks = [
        check_preferences(0.9, 12, 8, 0.55),
        win_rate(Verdicts(wins=8, losses=8, ties=3, inconsistent=1)),
        skipped("fluency", "fluency: no held-out prompts"),
    ]
    metrics = {k: x for c in checks for k, x in c.values.items()}
    report = GateReport.of(checks, metrics)
    assert not report.passed
    assert [r.split(":")[0] for r in report.reasons] == ["win rate"]
    assert report.skipped == ["fluency: no held-out prompts"]
    # What rounds.jsonl gets: plain JSON, one entry per check.
    rows = json.loads(json.dumps([asdict(c) for c in report.checks]))
    assert [(r["name"], r["decision"]) for r in rows] == [
        ("pref_accuracy", "passed"),
        ("win_rate", "failed"),
        ("fluency", "skipped"),
    ]
    win = rows[1]
    assert win["thresholds"] == {"min_win_rate_lower": 0.4, "win_rate_confidence": 0.8}
    assert set(win["values"]) == {
        "win_rate",
        "win_rate_low",
        "win_rate_high",
        "n_consistent",
        "n_inconsistent",
        "n_ties",
    }
    assert "3 ties and 1 inconsistent not counted" in win["reason"]

    nothing = GateReport.of([skipped("pref_accuracy", "preference accuracy: no pairs")], {})
    assert not nothing.passed
    assert nothing.reasons == ["no check could run: no held-out pairs and no prompts"]
    assert GateReport.of([checks[0]], {}).passed
