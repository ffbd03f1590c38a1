"""Does the loop learn what its users prefer, and does fusing implicit feedback help?

One run is one row of the results: one preference family, one fusion mode, one seed, on a
fresh full local stack (embedded broker, Ray Serve + vLLM, the stream processor in that
mode, the trainer actor on the stack's default settings):

    base answers on held-out prompts ──► rounds until the feedback budget is spent:
    simulated users chat and give feedback (public API only) ──► processor catches up,
    every response settled ──► the trainer actor runs a round ──► a published version is
    served ──► its answers on the held-out prompts are judged

The users' feedback is the realistic mix (``livealign.users.realistic``): dwell on every
answer, copy when pleased, a thumb or rating on 12% of answers, an edit toward the
preference on 20% of the answers a user dislikes, regenerate when displeased, rare
comments, 10% adversarial users. Chats are 80-token answers sampled at temperature 0.8.
The trainer runs on the stack's defaults (Settings, TrainerConfig); only its schedule is
the bench's: the actor's own is set out of reach, and the bench calls a round each time a
batch of chats has settled.

The judge is the simulator's hidden scoring function (the population's mean utility),
which the system never sees. A version's win rate is the share of held-out prompts where
its greedy answer beats the base model's by more than 0.02; ties (within 0.02) count half.
Its 95% interval is Wilson's on that share, with n the number of prompts and a tie
counted as half a win (a tie varies less than a coin flip does, so this is a little
conservative). The bench holds out 20% of the shipped prompts, 70 of 320 (the simulated
users ask the other 250): at n = 70 the interval is 0.39-0.61 around 0.5 and 0.58-0.79
around 0.7, about +-0.11 (n = 30 gave +-0.17; halving it again would take about 280
prompts, more than the set can spare). A gap between two modes is noisier still: the goal
of 0.10 between fused and explicit-only is within the intervals of one seed, so the
verdicts average the seeds run (--seed).

A run's rows go into bench/results/learning.json, a list of objects, one per round (round
0 is the base model), each with the version served after that round and the run's
arguments. --append keeps the rows of other runs (those of the same family, mode and
seed are replaced). learning.md and learning.png are
made from all the rows in the file, with the goals' verdicts:

- fused reaches a win rate of 0.70 against the base within 2,000 feedback events, on
  every family of DEFAULT_FAMILIES;
- fused beats explicit-only by 0.10 at the same budget, on every family;
- no repetition regression: no published version repeats itself (3-gram repetition)
  more than 0.05 above the base model.

    python bench/learning.py --family summary --mode fused --seed 0 --append
    python bench/learning.py --report     # learning.md / .png again from learning.json

Time, on two CPU cores: the budget is counted in feedback events, and every answer gets
at least one (dwell), so 2,000 events are about 1,230 chats and three rounds of 400. In
the first runs 400 chats took about 4.5 minutes, judging the 70 prompts about 1 minute,
and a round 17-21 minutes on the trainer's defaults (reward model 2, teacher 1.3, DPO and
KTO 24 steps each, gate 2), so a row takes about 80 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import logging
import math
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import wait_served
from livealign.config import Settings
from livealign.prompts import Prompt, load_prompts, split
from livealign.simulate import SimulationConfig, Simulator, answers, outcomes
from livealign.stack import LocalStack
from livealign.users import FAMILIES, PopulationConfig, judge, n_words, realistic
from streaming import store as s
from streaming.broker import free_port
from streaming.store import PreferenceStore
from trainer.gate_checks import repetition, wilson_interval
from trainer.registry import Registry

log = logging.getLogger("learning")

# The families the goals are checked on. None of them is "shorter is better", and
# SmolLM2-135M-Instruct rarely does any of them by itself (its greedy 80-token answers to
# the held-out prompts: summary 0.00, bold 0.07, list 0.16 mean taste). `summary` is a
# fixed opening; `bold` depends on the question (which word is its key term); `list`
# restructures the whole answer. `bold` and `list` give partial credit that base answers
# sometimes earn, so implicit feedback carries information from the first round;
# `summary` base answers all score 0, so at first only the edits teach it.
DEFAULT_FAMILIES = ("summary", "bold", "list")
MODES = ("fused", "explicit", "implicit")
GOAL_WIN_RATE = 0.70
GOAL_EVENTS = 2000
# The last round is sized from the feedback events per chat seen so far, so a run can end
# a little over its budget: a version trained on up to 5% more still counts as within it.
BUDGET_TOLERANCE = 0.05
GOAL_GAP = 0.10  # fused over explicit-only
REPETITION_SLACK = 0.05  # most a version's mean 3-gram repetition may exceed the base's
# A remainder of the budget under this share is not worth a round (minutes of settling,
# training and judging for a handful of records).
SLIVER = 0.05


# ---- the pure parts -----------------------------------------------------------------------


def next_chats(budget: int, accepted: int, chats_done: int, chats: int) -> int:
    """Chats of the next round: `chats`, or the rest of the budget (at the feedback events
    per chat seen so far) when that is at most a quarter more; 0 when the budget is spent
    or what is left of it is a sliver."""
    remaining = budget - accepted
    if remaining <= 0 or (chats_done and remaining < SLIVER * budget):
        return 0
    if not chats_done or not accepted:
        return chats
    need = math.ceil(remaining * chats_done / accepted)
    return need if need <= chats * 5 / 4 else chats


@dataclass
class Row:
    """The version served after one round of one run (round 0: the base model)."""

    family: str
    mode: str
    seed: int
    round: int
    version: str
    outcome: str  # base | published | rejected | skipped | failed
    feedback_consumed: int  # feedback events in the store when the round trained
    feedback_accepted: int = 0  # by the API, so far in this run (the budget counts these)
    chats: int = 0  # so far in this run (regenerations not counted)
    pairs: int = 0  # in the store when the round trained
    labels: int = 0
    prompts: int = 0  # held-out prompts judged
    wins: int = 0
    ties: int = 0
    losses: int = 0
    win_rate: float = 0.5
    win_rate_low: float = 0.5
    win_rate_high: float = 0.5
    utility: float = 0.0  # mean judged utility of its held-out answers
    words: float = 0.0
    repetition: float = 0.0  # mean 3-gram repetition of its held-out answers
    round_s: float = 0.0
    elapsed_s: float = 0.0  # since the run's first chat
    # Where a row's time went: its chats, the trainer's stages (reward, teacher, policy,
    # gate, publish: the round report's seconds) and judging the version it served.
    seconds: dict[str, float] = field(default_factory=dict)
    teacher_pairs: int = 0  # the reward model's pairs trained on in this round
    reasons: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.family, self.mode, self.seed

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def merge_rows(old: Iterable[Row], new: Iterable[Row]) -> list[Row]:
    """`old` without the runs (family, mode, seed) that `new` has, then `new`."""
    new = list(new)
    replaced = {r.key for r in new}
    return [r for r in old if r.key not in replaced] + new


def load_rows(path: Path) -> list[Row]:
    """The rows in learning.json; none if there is no file or it is in the old format (an
    object of modes and points, before results were rows)."""
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if not isinstance(saved, list):
        log.warning("%s is in the old format (not a list of rows): starting over", path)
        return []
    return [Row.from_dict(r) for r in saved]


def ordered(rows: Iterable[Row]) -> list[Row]:
    """By family (DEFAULT_FAMILIES first), mode (MODES order), seed, round."""

    def key(r: Row) -> tuple[int, str, int, str, int, int]:
        fam = DEFAULT_FAMILIES.index(r.family) if r.family in DEFAULT_FAMILIES else 99
        mode = MODES.index(r.mode) if r.mode in MODES else 99
        return fam, r.family, mode, r.mode, r.seed, r.round

    return sorted(rows, key=key)


def best_rows(rows: Iterable[Row], max_events: float = math.inf) -> dict[tuple[str, str, int], Row]:
    """Per run, its best served version among the rounds trained on at most `max_events`
    feedback events: the highest win rate, and of equal ones the earliest (so the events
    it took are those of the round that published it). The base row competes too: a run
    that never beat the base has the base as its best, at 0.5 after 0 events."""
    best: dict[tuple[str, str, int], Row] = {}
    for r in rows:
        if r.feedback_consumed > max_events:
            continue
        now = best.get(r.key)
        if now is None or _rank(r) > _rank(now):
            best[r.key] = r
    return best


def _rank(r: Row) -> tuple[float, int]:
    return r.win_rate, -r.feedback_consumed


def families_of(rows: Iterable[Row]) -> list[str]:
    return list(dict.fromkeys(r.family for r in ordered(rows)))


@dataclass
class Verdict:
    goal: str
    holds: bool | None  # None: not measured (yet)
    details: list[str]


def _within(budget: int) -> float:
    return budget * (1 + BUDGET_TOLERANCE)


def goals(
    rows: list[Row], families: Iterable[str] = DEFAULT_FAMILIES, budget: int = GOAL_EVENTS
) -> list[Verdict]:
    """The three goals, each holding, not holding, or not measured on every family. Over
    several seeds a family's figure is the mean of its seeds' best versions."""
    families = list(families)
    best = best_rows(rows, _within(budget))

    def seeds(family: str, mode: str) -> dict[int, Row]:
        return {k[2]: r for k, r in best.items() if k[:2] == (family, mode)}

    win: list[_Part] = []
    gap: list[_Part] = []
    for family in families:
        fused = seeds(family, "fused")
        if not fused:
            win.append((family, None, "fused not run"))
        else:
            rate = statistics.fmean(r.win_rate for r in fused.values())
            win.append((family, rate >= GOAL_WIN_RATE, f"fused {_best_text(fused)}"))
        explicit = seeds(family, "explicit")
        both = sorted(set(fused) & set(explicit))
        if not both:
            gap.append((family, None, "fused and explicit not both run on a seed"))
        else:
            diff = statistics.fmean(fused[k].win_rate - explicit[k].win_rate for k in both)
            text = f"fused - explicit {diff:+.3f} (seeds {', '.join(map(str, both))})"
            gap.append((family, diff >= GOAL_GAP, text))

    repeat: list[_Part] = []
    base = {r.key: r.repetition for r in rows if r.round == 0}
    for key in dict.fromkeys(r.key for r in ordered(rows)):
        served = [r for r in rows if r.key == key and r.outcome == "published"]
        if key[0] not in families or not served or key not in base:
            continue
        worst = max(served, key=lambda r: r.repetition)
        rise = worst.repetition - base[key]
        text = f"worst {worst.version} {worst.repetition:.3f} vs base {base[key]:.3f} ({rise:+.3f})"
        repeat.append(("/".join(map(str, key)), rise <= REPETITION_SLACK, text))
    events = f"{budget:,}"
    return [
        _verdict(f"fused >= {GOAL_WIN_RATE:.2f} within {events} feedback events", win),
        _verdict(f"fused >= explicit-only + {GOAL_GAP:.2f} at the same budget", gap),
        _verdict(
            f"no repetition regression (3-gram repetition <= base + {REPETITION_SLACK})",
            repeat or [("any run", None, "no published version")],
        ),
    ]


_Part = tuple[str, bool | None, str]  # (family or run, holds, details)


def _verdict(goal: str, parts: list[_Part]) -> Verdict:
    held = [h for _, h, _ in parts]
    holds = False if False in held else None if None in held else True
    return Verdict(goal, holds, [f"{name}: {_word(h)}: {text}" for name, h, text in parts])


def _word(holds: bool | None) -> str:
    return {True: "holds", False: "does not hold", None: "not measured"}[holds]


def _best_text(by_seed: dict[int, Row]) -> str:
    parts = [
        f"{r.win_rate:.3f} [{r.win_rate_low:.3f}, {r.win_rate_high:.3f}] "
        f"after {r.feedback_consumed:,} events ({r.version}, seed {seed})"
        for seed, r in sorted(by_seed.items())
    ]
    if len(by_seed) > 1:
        parts.append(f"mean {statistics.fmean(r.win_rate for r in by_seed.values()):.3f}")
    return "; ".join(parts)


def summary_lines(rows: list[Row], budget: int = GOAL_EVENTS) -> list[str]:
    """Per family and mode, its best served version's win rate (interval) and the feedback
    events it took, then the goals' verdicts."""
    best = best_rows(rows, _within(budget))
    lines = []
    for family in families_of(rows):
        for mode in MODES:
            mine = {k[2]: r for k, r in best.items() if k[:2] == (family, mode)}
            if mine:
                lines.append(f"- {family} / {mode}: best {_best_text(mine)}")
    verdicts = goals(rows, budget=budget)
    every = [v.holds for v in verdicts]
    overall = (
        "all goals hold"
        if all(h is True for h in every)
        else "not all goals hold"
        if False in every
        else "not every goal is measured yet"
    )
    lines += ["", f"Goals ({', '.join(DEFAULT_FAMILIES)}): {overall}."]
    for v in verdicts:
        lines.append(f"- {v.goal}: {_word(v.holds)}")
        lines += [f"  - {d}" for d in v.details]
    return lines


