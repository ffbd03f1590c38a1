"""bench/learning.py's pure parts (the interval, repetition, round sizing, rows merged for
--append, best versions, the goals' verdicts, the report) and its loop on fakes: no stack.
The loop on the real stack is tests/integration/test_simulate_learning_run.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import bench.learning as bench
from bench.learning import (
    Judged,
    Row,
    best_rows,
    goals,
    load_rows,
    markdown,
    merge_rows,
    next_chats,
    parse_family,
    parse_modes,
    repetition,
    summary_lines,
    write_results,
)
from livealign.prompts import Prompt
from livealign.simulate import SimulationConfig, outcomes, win_rate
from livealign.users import PopulationConfig
from trainer.gate_checks import wilson_interval


def row(family: str, mode: str, rnd: int, rate: float, events: int, seed: int = 0,
        **kw: Any) -> Row:  # fmt: skip
    version = "base" if rnd == 0 else kw.pop("version", f"livealign@{rnd}")
    outcome = "base" if rnd == 0 else kw.pop("outcome", "published")
    return Row(family, mode, seed, rnd, version, outcome, events, win_rate=rate,
               win_rate_low=rate - 0.1, win_rate_high=rate + 0.1, prompts=70, **kw)  # fmt: skip


def run(family: str, mode: str, rates: list[float], seed: int = 0, step: int = 700,
        repeat: float = 0.02) -> list[Row]:  # fmt: skip
    """A run: the base, then one published version a round."""
    rows = [row(family, mode, 0, 0.5, 0, seed, repetition=0.02)]
    for i, rate in enumerate(rates, 1):
        rows.append(row(family, mode, i, rate, step * i, seed, repetition=repeat))
    return rows


# ---- the interval ------------------------------------------------------------------------


def test_wilson_interval() -> None:
    low, high = wilson_interval(35, 70, 0.95)  # 0.5 on the bench's 70 held-out prompts: +-0.114
    assert low == pytest.approx(0.386, abs=1e-3) and high == pytest.approx(0.614, abs=1e-3)
    low, high = wilson_interval(15, 30, 0.95)  # on 30 prompts: +-0.17
    assert high - low == pytest.approx(0.337, abs=1e-3)
    low, high = wilson_interval(49, 70, 0.95)  # 0.7: the goal, [0.585, 0.795]
    assert (round(low, 3), round(high, 3)) == (0.585, 0.795)
    assert wilson_interval(0, 10, 0.95)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(
        10, 10, 0.95
    )[1] == pytest.approx(1.0)
    assert (
        0.0 < wilson_interval(0, 10, 0.95)[1] < 0.35 and wilson_interval(10, 10, 0.95)[0] > 0.65
    )  # never a point
    assert (
        wilson_interval(10, 20, 0.95)
        < wilson_interval(10.5, 20, 0.95)
        < wilson_interval(11, 20, 0.95)
    )  # a tie: half a win
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)  # no prompt judged says nothing


def test_outcomes_and_win_rate_agree_and_ties_count_half() -> None:
    candidate, baseline = [0.9, 0.1, 0.5, 0.51, 0.0], [0.1, 0.9, 0.5, 0.5, 0.0]
    assert outcomes(candidate, baseline) == (1, 3, 1)  # 0.51 vs 0.5: within the tie band
    assert win_rate(candidate, baseline) == pytest.approx((1 + 3 / 2) / 5)
    with pytest.raises(ValueError):
        outcomes([], [])


def test_repetition() -> None:
    assert repetition("Photosynthesis turns light into sugar in the leaves.") == 0.0
    assert repetition("1. 1. 1. 1. 1. 1. 1. 1.") == pytest.approx(1 - 1 / 6)
    assert repetition("Yes, it is.") == 0.0  # one 3-gram: nothing to repeat
    assert repetition("the cat sat " * 10) == pytest.approx(1 - 3 / 28)
    assert repetition("The robot was tasked. The robot was tasked.") == pytest.approx(2 / 6)
    assert repetition("**Bold** - words") == repetition("Bold words") == 0.0
    assert repetition("") == 0.0


# ---- round sizing ------------------------------------------------------------------------


def test_rounds_are_sized_to_spend_the_budget() -> None:
    assert next_chats(2000, 0, 0, 400) == 400  # first round: no rate yet
    assert next_chats(2000, 650, 400, 400) == 400  # 1.6 events a chat: 831 chats to go
    assert next_chats(2000, 1300, 800, 400) == 431  # the rest, a little more than a round
    assert next_chats(2000, 1500, 400, 400) == 134  # the rest, less than a round
    assert next_chats(2000, 1950, 1200, 400) == 0  # 50 left: a sliver, not worth a round
    assert next_chats(2000, 2000, 1231, 400) == 0 and next_chats(2000, 2100, 1300, 400) == 0
    assert next_chats(1, 0, 0, 24) == 24 and next_chats(1, 5, 24, 24) == 0  # one round


# ---- rows ----------------------------------------------------------------------------------


def test_append_replaces_the_same_run_and_keeps_the_others(tmp_path: Path) -> None:
    old = run("summary", "fused", [0.6]) + run("summary", "explicit", [0.55])
    new = run("summary", "fused", [0.7, 0.8])
    merged = merge_rows(old, new)
    assert [(r.mode, r.round) for r in merged] == [
        ("explicit", 0), ("explicit", 1), ("fused", 0), ("fused", 1), ("fused", 2)
    ]  # fmt: skip
    assert merge_rows(old, run("summary", "fused", [0.7], seed=1))[:4] == old  # a new seed
    # Through the file: rows go in and come back out as they were.
    write_results(merged, tmp_path)
    assert load_rows(tmp_path / "learning.json") == bench.ordered(merged)
    assert (tmp_path / "learning.md").is_file() and (tmp_path / "learning.png").stat().st_size
    saved = json.loads((tmp_path / "learning.json").read_text())
    schema = {"family", "mode", "seed", "version", "round", "outcome", "feedback_consumed",
              "win_rate", "win_rate_low", "win_rate_high", "pairs", "labels", "utility",
              "words", "repetition", "round_s", "args"}  # fmt: skip
    assert isinstance(saved, list) and schema <= set(saved[0])
    # The old format (an object of runs and points) is not rows: starting over.
    (tmp_path / "learning.json").write_text(json.dumps({"runs": {}, "points": []}))
    assert load_rows(tmp_path / "learning.json") == []
    assert load_rows(tmp_path / "missing.json") == []


def test_best_version_is_the_highest_earliest_within_the_budget() -> None:
    rows = run("bold", "fused", [0.6, 0.75, 0.8])  # at 700, 1400, 2100 events
    rejected = row("bold", "fused", 4, 0.75, 2050, version="livealign@2", outcome="rejected")
    best = best_rows([*rows[:3], rejected, rows[3]], max_events=2100)
    assert best[("bold", "fused", 0)].round == 3
    best = best_rows([*rows[:3], rejected], max_events=2100)
    assert best[("bold", "fused", 0)].feedback_consumed == 1400  # when it was published
    assert best_rows(rows, max_events=1000)[("bold", "fused", 0)].round == 1
    never = run("list", "implicit", [0.4, 0.45])
    assert best_rows(never)[("list", "implicit", 0)].version == "base"  # 0.5 after 0 events


# ---- the goals -----------------------------------------------------------------------------


def test_goals_hold_fail_or_are_not_measured() -> None:
    families = ("summary", "bold")
    rows = (
        run("summary", "fused", [0.65, 0.78]) + run("summary", "explicit", [0.6, 0.62])
        + run("bold", "fused", [0.72]) + run("bold", "explicit", [0.55])
    )  # fmt: skip
    win, gap, repeat = goals(rows, families)
    assert (win.holds, gap.holds, repeat.holds) == (True, True, True)
    assert "0.780 [0.680, 0.880] after 1,400 events (livealign@2, seed 0)" in win.details[0]
    # A version past the budget does not count: 2,250 > 2,000 and 5%.
    late = run("bold", "fused", [0.6, 0.65, 0.9], step=750) + run("bold", "explicit", [0.5])
    win, gap, _ = goals(rows[:6] + late, families)
    assert win.holds is False and "bold: does not hold" in win.details[1]
    # Fused wins but not by 0.10 over explicit-only.
    close = run("bold", "fused", [0.72]) + run("bold", "explicit", [0.68])
    assert goals(rows[:6] + close, families)[1].holds is False
    # A family not run yet: not measured (and not held).
    win, gap, repeat = goals(rows[:6], families)
    assert (win.holds, gap.holds) == (None, None) and "bold: not measured" in win.details[1]
    # Seeds: the mean of their best versions; the gap over the seeds both modes ran.
    seeds = rows + run("summary", "fused", [0.64], seed=1)
    win, gap, _ = goals(seeds, families)
    assert win.holds is True and "mean 0.710" in win.details[0]  # (0.78 + 0.64) / 2
    assert "seeds 0)" in gap.details[0]
    # A version that repeats itself more than the base by 0.05: a regression.
    repeats = run("summary", "fused", [0.8], repeat=0.09)
    assert goals(repeats + rows[3:], families)[2].holds is False


def test_summary_and_markdown_say_it_per_family_and_mode() -> None:
    rows = run("summary", "fused", [0.65, 0.78]) + run("summary", "explicit", [0.6])
    lines = summary_lines(rows)
    assert lines[0].startswith("- summary / fused: best 0.780 [0.680, 0.880] after 1,400")
    assert lines[1].startswith("- summary / explicit: best 0.600")
    assert "Goals (summary, bold, list): not every goal is measured yet." in lines
    text = "\n".join(markdown(rows))
    assert "| summary | fused | 0 | livealign@2 | 0.780 [0.68, 0.88] | 1,400 |" in text
    assert "(n = 70)" in text and "Every round:" in text
    assert "Where a run's time went" not in text  # no run recorded it


def test_markdown_says_where_a_runs_time_went() -> None:
    rows = run("summary", "fused", [0.65, 0.78])
    for r, (chats, policy) in zip(rows[1:], [(120.0, 600.0), (240.0, 660.0)], strict=True):
        r.seconds = {"chats": chats, "policy": policy}
        r.elapsed_s = 1800.0 * r.round
    text = "\n".join(markdown(rows))
    # 6 + 21 min of 60: the other 33 are settling, catching up, serving.
    assert "| family | mode | seed | run | chats | policy | other |" in text
    assert "| summary | fused | 0 | 60.0 | 6.0 | 21.0 | 33.0 |" in text


def test_command_line_families_and_modes() -> None:
    import argparse

    assert parse_family("bold") == {"bold": 1.0}
    assert parse_family("summary=0.7,list=0.3") == {"summary": 0.7, "list": 0.3}
    assert parse_modes("fused,explicit") == ["fused", "explicit"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_family("shouty")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_modes("fused,both")
    assert bench.family_label(PopulationConfig(families={"summary": 0.7, "list": 0.3})) == (
        "summary=0.7,list=0.3"
    )


# ---- the loop, on fakes ----------------------------------------------------------------------


@dataclass
class FakeStats:
    accepted: int
    chats: int = 0
    regenerations: int = 0
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        return {"feedback_accepted": self.accepted}


@dataclass
class FakeSimulator:
    """1.6 feedback events a chat."""

    config: SimulationConfig
    counts: dict[str, int]
    asked: list[int] = field(default_factory=list)

    async def run(self, chats: int, progress: Any = None) -> FakeStats:
        self.asked.append(chats)
        self.counts["feedback"] += int(chats * 1.6)  # the processor stores them all
        return FakeStats(accepted=int(chats * 1.6), chats=chats)


class FakeStore:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def count(self, table: Any) -> int:
        return self.counts[table.name]


def test_loop_spends_the_budget_in_rounds_and_judges_what_it_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = {"feedback": 0, "pairs": 0, "labels": 0}
    promoted: list[str] = []
    monkeypatch.setattr(bench, "PreferenceStore", lambda url: FakeStore(counts))
    monkeypatch.setattr(bench, "wait_caught_up", lambda stack: None)
    monkeypatch.setattr(bench, "wait_settled", lambda store, settle_s: None)
    monkeypatch.setattr(bench, "wait_served", lambda url, version: None)

    class FakeRegistry:
        def __init__(self, path: Any) -> None: ...

        def set_state(self, stable: str, **kw: Any) -> None:
            promoted.append(stable)

    monkeypatch.setattr(bench, "Registry", FakeRegistry)
    prompts = [Prompt(f"p{i}", "x", f"prompt {i}") for i in range(4)]
    base = Judged(["b"] * 4, [0.0] * 4, [10] * 4, [0.01] * 4, "base")
    served = {"livealign@1": [1.0, 1.0, 0.0, 0.01], "livealign@2": [1.0, 1.0, 1.0, 0.0]}
    monkeypatch.setattr(bench, "judged", lambda url, ps, pop, mt, c=4: Judged(
        ["a"] * 4, served[promoted[-1]], [12] * 4, [0.03] * 4, promoted[-1]))  # fmt: skip
    reports: Iterator[dict[str, Any]] = iter([
        {"outcome": "published", "version": "livealign@1",
         "seconds": {"reward": 60.0, "policy": 300.0}, "teacher": {"pairs": 12}},
        {"outcome": "rejected", "reasons": ["fluency"], "teacher": None},
        {"outcome": "published", "version": "livealign@2"},
    ])  # fmt: skip

    def run_round() -> dict[str, Any]:
        counts["labels"] += 100
        return next(reports)

    class Settings:
        settle_s = 0.0
        registry_dir = "reg"

        def processor_config(self, bootstrap: str) -> Any:
            return type("P", (), {"store_url": "sqlite://"})()

    stack: Any = type("Stack", (), {"settings": Settings(), "bootstrap": "", "url": "u"})()
    population = PopulationConfig(families={"summary": 1.0})
    simulator = FakeSimulator(SimulationConfig(population=population, seed=3), counts)
    rows = bench.run_rounds(stack, "fused", simulator, run_round, prompts, base,  # type: ignore[arg-type]
                            chats=400, budget=2000, args={"x": 1})  # fmt: skip
    assert simulator.asked == [400, 400, 450]  # 640 + 640 + 720 = 2,000 events
    assert [(r.round, r.version, r.outcome) for r in rows] == [
        (0, "base", "base"), (1, "livealign@1", "published"),
        (2, "livealign@1", "rejected"), (3, "livealign@2", "published"),
    ]  # fmt: skip
    assert rows[0].win_rate == rows[0].win_rate_low == rows[0].win_rate_high == 0.5
    first, rejected, last = rows[1:]
    assert (first.wins, first.ties, first.losses) == (2, 2, 0) and first.win_rate == 0.75
    assert first.win_rate_low < 0.75 < first.win_rate_high
    assert rejected.win_rate == 0.75 and rejected.reasons == ["fluency"]  # still @1 served
    assert rejected.feedback_consumed == 1280 and rejected.chats == 800
    assert last.win_rate == 0.875 and last.feedback_accepted == 2000 and last.labels == 300
    assert {r.family for r in rows} == {"summary"} and {r.seed for r in rows} == {3}
    assert rows[0].repetition == 0.01 and last.repetition == 0.03 and last.args == {"x": 1}
    assert promoted == ["livealign@1", "livealign@2"]
    # Where the time went: the trainer's stages as reported, chats and judging measured.
    assert {"chats", "reward", "policy", "judge"} == set(first.seconds)
    assert first.seconds["policy"] == 300.0 and first.teacher_pairs == 12
    assert "judge" not in rejected.seconds and rejected.teacher_pairs == 0
