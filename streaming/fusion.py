"""Clean, structure and fuse feedback: the brain of the stream processor.

Everything here is pure and deterministic: no I/O, no wall clock (time comes in as event
time), no randomness. The processor owns one ``Fuser`` per partition set and drives it:

1. ``signal_from_event`` turns a ``FeedbackEvent`` (joined to its ``InteractionEvent``)
   into a ``Signal``: a value in [-1, 1] (positive = the user liked the answer) and a
   strength in [0, 1] (how much this one observation says).
2. ``Fuser.allow`` rate-limits each rater; ``Fuser.observe`` updates the rater's online
   statistics with the new signal and returns it normalized for that rater (z-scored
   thumbs and ratings, so a rater who gives everything 5 says less with a 5).
3. ``Fuser.fuse`` combines one response's signals into a score with a confidence. The
   explicit part (thumb, rating, edit, comment) and the implicit part (copy, regenerate,
   link, share, dwell) are each a weighted mean, mixed by the scenario's prior share
   (explicit counts more in safety-sensitive conversations, less in open-domain ones).
4. ``Fuser.calibrate`` learns, from responses with settled signals, how well each implicit
   signal predicts the explicit label (its weight) and how much each rater agrees with
   everybody else (their trust).

All learned state round-trips through ``state_dict`` / ``load_state_dict`` as plain JSON.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import math
import re
import string
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streaming.events import AnyFeedback, AnyInteraction, FeedbackKind, check_value

Scenario = Literal["safety", "open_domain", "general"]
SCENARIOS: tuple[Scenario, ...] = ("safety", "open_domain", "general")
EXPLICIT = ("thumb", "rating", "edit", "comment")
IMPLICIT = ("copy", "regenerate", "link", "share", "dwell")

STATE_VERSION = 1
RATE_WINDOW_MS = 60_000
_EPS = 1e-12
# fuse() promises confidence < 1; 1 - exp(-x) rounds to exactly 1.0 for large x.
_MAX_CONFIDENCE = 1.0 - 1e-9
# Prior variance of each normalized scale's raw values: thumbs are ±1 (variance 1 around
# 0); ratings map 1..5 to -1..1 (variance 0.5 if a rater used the scale uniformly).
_SCALE_PRIOR_VAR = {"thumb": 1.0, "rating": 0.5}

DEFAULT_SAFETY_KEYWORDS = [
    # health
    "medic*", "doctor*", "diagnos*", "symptom*", "dose", "doses", "dosage*", "overdos*",
    "prescri*", "pregnan*", "disease*", "cancer", "infection*", "vaccin*", "antibiotic*",
    "chest pain", "allerg*",
    # self-harm and mental health crises
    "suicid*", "self-harm", "kill myself", "hurt myself", "end my life",
    "want to die", "eating disorder", "anorexi*", "bulimi*", "depress*",
    # legal
    "legal", "illegal", "lawyer*", "attorney*", "lawsuit*", "sue", "sued", "court",
    "contract", "contracts", "custody", "divorce", "immigration", "visa", "arrest*", "evict*",
    # weapons, violence, drugs
    "weapon*", "gun", "guns", "firearm*", "rifle*", "bomb*", "explosive*", "poison*",
    "drug", "drugs", "cocaine", "heroin", "fentanyl", "opioid*", "meth", "abuse*",
    "violen*", "malware",
    # money
    "financ*", "invest*", "stock", "stocks", "crypto*", "bitcoin", "loan*", "mortgage*",
    "taxes", "tax return", "retirement", "debt*", "bankrupt*", "insurance",
]  # fmt: skip

DEFAULT_OPEN_DOMAIN_KEYWORDS = [
    "story", "stories", "poem*", "poetry", "haiku*", "limerick*", "joke*", "funny",
    "riddle*", "chat", "chit-chat", "lyrics", "song*", "rap", "fiction*", "fantasy",
    "roleplay", "role-play", "pretend", "imagine", "brainstorm*", "fun fact*",
    "how are you", "what's up", "tell me about yourself", "favorite", "favourite",
    "creative", "character", "characters", "game", "games", "movie*",
]  # fmt: skip

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


class FusionConfig(BaseModel):
    """Knobs of signal cleaning, rater normalization, calibration and fusion."""

    model_config = ConfigDict(extra="forbid")  # a misspelled knob is an error, not a no-op

    mode: Literal["explicit", "implicit", "fused"] = Field(
        "fused",
        description="Which signals make the score: only explicit, only implicit, or both mixed "
        "by the scenario's explicit share.",
    )
    safety_keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SAFETY_KEYWORDS),
        description="Words or phrases in the user's messages that mark a safety-sensitive "
        "conversation (health, self-harm, legal, weapons, drugs, money). Matched "
        "case-insensitively on word boundaries; a trailing '*' matches any word ending.",
    )
    open_domain_keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OPEN_DOMAIN_KEYWORDS),
        description="Words or phrases that mark chit-chat or creative requests (same syntax). "
        "Safety keywords win when both match.",
    )
    scenario_explicit_share: dict[str, float] = Field(
        default_factory=lambda: {"safety": 0.85, "general": 0.65, "open_domain": 0.45},
        description="Prior share of the score given to explicit signals (the rest to implicit), "
        "per scenario. Needs every scenario, each in [0, 1].",
    )
    explicit_weights: dict[str, float] = Field(
        default_factory=lambda: {"thumb": 1.0, "rating": 1.0, "edit": 0.8, "comment": 0.6},
        description="Fixed weight of each explicit signal inside the explicit part.",
    )
    implicit_prior_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "copy": 0.5,
            "regenerate": 0.5,
            "share": 0.5,
            "link": 0.3,
            "dwell": 0.2,
        },
        description="Starting weight of each implicit signal before calibration has evidence.",
    )
    calibration_label_saturation: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Explicit label magnitude that counts as a full like/dislike when calibrating "
        "implicit signals (the question is whether the user liked the answer, and rater "
        "normalization rarely leaves a label at exactly ±1).",
    )
    calibration_lr: float = Field(
        0.001,
        gt=0,
        le=1,
        description="Online learning rate of implicit-signal calibration: the floor of the "
        "running averages' update rate, so about 1/lr recent labeled responses count.",
    )
    calibration_prior_n: float = Field(
        20.0,
        ge=0,
        description="Pseudo-count of labeled responses pulling a signal's weight toward its prior.",
    )
    calibration_lcb_z: float = Field(
        1.0,
        ge=0,
        description="Standard errors subtracted from a signal's estimated predictiveness, so a "
        "signal that predicts nothing settles at 0 instead of wandering above it on noise.",
    )
    min_confidence: float = Field(
        0.3, ge=0, le=1, description="Labels below this confidence are not emitted."
    )
    mixing_evidence_scale: float = Field(
        0.5,
        gt=0,
        description="Evidence weight at which a part (explicit or implicit) gets 63% of its "
        "scenario share; a part with little evidence gives up its share to the other.",
    )
    confidence_evidence_scale: float = Field(
        1.0,
        gt=0,
        description="Total evidence weight at which confidence (before the agreement factor) "
        "reaches 63%; one thumb from an unknown rater weighs 0.75.",
    )
    rater_rate_limit_per_min: int = Field(
        30, ge=1, description="More events than this from one rater in 60 s are dropped."
    )
    rater_prior_n: float = Field(
        5.0,
        ge=0,
        description="Pseudo-count pulling a rater's scale (mean, variance) toward the "
        "population prior, so a new rater's first ratings pass through almost unchanged.",
    )
    rater_memory: int = Field(
        200,
        ge=1,
        description="Observations a rater's statistics remember (older ones fade), so a rater "
        "who changes behaviour is re-judged.",
    )
    rater_prior_agreement: float = Field(
        0.25,
        ge=-1,
        le=1,
        description="Assumed agreement with the consensus for a rater with no history; "
        "trust = 0.5 + agreement, clipped to [0, 1], so unknown raters get 0.75.",
    )
    rater_agreement_prior_n: float = Field(
        5.0, ge=0, description="Pseudo-count behind rater_prior_agreement."
    )
    extreme_rater_floor: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Trust factor left to a rater who always gives the same extreme value "
        "(1 for a rater who uses the whole scale).",
    )
    consensus_min_evidence: float = Field(
        0.3,
        ge=0,
        description="Weight of other signals on a response needed before a rater's agreement "
        "with them is recorded.",
    )
    max_raters: int = Field(
        200_000,
        ge=1,
        description="Raters kept in memory (and in state_dict); the least recently seen go first.",
    )
    click_values: dict[str, float] = Field(
        default_factory=lambda: {"copy": 1.0, "share": 1.0, "link": 0.5, "regenerate": -1.0},
        description="Value of each click target in [-1, 1].",
    )
    dwell_half_point_ms: float = Field(
        15_000,
        gt=0,
        description="Dwell time that maps to a neutral dwell signal (log scale around it).",
    )
    dwell_full_factor: float = Field(
        10.0,
        gt=1,
        description="Dwell this many times longer (shorter) than the half point saturates at "
        "+1 (-1).",
    )
    edit_full_change: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Fraction of words changed at which an edit counts as a full rejection "
        "(value -1, strength 1).",
    )
    edit_no_context_value: float = Field(
        -0.5, ge=-1, le=1, description="Value of an edit whose interaction is unknown."
    )
    edit_no_context_strength: float = Field(
        0.5, ge=0, le=1, description="Strength of an edit whose interaction is unknown."
    )
    comment_max_chars: int = Field(
        2000, ge=1, description="Characters of a comment given to the sentiment model."
    )

    @model_validator(mode="after")
    def _check_shares(self) -> FusionConfig:
        missing = set(SCENARIOS) - set(self.scenario_explicit_share)
        if missing:
            raise ValueError(f"scenario_explicit_share lacks {sorted(missing)}")
        for name, share in self.scenario_explicit_share.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"scenario_explicit_share[{name!r}] must be in [0, 1]")
        return self


@dataclass(slots=True)
class Signal:
    """One piece of feedback, cleaned: what it says about the answer and how loudly."""

    name: str
    value: float
    strength: float
    rater: str | None
    explicit: bool


@dataclass(slots=True)
class Fused:
    """A response's fused label. ``explicit_score``/``implicit_score`` are each part's
    weighted mean (None without evidence), reported whatever the mode; ``score``,
    ``confidence`` and ``n_signals`` only use the parts the mode selects."""

    score: float
    confidence: float
    scenario: Scenario
    explicit_score: float | None
    implicit_score: float | None
    n_signals: int


def _clamp(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo if x < lo else hi if x > hi else x


# ---------------------------------------------------------------- signals from events


def signal_from_event(
    event: AnyFeedback, interaction: AnyInteraction | None, config: FusionConfig
) -> Signal | None:
    """Map one feedback event to a Signal; None for a value it cannot interpret.

    thumb ±1 -> ±1; rating 1..5 -> -1..1 (raw: ``Fuser.observe`` normalizes per rater);
    edit -> negative, scaled by the share of words changed (whitespace/case-only -> strength
    0; unknown interaction -> the configured default); comment -> VADER polarity, made
    negative by complaint keywords; click -> ``config.click_values`` under the click's own
    name; dwell -> log-scaled around ``dwell_half_point_ms`` into [-1, 1].
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
        return Signal(str(value), _clamp(click_value), 1.0, rater, False)
    if kind is _DWELL:
        return Signal("dwell", dwell_value(float(value), config), 1.0, rater, False)
    return None