def _ci(r: Row) -> str:
    return f"{r.win_rate:.3f} [{r.win_rate_low:.2f}, {r.win_rate_high:.2f}]"


def markdown(rows: list[Row], budget: int = GOAL_EVENTS) -> list[str]:
    rows = ordered(rows)
    base = {r.key: r for r in rows if r.round == 0}
    n = max((r.prompts for r in rows), default=0)
    lines = [
        "# Learning benchmark: does the loop learn what its users prefer?",
        "",
        "Made by bench/learning.py from learning.json (one row a round of each run: a "
        "family, a fusion mode, a seed). Win rate: share of the held-out prompts (n = "
        f"{n}) where a version's greedy answer beats the base model's under the hidden "
        "preference; ties (within 0.02) count half. In brackets: its 95% Wilson interval "
        "(a tie counted as half a win).",
        "",
        "| family | mode | seed | best version | win rate [95% CI] | feedback events it took "
        "| utility (base) | repetition (base) |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    for key, r in best_rows(rows, _within(budget)).items():
        b = base.get(key, r)
        lines.append(
            f"| {r.family} | {r.mode} | {r.seed} | {r.version} | {_ci(r)} "
            f"| {r.feedback_consumed:,} | {r.utility:.3f} ({b.utility:.3f}) "
            f"| {r.repetition:.3f} ({b.repetition:.3f}) |"
        )
    lines += ["", *summary_lines(rows, budget), "", "Every round:", ""]
    lines += [
        "| family | mode | seed | round | version | outcome | feedback events | chats | pairs "
        "| labels | win rate [95% CI] | utility | words | repetition | round s |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.family} | {r.mode} | {r.seed} | {r.round} | {r.version} | {r.outcome} "
            f"| {r.feedback_consumed:,} | {r.chats} | {r.pairs} | {r.labels} | {_ci(r)} "
            f"| {r.utility:.3f} | {r.words:.1f} | {r.repetition:.3f} | {r.round_s:.0f} |"
        )
    return lines + time_lines(rows)


def time_lines(rows: list[Row]) -> list[str]:
    """Per run (that recorded it), where its minutes went: chats, the trainer's stages,
    judging the served versions; `other` is the rest of the run's time (settling, the
    processor catching up, serving a new version)."""
    runs: dict[tuple[str, str, int], list[Row]] = {}
    for r in ordered(rows):
        runs.setdefault(r.key, []).append(r)
    timed = {k: rs for k, rs in runs.items() if any(r.seconds for r in rs)}
    if not timed:
        return []
    stages = list(dict.fromkeys(s for rs in timed.values() for r in rs for s in r.seconds))
    lines = [
        "",
        "Where a run's time went, minutes (the first rounds' base answers and the stack's "
        "start are before the first chat, and not counted):",
        "",
        "| family | mode | seed | run | " + " | ".join(stages) + " | other |",
        "|---|---|---:|---:|" + "---:|" * (len(stages) + 1),
    ]
    for (family, mode, seed), rs in timed.items():
        spent = {s: sum(r.seconds.get(s, 0.0) for r in rs) for s in stages}
        total = max(r.elapsed_s for r in rs)
        other = max(0.0, total - sum(spent.values()))
        cells = " | ".join(f"{spent[s] / 60:.1f}" for s in stages)
        lines.append(f"| {family} | {mode} | {seed} | {total / 60:.1f} | {cells} "
                     f"| {other / 60:.1f} |")  # fmt: skip
    return lines


# ---- the run ------------------------------------------------------------------------------


@dataclass
class Judged:
    """One version's greedy answers to the held-out prompts, judged."""

    texts: list[str]
    scores: list[float]
    words: list[int]
    repetition: list[float]
    adapter: str


def judged(
    url: str,
    prompts: list[Prompt],
    population: PopulationConfig,
    max_tokens: int,
    concurrency: int = 4,
) -> Judged:
    """The greedy answers of the version now served, judged."""
    got = asyncio.run(answers(url, prompts, max_tokens, concurrency=concurrency))
    adapters = {a for _, a in got}
    if len(adapters) != 1:
        raise RuntimeError(f"answers came from several versions: {adapters}")
    return judge_answers([t for t, _ in got], prompts, population, adapters.pop())


def judge_answers(
    texts: list[str], prompts: list[Prompt], population: PopulationConfig, adapter: str
) -> Judged:
    scores = [judge(t, population, p.text) for t, p in zip(texts, prompts, strict=True)]
    words, repeats = [n_words(t) for t in texts], [repetition(t) for t in texts]
    return Judged(texts, scores, words, repeats, adapter)


def judged_row(base_row: Row, now: Judged, base: Judged) -> Row:
    """A row's judged fields: `now` against `base`."""
    wins, ties, losses = outcomes(now.scores, base.scores)
    n = len(now.scores)
    low, high = wilson_interval(wins + ties / 2, n, 0.95)
    return dataclasses.replace(
        base_row, version=now.adapter, prompts=n, wins=wins, ties=ties, losses=losses,
        win_rate=(wins + ties / 2) / n, win_rate_low=low, win_rate_high=high,
        utility=mean(now.scores), words=mean(now.words), repetition=mean(now.repetition),
    )  # fmt: skip


def wait_settled(store: PreferenceStore, settle_s: float) -> None:
    """Until every response's feedback window has closed, so its records are made."""
    deadline = time.monotonic() + settle_s + 120
    while store.unsettled():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{store.unsettled()} responses still unsettled")
        time.sleep(1.0)


def wait_caught_up(stack: LocalStack, timeout: float = 300.0) -> None:
    """Until the processor's lag is 0 on every partition, twice in a row, 1 s apart."""
    deadline, zero_in_a_row = time.monotonic() + timeout, 0
    while zero_in_a_row < 2:
        stack.supervise()  # a dead processor is restarted (on a new metrics port)
        url = f"http://127.0.0.1:{stack.processor_metrics_port}/metrics"
        if time.monotonic() > deadline:
            raise TimeoutError("the processor did not catch up")
        try:
            text = httpx.get(url, timeout=10).text
        except httpx.HTTPError:  # (re)starting: its metrics port is not up yet
            text = ""
        lags = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("livealign_processor_lag{")
        ]
        zero_in_a_row = zero_in_a_row + 1 if lags and max(lags) == 0 else 0
        time.sleep(1.0)


