"""Does the loop learn what its users prefer, and does fusing implicit feedback help?

For each fusion mode (explicit, implicit, fused), on a fresh full local stack (embedded
broker, Ray Serve + vLLM, stream processor in that mode, trainer actor):

    base answers on held-out prompts ──► R times: simulated users chat and give feedback
    (public API only) ──► processor catches up ──► the trainer actor runs a round ──► the
    new version is served ──► its answers on the held-out prompts are judged

The judge is the simulator's hidden scoring function (the population's mean utility),
which the system never sees: the win rate of a version is the share of held-out prompts
where its greedy answer beats the base model's (ties count half). Every mode gets the same
users, the same prompts and the same feedback budget (chats per round), so the x axis,
feedback events consumed, is comparable. Writes a table (Markdown + JSON) and a PNG plot.

    python bench/learning.py [--modes fused,explicit,implicit] [--rounds 2] [--chats 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import wait_served
from livealign.config import Settings
from livealign.prompts import Prompt, load_prompts, split
from livealign.simulate import SimulationConfig, Simulator, answers, win_rate
from livealign.stack import LocalStack
from livealign.users import PopulationConfig, judge, n_words
from streaming import store as s
from streaming.broker import free_port
from streaming.store import PreferenceStore
from trainer.registry import Registry

log = logging.getLogger("learning")

# Rounds sized for two CPU cores: short answers fit in 128 tokens, one reward-model epoch,
# torch may use both cores while the simulator waits, and a smaller gate. A round here
# sees a dozen or two records, so it makes three passes over them at higher learning rates
# than the defaults (made for rounds of hundreds). At 1e-3 KTO made SmolLM2 repeat itself
# within two rounds; the gate's fluency guard (anchored to the base model) stays on.
TRAINER_OVERRIDES: dict[str, Any] = {
    "min_records": 4,
    "train": {
        "max_length": 128,
        "epochs": 3.0,
        "dpo_lr": 5e-4,
        "kto_lr": 5e-4,
        "reward_epochs": 1.0,
        "num_threads": 2,
    },
    "gate": {"n_prompts": 8, "max_new_tokens": 32},
}


@dataclass
class Point:
    """One adapter version (or a round that did not publish one) of one mode."""

    mode: str
    round: int
    version: str
    outcome: str
    feedback_consumed: int
    pairs: int
    labels: int
    win_rate: float
    utility: float
    words: float
    round_s: float = 0.0


@dataclass
class Judged:
    scores: list[float]
    words: list[int]
    adapter: str


def judged(
    url: str, prompts: list[Prompt], population: PopulationConfig, max_tokens: int
) -> Judged:
    got = asyncio.run(answers(url, prompts, max_tokens))
    adapters = {a for _, a in got}
    if len(adapters) != 1:
        raise RuntimeError(f"answers came from several versions: {adapters}")
    texts = [t for t, _ in got]
    scores = [judge(t, population, p.text) for t, p in zip(texts, prompts, strict=True)]
    return Judged(scores, [n_words(t) for t in texts], adapters.pop())


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


def run_rounds(
    stack: LocalStack,
    mode: str,
    simulator: Simulator,
    run_round: Callable[[], dict[str, Any]],
    held_out: list[Prompt],
    base: Judged,
    rounds: int,
    chats: int,
) -> list[Point]:
    """The loop of one mode on a running stack: simulate, catch up, train, serve, judge."""
    population, max_tokens = simulator.config.population, simulator.config.max_tokens
    store = PreferenceStore(stack.settings.processor_config(stack.bootstrap).store_url)
    base_point = Point(mode, 0, "base", "base", 0, 0, 0, 0.5, mean(base.scores), mean(base.words))
    points, current = [base_point], base_point
    for r in range(1, rounds + 1):
        t = time.monotonic()
        stats = asyncio.run(simulator.run(chats, progress=_every(16, f"{mode} round {r}", chats)))
        log.info("%s round %d: simulated in %.0f s: %s", mode, r, time.monotonic() - t,
                 stats.summary())  # fmt: skip
        wait_caught_up(stack)
        wait_settled(store, stack.settings.settle_s)
        consumed = store.count(s.feedback)
        t = time.monotonic()
        report = run_round()
        round_s = time.monotonic() - t
        log.info("%s round %d: %s %s %s in %.0f s", mode, r, report["outcome"],
                 report.get("version") or "", report.get("reasons"), round_s)  # fmt: skip
        n_pairs, n_labels = store.count(s.pairs), store.count(s.labels)
        if report["outcome"] == "published":
            # Judged at once, as an operator would who promotes each new canary: this
            # bench measures learning; bench/canary.py measures the rollout.
            Registry(stack.settings.registry_dir).set_state(
                stable=report["version"], action="promote", reason="learning bench"
            )
            wait_served(stack.url, report["version"])
            now = judged(stack.url, held_out, population, max_tokens)
            current = Point(
                mode, r, now.adapter, "published", consumed, n_pairs, n_labels,
                win_rate(now.scores, base.scores), mean(now.scores), mean(now.words), round_s,
            )  # fmt: skip
        else:  # the served version stays: same answers, same score
            current = Point(
                mode, r, current.version, report["outcome"], consumed, n_pairs, n_labels,
                current.win_rate, current.utility, current.words, round_s,
            )  # fmt: skip
        log.info("%s round %d: %s win rate %.3f", mode, r, current.version, current.win_rate)
        points.append(current)
    return points


def run_mode(args: argparse.Namespace, mode: str, held_out: list[Prompt],
             base: Judged | None) -> tuple[list[Point], Judged]:  # fmt: skip
    home = Path(tempfile.mkdtemp(prefix=f"livealign-learning-{mode}-"))
    settings = Settings(
        home=home, model=args.model, port=free_port(), fusion_mode=mode,
        trainer=True, trainer_interval_s=1e9, trainer_min_new_records=10**9,
        trainer_overrides=TRAINER_OVERRIDES,
    )  # fmt: skip
    population = PopulationConfig(families=dict(args.family), concise_words=args.concise_words)
    with LocalStack(settings) as stack:
        if base is None:  # greedy answers of the base model: the same for every mode
            base = judged(stack.url, held_out, population, args.max_tokens)
            log.info("base: utility %.3f, %.1f words", mean(base.scores), mean(base.words))
        config = SimulationConfig(
            url=stack.url, users=args.users, concurrency=args.concurrency,
            max_tokens=args.max_tokens, seed=args.seed, population=population,
        )  # fmt: skip
        import ray

        def run_round() -> dict[str, Any]:
            report: dict[str, Any] = ray.get(stack.trainer.run_round.remote())
            return report

        points = run_rounds(
            stack, mode, Simulator(config), run_round, held_out, base, args.rounds, args.chats
        )
    return points, base


def write_results(points: list[Point], out: Path, runs: dict[str, Any]) -> None:
    """`runs`: the arguments each mode ran with."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(
        json.dumps({"runs": runs, "points": [asdict(p) for p in points]}, indent=2, default=str)
    )
    lines = [
        "| mode | round | version | outcome | feedback consumed | pairs | labels "
        "| win rate vs base | mean utility | mean words | round s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.mode} | {p.round} | {p.version} | {p.outcome} | {p.feedback_consumed} "
            f"| {p.pairs} | {p.labels} | {p.win_rate:.3f} | {p.utility:.3f} | {p.words:.1f} "
            f"| {p.round_s:.0f} |"
        )
    lines += ["", *verdict(points)]
    (out / "learning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(points, out / "learning.png")


def verdict(points: list[Point]) -> list[str]:
    """The result in words, whatever it is: the last version of each mode, compared."""
    last = {p.mode: p for p in points}  # points are in order: the last one of each mode wins
    said = [
        f"- {p.mode}: {p.version} after {p.feedback_consumed} feedback events, win rate "
        f"{p.win_rate:.3f} ({'above' if p.win_rate > 0.5 else 'not above'} 0.5)"
        for p in last.values()
    ]
    if "fused" in last and "explicit" in last:
        gap = last["fused"].win_rate - last["explicit"].win_rate
        said.append(
            f"- fused {'beats' if gap > 0 else 'does not beat'} explicit-only at the same "
            f"budget: {last['fused'].win_rate:.3f} vs {last['explicit'].win_rate:.3f} "
            f"({gap:+.3f})"
        )
    return said


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for mode in dict.fromkeys(p.mode for p in points):
        mine = [p for p in points if p.mode == mode]
        ax.plot([p.feedback_consumed for p in mine], [p.win_rate for p in mine],
                marker="o", label=mode)  # fmt: skip
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("feedback events consumed")
    ax.set_ylabel("win rate vs base (held-out prompts)")
    ax.set_ylim(0, 1)
    ax.set_title("Hidden-preference win rate of each served adapter version")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def mean(values: list[float] | list[int]) -> float:
    return statistics.fmean(values) if values else 0.0


def _every(n: int, label: str, total: int) -> Callable[[Any], None]:
    def progress(stats: Any) -> None:
        done = stats.chats - stats.regenerations + stats.errors
        if done % n == 0 or done == total:
            log.info("%s: %d/%d chats, %d feedback accepted", label, done, total, stats.accepted)

    return progress


def _family(text: str) -> tuple[str, float]:
    name, _, share = text.partition("=")
    return name, float(share or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="fused,explicit,implicit")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chats", type=int, default=160, help="Chats per round (the budget).")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--eval-prompts", type=int, default=32, help="Held-out prompts judged.")
    parser.add_argument(
        "--concise-words",
        type=lambda text: tuple(int(x) for x in text.split(",")),
        default=(10, 40),
        help="LOW,HIGH: a concise user is fully pleased at <= LOW words, not at all at >= HIGH.",
    )
    parser.add_argument(
        "--family", type=_family, action="append", help="FAMILY=SHARE; default concise=1"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--append",
        action="store_true",
        help="Keep the other modes' results already in OUT (to run the modes one at a time).",
    )
    args = parser.parse_args()
    args.family = args.family or [("concise", 1.0)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    _, held_out = split(load_prompts(), SimulationConfig().held_out_fraction)
    held_out = held_out[: args.eval_prompts]
    modes = args.modes.split(",")
    points, runs = kept_results(args.out, modes) if args.append else ([], {})
    base: Judged | None = None
    started = time.monotonic()
    for mode in modes:
        mine, base = run_mode(args, mode, held_out, base)
        points += mine
        runs[mode] = vars(args)
        write_results(points, args.out, runs)  # after each mode: a crash keeps what ran
    print(f"\n{len(modes)} modes in {(time.monotonic() - started) / 60:.1f} min")


def kept_results(out: Path, modes: list[str]) -> tuple[list[Point], dict[str, Any]]:
    """The results already in `out` of the modes not about to run (for --append)."""
    path = out / "learning.json"
    if not path.is_file():
        return [], {}
    saved = json.loads(path.read_text())
    points = [Point(**p) for p in saved["points"] if p["mode"] not in modes]
    runs = saved.get("runs") or {p.mode: saved.get("args") for p in points}
    return points, {mode: runs.get(mode) for mode in dict.fromkeys(p.mode for p in points)}


if __name__ == "__main__":
    main()
