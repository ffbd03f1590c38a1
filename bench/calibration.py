"""Do calibrated implicit-signal weights track each signal's true predictiveness?

Simulated users (``livealign.users``) read answers whose hidden utility they perceive with
noise, and react at realistic rates: dwell on every answer, copy when pleased (30% when
fully pleased), a thumb on 12% of answers, an edit on 20% of the displeasing ones,
regenerate with 0.3 x displeasure (the regenerated answer is a new response, as in
``livealign.simulate``). Two clicks the users in ``livealign.users`` never make are
added: ``link``, a little more likely when pleased (weakly informative), and ``share``, at
random (pure noise). Two populations: answers whose utility spreads over [0, 1]
("balanced"), and answers most users dislike ("mostly disliked", as long answers from a
small model were for the users who want them short).

Each response's signals go through the processor's own path (``signal_from_event``,
``Fuser.observe``, ``Fuser.calibrate`` once the response settles, then ``Fuser.fuse``
for its label), with three calibration targets: ``votes`` (thumbs only), ``explicit``
(votes and edits: the default) and ``every`` (votes, edits and regenerate clicks). The
stream is the same for all three. Prints each signal's calibrated weight next to its
true predictiveness, the correlation of its value (0 when absent) with the hidden utility
in the same run, and the training labels made (how many, how many right about the hidden
utility, how many of them without any vote); writes bench/results/calibration.json and a
PNG plot of weight against responses seen. No broker, no model: seconds on one core.

    python bench/calibration.py [--responses 1000] [--seed 0] [--adversarial 0.0]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from livealign.users import Action, PopulationConfig, SimUser, make_users
from streaming.events import ChatMessage, FeedbackEvent, FeedbackKind, InteractionEvent
from streaming.fusion import Fused, Fuser, FusionConfig, Signal, signal_from_event
from streaming.records import RecordConfig

RESULTS = Path(__file__).resolve().parent / "results"
IMPLICIT = ("dwell", "copy", "regenerate", "link", "share")

# The rates a real deployment showed (see the module docstring). Only "concise" users:
# their utility is a plain function of an answer's length, so answers of random length
# spread it over [0, 1].
REALISTIC = PopulationConfig(
    families={"concise": 1.0},
    adversarial_share=0.0,
    explicit_rate=0.12,
    thumb_share=1.0,
    edit_rate=0.2,
    comment_rate=0.0,
    dwell_rate=1.0,
    copy_rate=0.3,
    regenerate_rate=0.3,
)
LINK_RATE = (0.05, 0.15)  # a link click: base rate + this much more when fully pleased
SHARE_RATE = 0.2  # a share click, whatever the answer
READING = FusionConfig()  # how events become signals (the same in every run)
LABELS = RecordConfig()  # when a fused score makes a training label


# Calibration targets: outcome weights changed from the defaults.
TARGETS: dict[str, dict[str, float]] = {
    "votes": {"edit": 0.0, "regenerate": 0.0},
    "explicit": {"regenerate": 0.0},
    "every": {"regenerate": 0.5},
}
# Populations: the word counts answers are drawn from (utility 1 at 10 words or fewer, 0
# at 40 or more).
POPULATIONS: dict[str, tuple[int, int]] = {"balanced": (5, 45), "mostly disliked": (25, 60)}


def targets(kind: str) -> FusionConfig:
    """The fusion config of calibration target ``kind`` (see ``TARGETS``)."""
    weights = {**FusionConfig().calibration_outcome_weights, **TARGETS[kind]}
    return FusionConfig(calibration_outcome_weights=weights)


@dataclass
class Run:
    """One simulation: each implicit signal's weight after every ``every`` responses, and
    the signals' values (0 when absent) and hidden utilities of every response."""

    weights: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in IMPLICIT})
    seen: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in IMPLICIT})
    utility: list[float] = field(default_factory=list)
    # Training labels made when each response settled (with the weights of that moment,
    # as the processor does): all, right about the hidden utility, and unvoted ones.
    labels: int = 0
    right: int = 0
    unvoted: int = 0
    unvoted_right: int = 0

    def final(self) -> dict[str, float]:
        return {name: w[-1] for name, w in self.weights.items()}

    def predictiveness(self) -> dict[str, float]:
        """Correlation of each signal's value with the hidden utility (0 if constant)."""
        return {name: _corr(v, self.utility) for name, v in self.values.items()}


