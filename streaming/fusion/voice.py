"""One voice per rater per response: what a new signal does to the ones already joined.

A response's feedback token is all a client needs to send feedback on it, so one client
can send the same thumb twenty times. Counted twenty times, it would be a consensus of
one: a confident label from a single person. So, per response and rater (a rater is the
event's user; events without one are the token holder, one anonymous voice):

- a thumb, a rating or an edit REPLACES the rater's earlier one of the same kind on the
  response (latest wins: a flipped thumb is the rater's opinion now, an edit their latest
  text), configured by ``FusionConfig.latest_wins_signals``;
- every other signal (comments, clicks, dwell) counts at most
  ``FusionConfig.max_signals_per_rater`` times; the rest are dropped.

Pure: the processor asks, stores the outcome and counts the drops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from streaming.fusion.config import FusionConfig
from streaming.fusion.signals import Signal

# Drop reasons (livealign_processor_drops_total's label) of the two rules above.
SUPERSEDED = "superseded"
REPEAT_LIMIT = "repeat_limit"


@dataclass(frozen=True, slots=True)
class Verdict:
    """``join`` the new signal; or join it and drop ``earlier[replaces]`` (``replace``);
    or drop the new one (``drop``)."""

    action: Literal["join", "replace", "drop"]
    replaces: int | None = None


JOIN = Verdict("join")
DROP = Verdict("drop")


def same_voice(a: Signal, b: Signal) -> bool:
    """The same rater (anonymous counts as one rater) giving the same signal."""
    return a.name == b.name and a.rater == b.rater


def place(signal: Signal, earlier: Sequence[Signal], config: FusionConfig) -> Verdict:
    """What ``signal`` (new, about one response) does to the response's ``earlier``
    joined signals, in the order they joined."""
    if signal.name in config.latest_wins_signals:
        # The latest earlier one: after this rule holds, there is at most one.
        for i in range(len(earlier) - 1, -1, -1):
            if same_voice(earlier[i], signal):
                return Verdict("replace", i)
        return JOIN
    repeats = sum(1 for s in earlier if same_voice(s, signal))
    return DROP if repeats >= config.max_signals_per_rater else JOIN


def one_voice(signals: Sequence[Signal], config: FusionConfig) -> list[Signal]:
    """``signals`` (in the order they joined) as the rules leave them: what fusing them
    one at a time through ``place`` keeps."""
    kept: list[Signal] = []
    for s in signals:
        verdict = place(s, kept, config)
        if verdict.action == "drop":
            continue
        if verdict.replaces is not None:
            del kept[verdict.replaces]
        kept.append(s)
    return kept