_THUMB, _RATING, _EDIT = FeedbackKind.thumb, FeedbackKind.rating, FeedbackKind.edit
_COMMENT, _CLICK, _DWELL = FeedbackKind.comment, FeedbackKind.click, FeedbackKind.dwell


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


def dwell_value(ms: float, config: FusionConfig) -> float:
    """Dwell in [-1, 1]: 0 at the half point, ±1 at ``dwell_full_factor`` times it or 1/that."""
    # +1 ms keeps 0 ms finite (it saturates at -1 anyway).
    ratio = (ms + 1.0) / (config.dwell_half_point_ms + 1.0)
    return _clamp(math.log(ratio) / math.log(config.dwell_full_factor))


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


# ---------------------------------------------------------------- scenario


# ASCII punctuation becomes a space; lower-cased text is then split on whitespace (several
# times faster than a tokenizing regex, and the same function cuts keywords and prompts).
_PUNCTUATION_TO_SPACE = str.maketrans(dict.fromkeys(string.punctuation, " "))


def _tokens(text: str) -> list[str]:
    return text.lower().translate(_PUNCTUATION_TO_SPACE).split()


class KeywordMatcher:
    """Finds any of a list of keywords in a text, fast enough for the hot path.

    Text and keywords are cut into lower-case tokens at whitespace and ASCII punctuation
    (so "Self-Harm" and "self harm" are the same phrase). One-word keywords are set
    lookups; a trailing '*' makes a stem, matched against every token's start through an
    index of stems by their first letters; several-word keywords are checked only when
    their first word occurs. (One regex alternation of ~100 keywords costs ~150 us per
    prompt in ``re``; this costs a few us.)
    """

    def __init__(self, keywords: Iterable[str]) -> None:
        self.words: set[str] = set()
        self.stems: dict[str, list[str]] = {}
        self.phrases: dict[str, list[tuple[str, bool]]] = {}
        stems: list[str] = []
        for keyword in keywords:
            kw = keyword.strip().lower()
            prefix = kw.endswith("*")
            tokens = _tokens(kw)
            if not tokens:
                continue
            if len(tokens) > 1:
                # Matched on the token string joined by spaces, with a word end unless a stem.
                phrase = " " + " ".join(tokens) + ("" if prefix else " ")
                self.phrases.setdefault(tokens[0], []).append((phrase, prefix))
            elif prefix:
                stems.append(tokens[0])
            else:
                self.words.add(tokens[0])
        self.stem_key = min((len(stem) for stem in stems), default=0)
        for stem in stems:
            self.stems.setdefault(stem[: self.stem_key], []).append(stem)

    def search(self, tokens: list[str], unique: set[str]) -> bool:
        if not self.words.isdisjoint(unique):
            return True
        key = self.stem_key
        if self.stems:
            stems_get = self.stems.get
            for token in unique:
                candidates = stems_get(token[:key])
                if candidates and any(token.startswith(stem) for stem in candidates):
                    return True
        if self.phrases and not unique.isdisjoint(self.phrases):
            joined = " " + " ".join(tokens) + " "
            for first in unique.intersection(self.phrases):
                if any(phrase in joined for phrase, _ in self.phrases[first]):
                    return True
        return False