def simulate(
    config: FusionConfig,
    responses: int,
    seed: int = 0,
    population: PopulationConfig = REALISTIC,
    words: tuple[int, int] = POPULATIONS["balanced"],
    every: int = 25,
) -> Run:
    """``responses`` settled responses (regenerated answers included) through one fuser,
    answers of ``words`` words. The stream depends on the seed only, not on ``config``."""
    rng = random.Random(seed)
    users = make_users(200, population, seed)
    fuser = Fuser(config)
    run = Run()
    n = 0
    while n < responses:
        user = rng.choice(users)
        for attempt in range(2):  # at most one regeneration, as livealign.simulate
            text = _answer(rng, words)
            actions = user.react(text, population, rng, can_regenerate=attempt == 0)
            actions += _extra_clicks(user, text, population, rng)
            signals = [fuser.observe(s) for s in _signals(f"r{seed}-{n}", user, text, actions)]
            fuser.calibrate(signals)
            utility = user.utility(text, population)
            _record(run, signals, utility)
            _label(run, fuser.fuse(None, signals), signals, utility)
            n += 1
            if n % every == 0 or n == responses:
                run.seen.append(n)
                for name, weight in _implicit_weights(fuser).items():
                    run.weights[name].append(weight)
            if n == responses or Action(FeedbackKind.click, "regenerate") not in actions:
                break
    return run


def _answer(rng: random.Random, words: tuple[int, int]) -> str:
    """Distinct words (repetition would lower the utility), as many as drawn."""
    return " ".join(f"word{k}" for k in range(rng.randint(*words))) + "."


def _extra_clicks(
    user: SimUser, text: str, population: PopulationConfig, rng: random.Random
) -> list[Action]:
    if user.adversary is not None:
        return []
    pleased = user.utility(text, population)
    out = []
    if rng.random() < LINK_RATE[0] + LINK_RATE[1] * pleased:
        out.append(Action(FeedbackKind.click, "link"))
    if rng.random() < SHARE_RATE:
        out.append(Action(FeedbackKind.click, "share"))
    return out


def _signals(rid: str, user: SimUser, text: str, actions: list[Action]) -> list[Signal]:
    interaction = InteractionEvent(
        response_id=rid, conversation_id=rid, user_hash=user.user_id, model="sim",
        adapter="base", arm="stable", messages=[ChatMessage(role="user", content="Question?")],
        completion=text, prompt_tokens=1, completion_tokens=1, ttft_ms=1.0, latency_ms=1.0,
        created_ms=0,
    )  # fmt: skip
    out = []
    for k, action in enumerate(actions):
        event = FeedbackEvent(
            event_id=f"{rid}-{k}", response_id=rid, conversation_id=rid,
            user_hash=user.user_id, kind=action.kind, value=action.value, received_ms=0,
        )  # fmt: skip
        if (signal := signal_from_event(event, interaction, READING)) is not None:
            out.append(signal)
    return out


def _label(run: Run, fused: Fused, signals: list[Signal], utility: float) -> None:
    """Count the label the processor would make (``streaming.records.label``)."""
    if fused.confidence < LABELS.label_min_confidence or abs(fused.score) <= LABELS.label_min_score:
        return
    right = (fused.score > 0) == (utility >= 0.5)
    run.labels += 1
    run.right += right
    if not any(s.explicit for s in signals):
        run.unvoted += 1
        run.unvoted_right += right


def _record(run: Run, signals: list[Signal], utility: float) -> None:
    present = {s.name: s.value for s in signals if not s.explicit}
    for name in IMPLICIT:
        run.values[name].append(present.get(name, 0.0))
    run.utility.append(utility)


def _implicit_weights(fuser: Fuser) -> dict[str, float]:
    return {name: fuser.calibrator.weights[name] for name in IMPLICIT}


