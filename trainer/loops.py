"""Loop pairs: each preference pair's chosen answer against a copy of it caught in a loop.

DPO pushes the likelihood of chosen and rejected answers apart, and on SmolLM2-135M the
mass it frees drifts to repeating what was just said: a `list` round's candidates
repeated a fifth of their word 3-grams (the base: a twentieth), "- A sleeping bag with a
tent-cap" line after line. Users never send a loop as the answer they rejected, so
nothing in their pairs says a loop is worse. A loop pair does: its chosen answer is the
user's own, its rejected one is that answer up to some point and then its last line (or
sentence, or run of words) again and again, as a looping model writes it. The two share
their beginning, so DPO's log-ratios cancel there and the whole push lands where the
answer goes on and the loop repeats itself: an unlikelihood term on repetition (Welleck
et al., 2019) that TRL's DPO loss takes as it is.

Pure text functions, no torch; the trainer adds the pairs (trainer.train).
"""

from __future__ import annotations

import random
import re

from streaming.events import PreferencePair

# A loop copies its unit at least this many times after the original (three in a row).
MIN_COPIES = 2
# Words per unit when an answer is a single sentence (the in-line loops SmolLM2 falls
# into: 'The answer to this question is "The answer to this question is "...').
WORDS_PER_UNIT = 6

_LINE = re.compile(r"[^\n]*\S[^\n]*")
_SENTENCE = re.compile(r"\S.*?(?:[.!?](?=\s|$)|$)", re.DOTALL)
_WORDS = re.compile(rf"\S+(?:\s+\S+){{0,{WORDS_PER_UNIT - 1}}}")


def units(text: str) -> list[tuple[int, int]]:
    """The spans of `text` a loop repeats: its lines, else its sentences, else runs of
    words. Spans, not strings, so that a loop keeps the answer's own text up to where it
    starts (the pair then differs only after that point)."""
    for pattern in (_LINE, _SENTENCE):
        spans = [m.span() for m in pattern.finditer(text)]
        if len(spans) >= 2:
            return spans
    return [m.span() for m in _WORDS.finditer(text)]


def looped(text: str, rng: random.Random) -> str | None:
    """`text` up to a unit chosen by `rng`, then that unit again for as many units as the
    answer had left (at least MIN_COPIES), each after the separator the answer put before
    it: the same length, give or take, so the pair does not teach length. None for an
    answer of fewer than two units."""
    spans = units(text)
    if len(spans) < 2:
        return None
    k = rng.randrange(1, len(spans))  # the loop repeats unit k - 1, after it
    start, end = spans[k - 1]
    # The separator the answer put before this unit (the first unit: the one after it).
    gap = text[spans[k - 2][1] : start] if k >= 2 else text[end : spans[1][0]]
    copies = max(MIN_COPIES, len(spans) - k)
    return text[:end] + (gap + text[start:end]) * copies


def loop_id(response_id: str) -> str:
    """The made-up id of a loop answer (it is never served: always trained as cut off)."""
    return f"{response_id}~loop"


def loop_pairs(pairs: list[PreferencePair], weight: float, seed: int) -> list[PreferencePair]:
    """One loop pair per pair whose chosen answer has two units or more, at `weight` times
    its source's weight; `weight` 0 gives none. The rejected answer's id is `loop_id` of
    the source's, so that the caller can mark it cut off: a loop never ends by itself."""
    if weight <= 0:
        return []
    rng = random.Random(seed)
    out: list[PreferencePair] = []
    for p in pairs:
        loop = looped(p.chosen, rng)
        if loop is None or loop == p.chosen:
            continue
        out.append(
            p.model_copy(
                update={
                    "pair_id": f"{p.pair_id}~loop",
                    "rejected": loop,
                    "rejected_response_id": loop_id(p.rejected_response_id),
                    "weight": p.weight * weight,
                }
            )
        )
    return out