@functools.lru_cache(maxsize=64)
def _matcher(keywords: tuple[str, ...]) -> KeywordMatcher:
    return KeywordMatcher(keywords)


# Only the end of a long conversation is scanned: enough to find the topic, bounded cost.
_SCENARIO_SCAN_CHARS = 4000
# Prompts whose scenario Fuser remembers (oldest forgotten first): at most ~16 MB of text.
_SCENARIO_MEMO_SIZE = 4096


def _user_text(interaction: AnyInteraction) -> str:
    text = "\n".join(m.content for m in interaction.messages if m.role == "user")
    return text[-_SCENARIO_SCAN_CHARS:]


def _scenario(text: str, safety: KeywordMatcher, open_domain: KeywordMatcher) -> Scenario:
    tokens = _tokens(text)
    unique = set(tokens)
    if safety.search(tokens, unique):
        return "safety"
    if open_domain.search(tokens, unique):
        return "open_domain"
    return "general"


def detect_scenario(interaction: AnyInteraction, config: FusionConfig) -> Scenario:
    """Classify a conversation by keywords in the user's messages (system prompts are
    ignored: a "never give medical advice" instruction does not make every chat medical).
    Safety wins over open-domain; neither -> general."""
    return _scenario(
        _user_text(interaction),
        _matcher(tuple(config.safety_keywords)),
        _matcher(tuple(config.open_domain_keywords)),
    )