def family_label(population: PopulationConfig) -> str:
    """The rows' name of the population: its family ("summary"), or its mixture
    ("summary=0.7,list=0.3")."""
    shares = population.families
    if len(shares) == 1:
        return next(iter(shares))
    return ",".join(f"{f}={v:g}" for f, v in shares.items())


def run_rounds(
    stack: LocalStack,
    mode: str,
    simulator: Simulator,
    run_round: Callable[[], dict[str, Any]],
    held_out: list[Prompt],
    base: Judged,
    *,
    chats: int,
    budget: int,
    args: dict[str, Any] | None = None,
    on_round: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """The loop of one run on a running stack: simulate, catch up, train, serve, judge,
    until `budget` feedback events were accepted (rounds of `chats` chats, the last one
    sized to the rest of the budget). `on_round` gets the rows so far after each round
    (a run stopped midway keeps its finished rounds)."""
    config = simulator.config
    population, max_tokens = config.population, config.max_tokens
    store = PreferenceStore(stack.settings.processor_config(stack.bootstrap).store_url)
    started = time.monotonic()
    empty = Row(family_label(population), mode, config.seed, 0, "base", "base", 0,
                args=args or {})  # fmt: skip
    current = judged_row(empty, base, base)
    current = dataclasses.replace(current, win_rate_low=0.5, win_rate_high=0.5)  # itself
    rows, accepted, done = [current], 0, 0
    label = f"{current.family}/{mode}/seed {config.seed}"
    log.info("%s: chatting until %d feedback events are accepted, %d chats a round; base "
             "utility %.3f, %.1f words, repetition %.3f", label, budget, chats, current.utility,
             current.words, current.repetition)  # fmt: skip
    for r in itertools.count(1):
        n = next_chats(budget, accepted, done, chats)
        if n == 0:
            break
        t = time.monotonic()
        progress = _every(32, f"{label} round {r}", n, accepted, budget)
        stats = asyncio.run(simulator.run(n, progress=progress))
        done, accepted = done + n, accepted + stats.accepted
        seconds = {"chats": time.monotonic() - t}
        log.info("%s round %d: %d chats simulated in %.0f s, %d feedback accepted of %d: %s",
                 label, r, n, seconds["chats"], accepted, budget,
                 stats.summary())  # fmt: skip
        if stats.accepted == 0:
            raise RuntimeError(f"round {r}: no feedback accepted ({stats.errors} chat errors)")
        wait_caught_up(stack)
        wait_settled(store, stack.settings.settle_s)
        consumed = store.count(s.feedback)
        t = time.monotonic()
        report = run_round()
        round_s = time.monotonic() - t
        seconds.update(report.get("seconds") or {})
        log.info("%s round %d: %s %s %s in %.0f s (%s)", label, r, report["outcome"],
                 report.get("version") or "", report.get("reasons"), round_s,
                 ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))  # fmt: skip
        current = dataclasses.replace(
            current, round=r, outcome=report["outcome"], feedback_consumed=consumed,
            feedback_accepted=accepted, chats=done, pairs=store.count(s.pairs),
            labels=store.count(s.labels), round_s=round_s,
            reasons=[str(x) for x in report.get("reasons") or []], seconds=seconds,
            teacher_pairs=int((report.get("teacher") or {}).get("pairs") or 0),
        )  # fmt: skip
        if report["outcome"] == "published":
            # Judged at once, as an operator would who promotes each new canary: this
            # bench measures learning; bench/canary.py measures the rollout.
            Registry(stack.settings.registry_dir).set_state(
                stable=report["version"], action="promote", reason="learning bench"
            )
            wait_served(stack.url, report["version"])
            t = time.monotonic()
            now = judged(stack.url, held_out, population, max_tokens, config.concurrency)
            current = judged_row(current, now, base)
            seconds["judge"] = time.monotonic() - t
        # else the served version stays: same answers, same judgment
        current = dataclasses.replace(current, elapsed_s=time.monotonic() - started)
        log.info("%s round %d: %s win rate %s, repetition %.3f (base %.3f)", label, r,
                 current.version, _ci(current), current.repetition,
                 rows[0].repetition)  # fmt: skip
        rows.append(current)
        if on_round is not None:
            on_round(rows)
    return rows


