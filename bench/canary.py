"""Canary rollouts replayed on simulated traffic: does the controller roll back only bad ones?

    python bench/canary.py --replay [--runs 1000] [--worse-runs 1000] [--rate 2] [--effect -0.3]
    python bench/canary.py --live [--baseline-s 120] [--users 4] [--thumb-rate 0.3]

--live runs the real thing on the local stack (see live() below): a version users
dislike goes out as the canary under the default policy, and the stack's own controller
must roll it back; it prints how many conversations it served before that, and chat p99
latency with a canary running against without.

No stack: the decision logic is pure (serving/canary) and the traffic simulated
(serving/canary/simulate.py: Poisson arrivals, routing by hash at the step's weight, half
of the conversations ever scored, scores settling after the feedback window, the
controller every interval, the weights following its decisions). Two sets of runs:

- A/A: the canary is as good as stable. The share rolled back (by the score or a
  guardrail) is the false rollback rate; goal <= alpha (0.05). On the same data at the same
  decisions, the naive fixed-horizon z interval says how often a controller peeking at it
  would have rolled back.
- worse: the canary's scores are lower by --effect. It should be rolled back before it
  reaches 50% of the traffic, with fewer than 300 conversations served by it.

Writes bench/results/canary_replay.json (the numbers) and canary_replay.png (one run of
each kind: the canary's weight, and the score difference with its confidence sequence).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.canary.controller import Action, Reason
from serving.canary.policy import CanaryPolicy
from serving.canary.simulate import Run, Traffic, run_rng, simulate, simulate_run

RESULTS = Path(__file__).resolve().parent / "results"


def replay(args: argparse.Namespace) -> dict[str, Any]:
    """Both sets of runs; prints the summary lines and returns the numbers."""
    start = time.perf_counter()
    policy, traffic = CanaryPolicy(), Traffic(rate=args.rate)
    same = simulate(policy, traffic, 0.0, args.runs, args.seed)
    worse = simulate(policy, traffic, args.effect, args.worse_runs, args.seed + 1)
    rolled = [r for r in worse if r.rolled_back_on_evidence]
    completed = [r for r in same if r.action is Action.COMPLETE]
    numbers = {
        "effect": args.effect,
        "mean_score_difference": traffic.scores.mean(args.effect) - traffic.scores.mean(),
        "false_rollback_rate": _share(same, lambda r: r.rolled_back_on_evidence),
        "naive_false_rollback_rate": _share(same, lambda r: r.naive_rolled_back),
        "aa_runs": len(same),
        "aa_completed": len(completed),
        "aa_ended_by_max_duration": sum(r.reason is Reason.MAX_DURATION for r in same),
        "aa_median_minutes_to_complete": _median([r.ended_at / 60 for r in completed]),
        "worse_runs": len(worse),
        "worse_rolled_back": len(rolled),
        "worse_rolled_back_before_50pct": sum(r.max_weight < 0.5 for r in rolled),
        "worse_median_exposed": _median([r.exposed for r in rolled]),
        "worse_p90_exposed": _quantile([r.exposed for r in rolled], 0.9),
        "worse_median_minutes_to_rollback": _median([r.ended_at / 60 for r in rolled]),
        "worse_naive_rolled_back": sum(r.naive_rolled_back for r in worse),
        # The runs plotted: the A/A one completed nearest the median time, the worse one
        # rolled back nearest the median exposure.
        "aa_example_run": _typical(same, lambda r: r.action is Action.COMPLETE, "ended_at"),
        "worse_example_run": _typical(worse, lambda r: r.rolled_back_on_evidence, "exposed"),
    }
    numbers["runtime_s"] = round(time.perf_counter() - start, 1)
    _print(numbers)
    return numbers


def _print(n: dict[str, Any]) -> None:
    print(
        f"effect size: {n['effect']:+.3f} shift of the fused score "
        f"(mean difference {n['mean_score_difference']:+.3f} after clipping to [-1, 1])"
    )
    print(f"false rollback rate: {n['false_rollback_rate']:.3f}")
    print(f"naive test false rollbacks: {n['naive_false_rollback_rate']:.3f}")
    print(f"worse adapter rolled back: {n['worse_rolled_back']}/{n['worse_runs']}")
    print(
        f"worse adapter rolled back before 50%: "
        f"{n['worse_rolled_back_before_50pct']}/{n['worse_runs']}"
    )
    print(f"median conversations exposed before rollback: {n['worse_median_exposed']:.0f}")
    print(
        f"A/A completed: {n['aa_completed']}/{n['aa_runs']} "
        f"(median {n['aa_median_minutes_to_complete']:.0f} min), "
        f"ended by max duration: {n['aa_ended_by_max_duration']}"
    )
    print(f"runtime: {n['runtime_s']:.1f} s")


def plot(args: argparse.Namespace, numbers: dict[str, Any], path: Path) -> None:
    """The example run of each set again, traced: weights, estimate and both intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policy, traffic = CanaryPolicy(), Traffic(rate=args.rate)
    aa, worse = numbers["aa_example_run"], numbers["worse_example_run"]
    runs = {
        f"A/A run {aa}": simulate_run(policy, traffic, 0.0, run_rng(args.seed, aa), True),
        f"worse by {args.effect:+.2f}, run {worse}": simulate_run(
            policy, traffic, args.effect, run_rng(args.seed + 1, worse), True
        ),
    }
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex="col", height_ratios=(1, 2))
    for column, (title, run) in enumerate(runs.items()):
        _plot_run(axes[0, column], axes[1, column], title, run, policy)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_run(top: Any, bottom: Any, title: str, run: Run, policy: CanaryPolicy) -> None:
    minutes = [p.t / 60 for p in run.trace]
    top.step(minutes, [100 * p.weight for p in run.trace], where="post", label="canary")
    top.step(minutes, [100 * (1 - p.weight) for p in run.trace], where="post", label="stable")
    top.set(title=f"{title}: {run.action} ({run.reason})", ylabel="weight (%)", ylim=(-5, 105))
    top.legend(loc="center right")
    seq, naive = [p.sequential for p in run.trace], [p.naive for p in run.trace]
    for band, color, label in (
        (naive, "tab:orange", "naive fixed-horizon interval"),
        (seq, "tab:blue", f"{1 - policy.alpha:.0%} confidence sequence"),
    ):
        lower, upper = [i.lower for i in band], [i.upper for i in band]
        bottom.fill_between(minutes, lower, upper, alpha=0.3, color=color, label=label)
    bottom.plot(minutes, [i.estimate for i in seq], color="tab:blue", label="estimate")
    bottom.axhline(0, color="black", lw=0.8)
    bottom.axhline(-policy.margin, color="tab:red", ls="--", lw=0.8, label="-margin")
    ready = next((m for m, p in zip(minutes, run.trace, strict=True) if p.ready), None)
    if ready is not None:
        label = f"{policy.min_conversations} scored conversations per arm"
        bottom.axvline(ready, color="gray", ls=":", lw=1, label=label)
    bottom.set(xlabel="minutes", ylabel="score difference canary - stable", ylim=(-1, 1))
    bottom.legend(loc="lower right", fontsize="small")