# ---------------------------------------------------------------- running statistics


@dataclass(slots=True)
class _Moments:
    """Running mean and variance: exact for the first ``memory`` observations, then an
    exponential window of about that many, so that old behaviour fades."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0

    def push(self, x: float, memory: int) -> None:
        self.n += 1
        rate = 1.0 / (self.n if self.n < memory else memory)
        delta = x - self.mean
        self.mean += rate * delta
        self.var = (1.0 - rate) * (self.var + rate * delta * delta)

    def posterior(
        self, prior_mean: float, prior_var: float, prior_n: float, memory: int
    ) -> tuple[float, float]:
        """Mean and variance shrunk toward a prior worth ``prior_n`` observations
        (normal-inverse-gamma style: the variance also grows with the mean's distance)."""
        n = self.n if self.n < memory else memory
        total = prior_n + n
        if total <= 0:
            return prior_mean, prior_var
        diff = self.mean - prior_mean
        mean = (prior_n * prior_mean + n * self.mean) / total
        var = (prior_n * prior_var + n * self.var + prior_n * n / total * diff * diff) / total
        return mean, var


class RaterStats:
    """One rater's scale (per normalized signal: mean, variance of raw values) and their
    agreement with the consensus of the responses they rated. ``weight`` is cached: it is
    read for every signal fused and only changes when these statistics do."""

    __slots__ = ("agreement", "scales", "weight")

    def __init__(self) -> None:
        self.scales: dict[str, _Moments] = {}
        self.agreement = _Moments()
        self.weight = 1.0  # set by refresh(), which every update calls

    def normalize(self, name: str, value: float, config: FusionConfig) -> float:
        """Return a raw thumb/rating value z-scored on this rater's scale so far (rescaled so
        that a rater matching the population prior keeps the raw value), then add it."""
        moments = self.scales.get(name)
        if moments is None:
            moments = self.scales[name] = _Moments()
        prior_var = _SCALE_PRIOR_VAR[name]
        # Judged against the rater's history before this value: how unusual is it for them?
        mean, var = moments.posterior(0.0, prior_var, config.rater_prior_n, config.rater_memory)
        moments.push(value, config.rater_memory)
        return _clamp((value - mean) * math.sqrt(prior_var / max(var, _EPS)))

    def trust(self, config: FusionConfig) -> float:
        """0.5 + mean agreement with the consensus (shrunk to the prior), in [0, 1]."""
        agreement, _ = self.agreement.posterior(
            config.rater_prior_agreement, 1.0, config.rater_agreement_prior_n, config.rater_memory
        )
        return _clamp(0.5 + agreement, 0.0, 1.0)

    def spread(self, config: FusionConfig) -> float:
        """How much of the scale this rater uses, as a factor in [floor, 1]: a rater who
        always gives the same (extreme) value tells us little."""
        total_n = 0
        total = 0.0
        for name, moments in self.scales.items():
            prior_var = _SCALE_PRIOR_VAR[name]
            _, var = moments.posterior(0.0, prior_var, config.rater_prior_n, config.rater_memory)
            n = min(moments.n, config.rater_memory)
            total += n * min(1.0, math.sqrt(var / prior_var))
            total_n += n
        used = total / total_n if total_n else 1.0
        floor = config.extreme_rater_floor
        return floor + (1.0 - floor) * used

    def refresh(self, config: FusionConfig) -> None:
        self.weight = self.trust(config) * self.spread(config)

    def to_json(self) -> dict[str, Any]:
        return {
            "scales": {name: [m.n, m.mean, m.var] for name, m in self.scales.items()},
            "agreement": [self.agreement.n, self.agreement.mean, self.agreement.var],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], config: FusionConfig) -> RaterStats:
        stats = cls()
        stats.scales = {
            name: _Moments(int(n), float(mean), float(var))
            for name, (n, mean, var) in data["scales"].items()
        }
        n, mean, var = data["agreement"]
        stats.agreement = _Moments(int(n), float(mean), float(var))
        stats.refresh(config)
        return stats