def run_mode(
    args: argparse.Namespace, mode: str, held_out: list[Prompt], base: list[str] | None,
    run_args: dict[str, Any], on_round: Callable[[list[Row]], None] | None = None,
) -> tuple[list[Row], list[str]]:  # fmt: skip
    """One run on a fresh stack; `base`: the base model's held-out answers, if known (the
    same for every mode: greedy answers of the same model)."""
    home = Path(tempfile.mkdtemp(prefix=f"livealign-learning-{mode}-"))
    # The stack's defaults, trainer included; only its schedule is the bench's: no round
    # on its own (interval and record count out of reach), the bench calls each one.
    settings = Settings(
        home=home, model=args.model, port=free_port(), fusion_mode=mode,
        trainer=True, trainer_interval_s=1e9, trainer_min_new_records=10**9,
    )  # fmt: skip
    population = realistic(args.family, concise_words=args.concise_words)
    with LocalStack(settings) as stack:
        if base is None:
            got = judged(stack.url, held_out, population, args.max_tokens, args.concurrency)
            base = got.texts
        base_judged = judge_answers(base, held_out, population, "base")
        config = SimulationConfig(
            url=stack.url, users=args.users, concurrency=args.concurrency,
            max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
            held_out_fraction=args.held_out_fraction, population=population,
        )  # fmt: skip
        import ray

        def run_round() -> dict[str, Any]:
            ref = stack.trainer.run_round.remote()
            # Waited for in short steps: a signal's handler runs between them (a plain
            # ray.get would hold SIGINT and SIGTERM until the round ends, ~25 minutes).
            while not ray.wait([ref], timeout=5.0)[0]:
                pass
            report: dict[str, Any] = ray.get(ref)
            return report

        rows = run_rounds(
            stack, mode, Simulator(config), run_round, held_out, base_judged,
            chats=args.chats, budget=args.budget, args={**run_args, "mode": mode},
            on_round=on_round,
        )  # fmt: skip
    return rows, base