def _corr(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or statistics.pstdev(a) == 0 or statistics.pstdev(b) == 0:
        return 0.0
    return statistics.correlation(a, b)


# --- the bench ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adversarial", type=float, default=0.0, help="Share of vote riggers.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    population = REALISTIC.model_copy(update={"adversarial_share": args.adversarial})
    runs = {
        pop: {
            kind: simulate(targets(kind), args.responses, args.seed, population, words)
            for kind in TARGETS
        }
        for pop, words in POPULATIONS.items()
    }
    print(f"{args.responses} responses, seed {args.seed}, adversarial share {args.adversarial}")
    for pop, by_kind in runs.items():
        _print(pop, by_kind)
    args.out.mkdir(parents=True, exist_ok=True)
    result = _result(args, population, runs)
    (args.out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(runs, args.out / "calibration.png")
    print(f"wrote {args.out / 'calibration.json'} and {args.out / 'calibration.png'}")


def _print(pop: str, runs: dict[str, Run]) -> None:
    truth = next(iter(runs.values())).predictiveness()  # the same stream in every run
    utility = statistics.fmean(next(iter(runs.values())).utility)
    print(f"\n{pop} (mean utility {utility:.2f}): calibrated weight by target")
    print(f"{'signal':<11} {'corr(utility)':>13}" + "".join(f"{k:>10}" for k in runs))
    for name in IMPLICIT:
        print(
            f"{name:<11} {truth[name]:>13.3f}"
            + "".join(f"{r.final()[name]:>10.3f}" for r in runs.values())
        )
    for what, get in (
        ("labels", lambda r: r.labels),
        ("right", lambda r: r.right),
        ("unvoted", lambda r: r.unvoted),
        ("unvoted right", lambda r: r.unvoted_right),
    ):
        print(f"{what:<25}" + "".join(f"{get(r):>10}" for r in runs.values()))


def _result(
    args: argparse.Namespace, population: PopulationConfig, runs: dict[str, dict[str, Run]]
) -> Any:
    def one(run: Run) -> dict[str, Any]:
        return {
            "weights": {k: round(v, 4) for k, v in run.final().items()},
            "labels": run.labels,
            "labels_right": run.right,
            "unvoted_labels": run.unvoted,
            "unvoted_labels_right": run.unvoted_right,
            "trajectory": {
                "seen": run.seen,
                **{k: [round(x, 4) for x in v] for k, v in run.weights.items()},
            },
        }

    return {
        "responses": args.responses,
        "seed": args.seed,
        "population": population.model_dump(exclude={"families", "phrase", "concise_words"}),
        "link_rate": LINK_RATE,
        "share_rate": SHARE_RATE,
        "targets": TARGETS,
        "populations": {
            pop: {
                "words": POPULATIONS[pop],
                "mean_utility": round(statistics.fmean(next(iter(by_kind.values())).utility), 4),
                "predictiveness": {
                    k: round(v, 4) for k, v in next(iter(by_kind.values())).predictiveness().items()
                },
                "runs": {kind: one(run) for kind, run in by_kind.items()},
            }
            for pop, by_kind in runs.items()
        },
    }


def _plot(runs: dict[str, dict[str, Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(TARGETS)
    fig, axes = plt.subplots(
        len(runs), len(kinds), figsize=(4 * len(kinds), 3.4 * len(runs)), sharey=True, squeeze=False
    )
    colors = dict(zip(IMPLICIT, ("C0", "C1", "C2", "C3", "C7"), strict=True))
    for row, (pop, by_kind) in zip(axes, runs.items(), strict=True):
        truth = by_kind[kinds[0]].predictiveness()
        for ax, kind in zip(row, kinds, strict=True):
            run = by_kind[kind]
            for name in IMPLICIT:
                label = f"{name} (corr {truth[name]:+.2f})"
                ax.plot(run.seen, run.weights[name], color=colors[name], label=label)
            ax.set_title(f"{pop}: {kind} targets", fontsize=10)
            ax.grid(alpha=0.3)
        row[0].set_ylabel("calibrated weight")
        row[-1].legend(loc="upper right", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("responses settled")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