@dataclass(slots=True)
class _Calibration:
    """Running averages, over labeled responses where one implicit signal is present, of
    x (its value), |x|, u = x*y (y = the explicit label) and u^2."""

    n: int = 0
    x: float = 0.0
    abs_x: float = 0.0
    u: float = 0.0
    u2: float = 0.0

    def push(self, x: float, y: float, lr: float) -> None:
        self.n += 1
        rate = max(1.0 / self.n, lr)
        u = x * y
        self.x += rate * (x - self.x)
        self.abs_x += rate * (abs(x) - self.abs_x)
        self.u += rate * (u - self.u)
        self.u2 += rate * (u * u - self.u2)

    def weight(self, label_mean: float, prior: float, config: FusionConfig) -> float:
        """Predictiveness in [0, 1], shrunk toward ``prior``.

        Lift = E[x (y - ybar) | present]: how far the label moves from its base rate in the
        direction of x when the signal shows up. Divided by its largest possible value
        (E[|x| (1 - ybar sign x)], a perfect predictor) it is 1 for a signal that always
        points the right way, 0 for one independent of the label, negative for one that
        points the wrong way (clipped to 0: a misleading signal is ignored, not inverted).
        """
        if self.n == 0:
            return prior
        n_eff = min(float(self.n), 1.0 / config.calibration_lr)
        room = self.abs_x - label_mean * self.x
        if room <= 1e-6:
            # Every label already agrees with the signal's sign: nothing to learn from.
            return prior
        raw = (self.u - label_mean * self.x) / room
        std_err = math.sqrt(max(self.u2 - self.u * self.u, 0.0) / n_eff) / room
        estimate = raw - config.calibration_lcb_z * std_err
        k = config.calibration_prior_n
        return _clamp((k * prior + n_eff * estimate) / (k + n_eff), 0.0, 1.0)


# ---------------------------------------------------------------- the fuser


@dataclass(slots=True)
class _Part:
    """Accumulates one part (explicit or implicit) of a response: sum of weights, of
    weight * value and of weight * value^2."""

    weight: float = 0.0
    total: float = 0.0
    square: float = 0.0
    count: int = 0