# ---- the report ---------------------------------------------------------------------------


def write_results(rows: list[Row], out: Path, budget: int = GOAL_EVENTS) -> None:
    """learning.json (every row), learning.md (tables and verdicts), learning.png."""
    out.mkdir(parents=True, exist_ok=True)
    rows = ordered(rows)
    path = out / "learning.json"
    tmp = path.with_suffix(".json.tmp")  # a crash mid-write keeps the rows already there
    tmp.write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str) + "\n")
    tmp.replace(path)
    lines = markdown(rows, budget)
    (out / "learning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(summary_lines(rows, budget)))
    plot(rows, out / "learning.png", budget)


def plot(rows: list[Row], path: Path, budget: int = GOAL_EVENTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = families_of(rows)
    if not families:
        return
    width = max(4.6 * len(families), 7.5)  # room for the title with one family too
    fig, axes = plt.subplots(1, len(families), figsize=(width, 4.2), dpi=110, squeeze=False,
                             sharey=True)  # fmt: skip
    colors = {"fused": "tab:blue", "explicit": "tab:orange", "implicit": "tab:green"}
    for ax, family in zip(axes[0], families, strict=True):
        mine = [r for r in ordered(rows) if r.family == family]
        runs = list(dict.fromkeys(r.key for r in mine))
        seeds = {k[2] for k in runs}
        for i, key in enumerate(runs):
            run = [r for r in mine if r.key == key]
            x = [r.feedback_consumed + 15 * (i % 3) for r in run]  # bars side by side
            y = [r.win_rate for r in run]
            err = [[r.win_rate - r.win_rate_low for r in run],
                   [r.win_rate_high - r.win_rate for r in run]]  # fmt: skip
            label = key[1] if len(seeds) == 1 else f"{key[1]} seed {key[2]}"
            marker = "os^vD"[sorted(seeds).index(key[2]) % 5]
            ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=label,
                        color=colors.get(key[1]), alpha=0.9)  # fmt: skip
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.axhline(GOAL_WIN_RATE, color="grey", linestyle="--", linewidth=1)
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1)
        most = max(r.feedback_consumed for r in mine)
        ax.set_xlim(-0.03 * budget, max(1.08 * budget, 1.03 * most))
        ax.set_title(family)
        ax.set_xlabel("feedback events consumed")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("win rate vs base, 95% interval")
    fig.suptitle("Hidden-preference win rate of each served version (held-out prompts)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def mean(values: list[float] | list[int]) -> float:
    return statistics.fmean(values) if values else 0.0


def _every(n: int, label: str, total: int, before: int, budget: int) -> Callable[[Any], None]:
    def progress(stats: Any) -> None:
        done = stats.chats - stats.regenerations + stats.errors
        if done % n == 0 or done == total:
            log.info("%s: %d/%d chats, %d feedback accepted (%d of the budget %d)", label,
                     done, total, stats.accepted, before + stats.accepted, budget)  # fmt: skip

    return progress


def parse_family(text: str) -> dict[str, float]:
    """--family: a family ("summary") or a mixture ("summary=0.7,list=0.3"; the shares
    are normalized by PopulationConfig)."""
    shares: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.strip().partition("=")
        if name not in FAMILIES:
            raise argparse.ArgumentTypeError(f"{name!r}: not one of {', '.join(FAMILIES)}")
        try:
            shares[name] = float(share or 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: expected FAMILY or FAMILY=SHARE") from None
    return shares


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise argparse.ArgumentTypeError(f"{m!r}: not one of {', '.join(MODES)}")
    return modes


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arg = parser.add_argument
    arg("--family", type=parse_family, default=DEFAULT_FAMILIES[0],
        help=f"One of {', '.join(FAMILIES)} (the goals are checked on "
        f"{', '.join(DEFAULT_FAMILIES)}), or a mixture FAMILY=SHARE,... "
        f"Default: {DEFAULT_FAMILIES[0]}.")  # fmt: skip
    arg("--mode", "--modes", dest="modes", type=parse_modes, default="fused",
        help="fused, explicit or implicit; several, comma-separated, run one after the "
        "other (each on a fresh stack).")  # fmt: skip
    arg("--seed", type=int, default=0, help="Seeds users, prompts, sampling.")
    arg("--budget", type=int, default=GOAL_EVENTS,
        help="Feedback events (accepted by the API) to chat for.")  # fmt: skip
    arg("--chats", type=int, default=400, help="Chats per round.")
    arg("--users", type=int, default=60)
    arg("--concurrency", type=int, default=8, help="Chats in flight at once.")
    arg("--max-tokens", type=int, default=80, help="Answer length limit.")
    arg("--temperature", type=float, default=0.8, help="Of the users' chats.")
    arg("--held-out-fraction", type=float, default=0.2,
        help="Prompts the users never ask, judged (0.2: 70 of 320).")  # fmt: skip
    arg("--eval-prompts", type=int, default=0,
        help="Judge only the first N held-out prompts (0: all).")  # fmt: skip
    arg("--concise-words", type=lambda text: tuple(int(x) for x in text.split(",")),
        default=(10, 40),
        help="LOW,HIGH: a concise user is fully pleased at <= LOW words, not at all at "
        ">= HIGH.")  # fmt: skip
    arg("--model", default="smollm2")
    arg("--out", type=Path, default=Path("bench/results"))
    arg("--append", action="store_true",
        help="Keep the other runs' rows in OUT/learning.json (the same family, mode and "
        "seed: replaced). Without it the file holds this run's rows only.")  # fmt: skip
    arg("--report", action="store_true",
        help="Run nothing: learning.md and .png again from learning.json.")  # fmt: skip
    args = parser.parse_args()  # (string defaults go through `type` too)
    # SIGTERM unwinds like Ctrl-C, so the stack (broker, Ray, processor) is stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    path = args.out / "learning.json"
    if args.report:
        rows = load_rows(path)
        if not rows:
            raise SystemExit(f"{path}: no rows to report")
        write_results(rows, args.out, args.budget)
        return
    _, held_out = split(load_prompts(), args.held_out_fraction)
    held_out = held_out[: args.eval_prompts or None]
    run_args = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "eval_prompts": len(held_out),
        "commit": _commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    rows = load_rows(path) if args.append else []
    base: list[str] | None = None
    started = time.monotonic()
    for mode in args.modes:
        before = rows

        def partial(so_far: list[Row], before: list[Row] = before) -> None:
            write_results(merge_rows(before, so_far), args.out, args.budget)

        # Written after each round: a run stopped midway keeps its finished rounds.
        mine, base = run_mode(args, mode, held_out, base, run_args, partial)
        rows = merge_rows(rows, mine)
        write_results(rows, args.out, args.budget)
    print(f"\n{len(args.modes)} run(s) in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