def _typical(runs: list[Run], eligible: Callable[[Run], bool], field: str) -> int:
    """The index of the eligible run whose ``field`` is nearest the eligible runs' median."""
    chosen = [i for i, r in enumerate(runs) if eligible(r)]
    median = _median([getattr(runs[i], field) for i in chosen])
    return min(chosen, key=lambda i: abs(getattr(runs[i], field) - median))


def _share(runs: list[Run], hit: Callable[[Run], bool]) -> float:
    return sum(hit(r) for r in runs) / len(runs) if runs else math.nan


def _median(values: list[float]) -> float:
    return _quantile(values, 0.5)


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else math.nan


def live(args: argparse.Namespace) -> dict[str, Any]:
    """The local stack on its defaults (the tiny model: this measures the rollout, not
    answer quality), the stack's own canary controller and processor. Stable is a version
    the users like (``bench/canary_live.py``). Phase 1: chat load without a canary, for
    the latency baseline. Phase 2: a version they dislike goes out as the canary, as the
    trainer publishes one, under the same load, until the controller rolls it back."""
    import tempfile

    from bench.canary_live import Users, make_adapters, publish
    from bench.load import wait_served
    from livealign.config import Settings
    from livealign.stack import LocalStack
    from streaming.broker import free_port
    from trainer.registry import Registry

    home = Path(tempfile.mkdtemp(prefix="livealign-canary-"))
    settings = Settings(home=home, model="tiny", port=free_port(), trainer=False)
    with LocalStack(settings) as stack:
        base = Path(settings.cache_dir) / "tiny-llama"
        adapters = make_adapters(base, home / "adapters")
        registry = Registry(settings.registry_dir)
        good = publish(registry, adapters["good"], base)
        bad = publish(registry, adapters["zero"], base)
        registry.set_state(stable=good, action="promote", reason="bench: users like it")
        wait_served(stack.url, good)
        print(f"phase 1: {args.baseline_s:.0f} s of chat load on {good}, no canary", flush=True)
        with Users(stack.url, args.users, args.thumb_rate, args.seed) as without:
            time.sleep(args.baseline_s)
        print(f"phase 2: {bad} (disliked) goes out as the canary", flush=True)
        registry.set_state(canary=bad, action="publish", reason="bench: as the trainer does")
        started = time.time()
        with Users(stack.url, args.users, args.thumb_rate, args.seed + 1) as during:
            while registry.state().canary == bad and time.time() - started < args.timeout_s:
                time.sleep(5)
                print(f"  {time.time() - started:.0f} s, weight "
                      f"{registry.state().canary_weight:.0%}", flush=True)  # fmt: skip
        decisions = [d for d in registry.decisions() if d["canary"] == bad]
        history = [c for c in registry.state().history if c.ref == bad or c.canary == bad]
    on_canary = [c for c in during.chats if c[1] == "canary"]
    p99 = {
        "without": _quantile([c[3] for c in without.chats if c[0] == 200], 0.99),
        "with": _quantile([c[3] for c in during.chats if c[0] == 200], 0.99),
    }
    numbers = {
        "rolled_back": decisions[-1]["action"] == "rollback" if decisions else False,
        "reason": decisions[-1]["reason"] if decisions else None,
        "seconds_to_rollback": time.time() - started,
        "conversations_exposed": len(on_canary),
        "conversations_during": len(during.chats),
        "max_canary_weight": max(c.canary_weight for c in history),
        "p99_latency_without_s": p99["without"],
        "p99_latency_with_s": p99["with"],
        "p99_ratio": p99["with"] / p99["without"],
        "chat_errors": len(without.failed()) + len(during.failed()),
        "thumb_rate": args.thumb_rate,
        "decisions": decisions,
    }
    print(f"live rolled back: {numbers['rolled_back']} ({numbers['reason']}) after "
          f"{numbers['seconds_to_rollback']:.0f} s")  # fmt: skip
    print(f"live conversations exposed before rollback: {len(on_canary)} "
          f"(of {len(during.chats)} during the trial)")  # fmt: skip
    print(f"live rolled back before 50%: {numbers['max_canary_weight'] < 0.5}")
    print(f"chat p99 latency with canary / without: {numbers['p99_ratio']:.2f} "
          f"({p99['with']:.3f} s / {p99['without']:.3f} s)")  # fmt: skip
    print(f"chat errors: {numbers['chat_errors']}")
    return numbers