class Fuser:
    """Per-rater normalization and trust, implicit-signal calibration and fusion.

    Not thread-safe; one instance per processor (it is cheap: plain floats and dicts).
    """

    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self._explicit_w = dict(config.explicit_weights)
        self._safety_matcher = KeywordMatcher(config.safety_keywords)
        self._open_domain_matcher = KeywordMatcher(config.open_domain_keywords)
        self._scenario_memo: dict[str, Scenario] = {}
        self._raters: OrderedDict[str, RaterStats] = OrderedDict()
        # Raters changed (each also moved to the end of _raters) and forgotten since the
        # last state_changes(): what a store keeping one row per rater must write.
        self._changed: set[str] = set()
        self._forgotten: set[str] = set()
        self._calibration: dict[str, _Calibration] = {}
        self._label = _Moments()  # running mean of the explicit label (base rate)
        self._implicit_w: dict[str, float] = {}
        self._refresh_implicit_weights()
        # Transient (not learned, not in state_dict): accepted event times per rater,
        # ordered by last acceptance so idle raters are cheap to forget.
        self._windows: OrderedDict[str, deque[int]] = OrderedDict()
        self._default_weight = _clamp(0.5 + config.rater_prior_agreement, 0.0, 1.0)
        mode_share = {"explicit": 1.0, "implicit": 0.0}.get(config.mode)
        self._share: dict[str, float] = {
            s: config.scenario_explicit_share[s] if mode_share is None else mode_share
            for s in SCENARIOS
        }
        self._use_explicit = config.mode != "implicit"
        self._use_implicit = config.mode != "explicit"

    # -- rate limiting

    def allow(self, rater: str | None, ts_ms: int) -> bool:
        """Rate limit per rater: at most ``rater_rate_limit_per_min`` accepted events in any
        60 s window of event time. False = drop. Anonymous events (no rater) are not limited
        here: they would all share one bucket."""
        if rater is None:
            return True
        windows = self._windows
        horizon = ts_ms - RATE_WINDOW_MS
        if windows:  # (runs for every event: checked here, the loop only when there is work)
            oldest = windows[next(iter(windows))]
            if not oldest or oldest[-1] <= horizon:
                self._forget_idle_windows(horizon)
        window = windows.get(rater)
        if window is None:
            window = windows[rater] = deque()  # a new key is the most recent already
        else:
            windows.move_to_end(rater)
            if window:
                # Events may arrive slightly out of order; keep the window sorted.
                ts_ms = max(ts_ms, window[-1])
                horizon = ts_ms - RATE_WINDOW_MS
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) >= self.config.rater_rate_limit_per_min:
            return False
        window.append(ts_ms)
        return True

    def _forget_idle_windows(self, horizon: int) -> None:
        # Oldest-touched first; stop at the first rater still active (amortized O(1)).
        while self._windows:
            rater, window = next(iter(self._windows.items()))
            if window and window[-1] > horizon:
                return
            del self._windows[rater]

    # -- rater statistics

    def _rater_stats(self, rater: str) -> RaterStats:
        """The rater's statistics, about to change: marked as such and most recent."""
        stats = self._raters.get(rater)
        if stats is None:
            stats = self._raters[rater] = RaterStats()
            self._forgotten.discard(rater)
            if len(self._raters) > self.config.max_raters:
                oldest, _ = self._raters.popitem(last=False)
                self._changed.discard(oldest)
                self._forgotten.add(oldest)
        else:
            self._raters.move_to_end(rater)
        self._changed.add(rater)
        return stats

    def observe(self, signal: Signal) -> Signal:
        """Update the rater's statistics with this NEW signal (call once per event) and
        return it normalized for the rater: thumbs and ratings are z-scored on the rater's
        own scale (a rater who gives everything 5 says little with a 5, a lot with a 1).
        Other signals, and signals without a rater, come back unchanged."""
        if signal.rater is None or signal.name not in _SCALE_PRIOR_VAR:
            return signal
        stats = self._rater_stats(signal.rater)
        value = stats.normalize(signal.name, signal.value, self.config)
        stats.refresh(self.config)
        return Signal(signal.name, value, signal.strength, signal.rater, signal.explicit)

    def rater_weight(self, rater: str | None) -> float:
        """Trust in [0, 1]: (0.5 + agreement with the consensus) times a factor for how much
        of the scale the rater uses. Unknown or anonymous raters get the prior (0.75)."""
        if rater is None:
            return self._default_weight
        stats = self._raters.get(rater)
        return self._default_weight if stats is None else stats.weight

    # -- fusion

    def _accumulate(self, signals: list[Signal]) -> tuple[_Part, _Part]:
        # The innermost loop of the processor: locals instead of attribute lookups.
        explicit_w, implicit_w = self._explicit_w, self._implicit_w
        raters, default = self._raters, self._default_weight
        ew = et = es = iw = it = is_ = 0.0
        ec = ic = 0
        for s in signals:
            stats = None if s.rater is None else raters.get(s.rater)
            w = s.strength * (default if stats is None else stats.weight)
            v = s.value
            if s.explicit:
                w *= explicit_w.get(s.name, 0.0)
                ew, et, es, ec = ew + w, et + w * v, es + w * v * v, ec + 1
            else:
                w *= implicit_w.get(s.name, 0.0)
                iw, it, is_, ic = iw + w, it + w * v, is_ + w * v * v, ic + 1
        return _Part(ew, et, es, ec), _Part(iw, it, is_, ic)

    def fuse(self, interaction: AnyInteraction | None, signals: list[Signal]) -> Fused:
        """Combine one response's signals; reads but never changes learned state.

        Each part is a weighted mean (weight = signal weight * strength * rater weight). The
        parts are mixed by the scenario's explicit share, each share discounted by how little
        evidence its part has (1 - exp(-weight / mixing_evidence_scale)): with plenty of
        both the mix is exactly the share, and a lone weak implicit click cannot take the
        implicit share from a thumb. Confidence = (1 - exp(-evidence /
        confidence_evidence_scale)) * (1 - weighted dispersion of the values), in [0, 1).
        """
        cfg = self.config
        scenario = "general" if interaction is None else self._scenario_of(interaction)
        explicit, implicit = self._accumulate(signals)
        e_score = explicit.total / explicit.weight if explicit.weight > _EPS else None
        i_score = implicit.total / implicit.weight if implicit.weight > _EPS else None
        share = self._share[scenario]
        scale = cfg.mixing_evidence_scale
        lam_e = lam_i = 0.0
        n_signals = 0
        if self._use_explicit:
            n_signals += explicit.count
            if e_score is not None:
                lam_e = share * (1.0 - math.exp(-explicit.weight / scale))
        if self._use_implicit:
            n_signals += implicit.count
            if i_score is not None:
                lam_i = (1.0 - share) * (1.0 - math.exp(-implicit.weight / scale))
        lam = lam_e + lam_i
        if lam <= _EPS:
            return Fused(0.0, 0.0, scenario, e_score, i_score, n_signals)
        score = mean_square = evidence = 0.0
        if lam_e > 0.0:
            score += lam_e * explicit.total / explicit.weight
            mean_square += lam_e * explicit.square / explicit.weight
            evidence += explicit.weight
        if lam_i > 0.0:
            score += lam_i * implicit.total / implicit.weight
            mean_square += lam_i * implicit.square / implicit.weight
            evidence += implicit.weight
        score /= lam
        dispersion = _clamp(mean_square / lam - score * score, 0.0, 1.0)
        confidence = (1.0 - math.exp(-evidence / cfg.confidence_evidence_scale)) * (
            1.0 - dispersion
        )
        return Fused(
            _clamp(score), min(confidence, _MAX_CONFIDENCE), scenario, e_score, i_score, n_signals
        )

    def _scenario_of(self, interaction: AnyInteraction) -> Scenario:
        # fuse() runs once per event, so a response's prompt is classified again and again;
        # a memo keyed by the text itself (not the response id) can never be stale.
        text = _user_text(interaction)
        scenario = self._scenario_memo.get(text)
        if scenario is None:
            scenario = _scenario(text, self._safety_matcher, self._open_domain_matcher)
            if len(self._scenario_memo) >= _SCENARIO_MEMO_SIZE:
                del self._scenario_memo[next(iter(self._scenario_memo))]
            self._scenario_memo[text] = scenario
        return scenario

    # -- learning from settled responses

    def calibrate(self, signals: list[Signal]) -> None:
        """Learn from one response's settled signals (the normalized ones ``observe``
        returned). Call it ONCE per response, e.g. when its label is emitted: a second call
        with the same signals counts the response twice. Responses without explicit
        evidence teach nothing and are skipped, so it is safe to call for every response.

        1. Implicit calibration: the explicit label y (weighted mean of explicit values,
           saturating at ``calibration_label_saturation``) is compared with each implicit
           signal present (x); the signal's weight becomes its measured predictiveness of y
           (see ``_Calibration.weight``): a predictive signal gains weight, one that predicts
           nothing (or the opposite) drifts to 0.
        2. Rater consensus: each rater's explicit value is compared with the weighted mean
           of everything else on the response (other raters' explicit signals and all
           implicit ones); raters who keep disagreeing lose trust.
        """
        cfg = self.config
        explicit, implicit = self._accumulate(signals)
        if explicit.weight <= _EPS:
            return
        label = _clamp(explicit.total / explicit.weight / cfg.calibration_label_saturation)
        self._label.push(label, max(1, round(1.0 / cfg.calibration_lr)))
        for name, x in _implicit_values(signals).items():
            calibration = self._calibration.get(name)
            if calibration is None:
                calibration = self._calibration[name] = _Calibration()
            calibration.push(x, label, cfg.calibration_lr)
        self._refresh_implicit_weights()
        self._update_consensus(signals, explicit, implicit)

    def _update_consensus(self, signals: list[Signal], explicit: _Part, implicit: _Part) -> None:
        cfg = self.config
        # Per rater: their trust-weighted explicit sums (to leave them out of the consensus)
        # and unweighted ones (their own opinion, even once their trust is 0).
        own: dict[str, list[float]] = {}
        for s in signals:
            if not s.explicit or s.rater is None:
                continue
            base = self._explicit_w.get(s.name, 0.0) * s.strength
            sums = own.setdefault(s.rater, [0.0, 0.0, 0.0, 0.0])
            w = base * self.rater_weight(s.rater)
            sums[0] += w
            sums[1] += w * s.value
            sums[2] += base
            sums[3] += base * s.value
        for rater, (w, wv, base, base_v) in own.items():
            if base <= _EPS:
                continue
            others_w = explicit.weight - w + implicit.weight
            if others_w < cfg.consensus_min_evidence:
                continue
            consensus = (explicit.total - wv + implicit.total) / others_w
            stats = self._rater_stats(rater)
            stats.agreement.push(_clamp(base_v / base * consensus), cfg.rater_memory)
            stats.refresh(cfg)

    def _refresh_implicit_weights(self) -> None:
        # Every weight depends on the label base rate, which every calibrate() moves.
        cfg = self.config
        priors = cfg.implicit_prior_weights
        label_mean = self._label.mean
        weights = self._implicit_w
        for name in priors:
            if name not in self._calibration:
                weights[name] = priors[name]
        for name, calibration in self._calibration.items():
            weights[name] = calibration.weight(label_mean, priors.get(name, 0.0), cfg)

    def weights(self) -> dict[str, dict[str, float]]:
        """Effective weights {scenario: {signal: weight}}: explicit ones times the scenario's
        explicit share, implicit (calibrated) ones times the rest (mode applied)."""
        out: dict[str, dict[str, float]] = {}
        for scenario in SCENARIOS:
            share = self._share[scenario]
            row = {name: share * w for name, w in self._explicit_w.items()}
            row.update({name: (1.0 - share) * w for name, w in self._implicit_w.items()})
            out[scenario] = row
        return out

    # -- persistence

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable snapshot of all learned state (rater statistics in recency
        order, implicit calibration, label base rate). Rate-limit windows are transient
        and not included."""
        state = self._state_without_raters()
        state["raters"] = [[rater, stats.to_json()] for rater, stats in self._raters.items()]
        return state

    def state_changes(
        self, everything: bool = False
    ) -> tuple[dict[str, Any], list[list[Any]], list[str]]:
        """For a store that keeps one row per rater (with thousands of raters, writing all
        of them for every batch cost more than the batch): the learned state as
        ``state_dict`` gives it but without raters (``"raters"`` is empty), the raters
        changed since the last call (``everything``: all raters), in recency order, oldest
        first, as ``[rater, stats]`` like ``state_dict``, and the raters forgotten since.
        After ``load_state_dict`` the first call returns every rater."""
        # Every changed rater was moved to the end of _raters, and no other rater since the
        # last call: the changed ones are exactly the last len(_changed).
        n = len(self._raters) if everything else len(self._changed)
        changed = [[rater, stats.to_json()] for rater, stats in _last(self._raters, n)]
        forgotten = sorted(self._forgotten)
        self._changed.clear()
        self._forgotten.clear()
        return self._state_without_raters(), changed, forgotten

    def _state_without_raters(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "raters": [],
            "calibration": {
                name: [c.n, c.x, c.abs_x, c.u, c.u2] for name, c in self._calibration.items()
            },
            "label": [self._label.n, self._label.mean, self._label.var],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what ``state_dict`` saved (weights are recomputed from it)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported fusion state version {state.get('version')!r}")
        cfg = self.config
        self._raters = OrderedDict(
            (str(rater), RaterStats.from_json(data, cfg)) for rater, data in state["raters"]
        )
        self._changed = set(self._raters)  # state_changes() after a load returns them all
        self._forgotten = set()
        self._implicit_w = {}
        self._calibration = {
            name: _Calibration(int(n), float(x), float(abs_x), float(u), float(u2))
            for name, (n, x, abs_x, u, u2) in state["calibration"].items()
        }
        n, mean, var = state["label"]
        self._label = _Moments(int(n), float(mean), float(var))
        self._refresh_implicit_weights()


def _last(items: OrderedDict[str, RaterStats], n: int) -> list[tuple[str, RaterStats]]:
    """The last ``n`` items, in order."""
    out = list(itertools.islice(reversed(items.items()), n))
    out.reverse()
    return out


def _implicit_values(signals: list[Signal]) -> dict[str, float]:
    """Strength-weighted mean value of each implicit signal present (two copies or two
    dwell reports of one response are one observation of that signal)."""
    sums: dict[str, list[float]] = {}
    for s in signals:
        if s.explicit or s.strength <= 0.0:
            continue
        acc = sums.setdefault(s.name, [0.0, 0.0])
        acc[0] += s.strength
        acc[1] += s.strength * s.value
    return {name: total / w for name, (w, total) in sums.items()}
