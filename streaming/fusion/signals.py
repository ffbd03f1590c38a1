"""From a feedback event to a ``Signal``: what it says about the answer, and how loudly.

A signal's value is in [-1, 1] (positive = the user liked the answer) and its strength in
[0, 1] (how much this one observation says). Which signals a kind makes, and whether they
are explicit, comes from the table of kinds (``streaming.kinds``); how each kind's value
is read is here.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from streaming.events import AnyFeedback, AnyInteraction, check_value
from streaming.fusion.config import FusionConfig
from streaming.fusion.stats import clamp
from streaming.kinds import FeedbackKind


@dataclass(slots=True)
class Signal:
    """One piece of feedback, cleaned: what it says about the answer and how loudly."""

    name: str
    value: float
    strength: float
    rater: str | None
    explicit: bool


def signal_from_event(
    event: AnyFeedback, interaction: AnyInteraction | None, config: FusionConfig
) -> Signal | None:
    """Map one feedback event to a Signal; None for a value it cannot interpret.

    thumb ±1 -> ±1; rating 1..5 -> -1..1 (raw: the rater model normalizes per rater);
    edit -> negative, scaled by the share of words changed (whitespace/case-only -> strength
    0; unknown interaction -> the configured default); comment -> VADER polarity, made
    negative by complaint keywords; click -> ``config.click_values`` under the click's own
    name; dwell -> log-scaled around ``dwell_half_point_ms`` into [-1, 1]; compare ->
    both_bad -1, any other verdict strength 0 (it makes a pair, or nothing, instead; it
    still takes the rater's compare voice, so a later verdict replaces an earlier one).
    """
    try:
        check_value(event.kind, event.value)
    except ValueError:
        return None
    # Members compared by identity, through module constants: an Enum attribute lookup
    # and == cost more than the rest of this function (it runs for every event).
    kind, value, rater = event.kind, event.value, event.user_hash
    if kind is _THUMB:
        return Signal("thumb", float(value), 1.0, rater, True)
    if kind is _RATING:
        return Signal("rating", (float(value) - 3.0) / 2.0, 1.0, rater, True)
    if kind is _EDIT:
        return _edit_signal(str(value), interaction, config, rater)
    if kind is _COMMENT:
        return _comment_signal(str(value), config, rater)
    if kind is _CLICK:
        click_value = config.click_values.get(str(value))
        if click_value is None:
            return None
        return Signal(str(value), clamp(click_value), 1.0, rater, False)
    if kind is _DWELL:
        return Signal("dwell", dwell_value(float(value), config), 1.0, rater, False)
    if kind is _COMPARE:
        if event.other_response_id is None:
            return None
        # A win or a loss is a pair, not a score (``records.compare_pair``): scored too, it
        # would come back as a sibling pair, the same evidence twice. "Both bad" says
        # each answer is bad. Each still takes the rater's compare voice on the answer.
        bad = value == "both_bad"
        return Signal("compare", -1.0 if bad else 0.0, 1.0 if bad else 0.0, rater, True)
    return None


_THUMB, _RATING, _EDIT = FeedbackKind.thumb, FeedbackKind.rating, FeedbackKind.edit
_COMMENT, _CLICK, _DWELL = FeedbackKind.comment, FeedbackKind.click, FeedbackKind.dwell
_COMPARE = FeedbackKind.compare


# --- edits -----------------------------------------------------------------------------------


def edit_change(original: str, edited: str) -> float:
    """Share of words changed, in [0, 1]: 1 - difflib ratio over lower-cased words.

    Word level, so whitespace and case changes count as nothing, and long texts stay
    fast (thousands of words, not tens of thousands of characters).
    """
    a, b = original.lower().split(), edited.lower().split()
    if a == b:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, a, b).ratio()


def _edit_signal(
    text: str, interaction: AnyInteraction | None, config: FusionConfig, rater: str | None
) -> Signal:
    if interaction is None:
        return Signal(
            "edit", config.edit_no_context_value, config.edit_no_context_strength, rater, True
        )
    frac = min(1.0, edit_change(interaction.completion, text) / config.edit_full_change)
    # sqrt: even a small correction says clearly that something was wrong, even though
    # it says the answer was only a little wrong (small value).
    return Signal("edit", -frac if frac else 0.0, math.sqrt(frac), rater, True)


# --- dwell -----------------------------------------------------------------------------------


def dwell_value(ms: float, config: FusionConfig) -> float:
    """Dwell in [-1, 1]: 0 at the half point, ±1 at ``dwell_full_factor`` times it or 1/that."""
    # +1 ms keeps 0 ms finite (it saturates at -1 anyway).
    ratio = (ms + 1.0) / (config.dwell_half_point_ms + 1.0)
    return clamp(math.log(ratio) / math.log(config.dwell_full_factor))


# --- comments --------------------------------------------------------------------------------

_COMMENT_FLAGS = {
    "too_long": r"too (?:long|verbose|wordy)|verbose|wordy|rambl\w*|get to the point",
    "too_short": r"too (?:short|brief|terse)|more detail\w*|not enough detail|incomplete",
    "wrong": r"wrong|incorrect|inaccurate|not true|untrue|mistakes?|errors?|hallucinat\w*"
    r"|made up|(?:doesn'?t|does not|didn'?t|did not) work",
    "unsafe": r"unsafe|dangerous|harmful|offensive|inappropriate|illegal|toxic",
    "rude": r"rude|condescending|patronizing|patronising|disrespectful|insulting|arrogant",
}
_COMMENT_FLAG_RES = {
    name: re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE)
    for name, pattern in _COMMENT_FLAGS.items()
}
# How negative a comment is at least when it carries a flag: VADER scores "this is too
# long" as neutral, but the user is clearly unhappy with the answer.
_FLAG_CEILING = {"wrong": -0.5, "unsafe": -0.5, "rude": -0.5, "too_long": -0.25, "too_short": -0.25}

_vader: Any = None


@functools.lru_cache(maxsize=4096)
def _sentiment(text: str) -> float:
    """VADER compound polarity; the analyzer loads its lexicon once, on first use.
    Remembered per text: short comments ("thanks", "wrong") recur, and VADER costs more
    than everything else done with a feedback event."""
    global _vader
    if _vader is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _vader = SentimentIntensityAnalyzer()
    return float(_vader.polarity_scores(text)["compound"])


def comment_labels(text: str, max_chars: int = 2000) -> dict[str, float | str]:
    """Structured labels for a comment.

    ``polarity`` (VADER compound, [-1, 1]), ``label`` (positive / negative / neutral at
    VADER's usual ±0.05), and 0/1 flags ``too_long``, ``too_short``, ``wrong``, ``unsafe``,
    ``rude``. Only the first ``max_chars`` characters are read.
    """
    text = text[:max_chars]
    polarity = _sentiment(text)
    label = "positive" if polarity >= 0.05 else "negative" if polarity <= -0.05 else "neutral"
    labels: dict[str, float | str] = {"polarity": polarity, "label": label}
    for name, pattern in _COMMENT_FLAG_RES.items():
        labels[name] = 1.0 if pattern.search(text) else 0.0
    return labels


def _comment_signal(text: str, config: FusionConfig, rater: str | None) -> Signal:
    labels = comment_labels(text, config.comment_max_chars)
    value = float(labels["polarity"])
    for flag, ceiling in _FLAG_CEILING.items():
        if labels[flag] and value > ceiling:
            value = ceiling
    # A neutral comment ("ok", a question) says little about the answer's quality.
    return Signal("comment", value, min(1.0, 2.0 * abs(value)), rater, True)