def plot_live(numbers: dict[str, Any], path: Path) -> None:
    """The live run's decisions: the canary's weight, and the score difference with its
    confidence sequence, over the trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decisions = numbers["decisions"]
    if not decisions:
        return
    t0 = decisions[0]["ts_ms"]
    minutes = [(d["ts_ms"] - t0) / 60_000 for d in decisions]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    # The weight each decision left in force: 0 after the rollback.
    top.step([0.0, *minutes], [0.0, *(100 * d["weight"] for d in decisions)], where="post")
    top.set_ylim(0, 100)
    top.set_ylabel("canary weight (%)")
    top.set_title(f"live: disliked canary, {numbers['reason']} after "
                  f"{numbers['conversations_exposed']} conversations")  # fmt: skip
    known = [(t, d) for t, d in zip(minutes, decisions, strict=True) if d["estimate"] is not None]
    if known:
        ts = [t for t, _ in known]
        low = [d["lower"] if d["lower"] is not None else -2.0 for _, d in known]
        high = [d["upper"] if d["upper"] is not None else 2.0 for _, d in known]
        bottom.fill_between(ts, low, high, alpha=0.3, label="95% confidence sequence")
        bottom.plot(ts, [d["estimate"] for _, d in known], marker="o", label="estimate")
    for t, d in zip(minutes, decisions, strict=True):
        if d["action"] != "hold":
            for ax in (top, bottom):
                ax.axvline(t, color="red", linestyle=":", linewidth=1)
            bottom.annotate(f"{d['action']} ({d['reason']})", (t, 1.5), ha="right")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylim(-2.0, 2.0)
    bottom.set_ylabel("score difference canary - stable")
    bottom.set_xlabel("minutes since the canary went out")
    bottom.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--replay", action="store_true", help="Simulated traffic, no stack.")
    mode.add_argument("--live", action="store_true", help="The local stack, a bad canary.")
    parser.add_argument("--baseline-s", type=float, default=120.0, help="Live: phase 1.")
    parser.add_argument("--users", type=int, default=4, help="Live: concurrent users.")
    parser.add_argument("--thumb-rate", type=float, default=0.3, help="Live: thumbs given.")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="Live: longest trial.")
    parser.add_argument("--runs", type=int, default=1000, help="A/A runs.")
    parser.add_argument("--worse-runs", type=int, default=1000, help="Runs of the worse one.")
    parser.add_argument("--rate", type=float, default=2.0, help="New conversations a second.")
    parser.add_argument("--effect", type=float, default=-0.3, help="Worse adapter's shift.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for the results.")
    args = parser.parse_args(argv)

    if args.replay:
        numbers = replay(args)
        write(args, numbers, "canary_replay")
        plot(args, numbers, args.out / "canary_replay.png")
    if args.live:
        numbers = live(args)
        write(args, numbers, "canary_live")
        plot_live(numbers, args.out / "canary_live.png")
    return 0


def write(args: argparse.Namespace, numbers: dict[str, Any], name: str) -> None:
    """The numbers with what produced them, as ``<out>/<name>.json``."""
    args.out.mkdir(parents=True, exist_ok=True)
    numbers |= {
        "policy": CanaryPolicy().model_dump(),
        "traffic": asdict(Traffic(rate=args.rate)),
        "seed": args.seed,
    }
    (args.out / f"{name}.json").write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
