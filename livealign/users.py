"""Simulated users: a hidden preference over answers, and the feedback it makes them give.

The system never sees anything in this module. It sees only what these users do through
the public API: thumbs, ratings, edits, comments, copy/regenerate clicks and dwell time.
Each user's taste is one *family* of scoring function (``score``), which turns an answer
into a utility in [0, 1]; how the user *perceives* an answer is that utility plus noise.

Feedback mirrors real products: explicit feedback is sparse (a few percent of answers),
implicit feedback is dense and noisy. A configurable share of users is adversarial
(random or inverted votes), to exercise the processor's cleaning.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from streaming.kinds import FeedbackKind

Family = Literal["concise", "list", "warm", "avoid_phrase"]
Adversary = Literal["random", "inverted"]
FAMILIES: tuple[Family, ...] = ("concise", "list", "warm", "avoid_phrase")

_WORD = re.compile(r"\S+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
_WARM = (
    "happy to",
    "glad",
    "great question",
    "hope this helps",
    "you're welcome",
    "enjoy",
    "good luck",
    "wonderful",
    "!",
)


class PopulationConfig(BaseModel):
    """Who the users are and how they give feedback. Rates are per answer seen."""

    families: dict[Family, float] = Field(
        default_factory=lambda: _only("concise"),
        description="Share of users whose hidden preference is each family (normalized).",
    )
    phrase: str = Field("sure", description="What `avoid_phrase` users dislike seeing.")
    concise_words: tuple[int, int] = Field(
        (10, 40),
        description="`concise` utility is 1 at or under the first word count and 0 at or "
        "over the second, linear between.",
    )
    noise: float = Field(0.15, ge=0, description="Std dev of a user's perception noise.")
    adversarial_share: float = Field(0.1, ge=0, le=1, description="Share of adversarial users.")
    adversary: Adversary = Field("inverted", description="random: coin-flip votes; inverted.")
    explicit_rate: float = Field(0.05, ge=0, le=1, description="A thumb or a rating.")
    thumb_share: float = Field(0.6, ge=0, le=1, description="Of explicit votes, thumbs.")
    edit_rate: float = Field(0.02, ge=0, le=1, description="An edit, when displeased.")
    comment_rate: float = Field(0.02, ge=0, le=1, description="A free-text comment.")
    dwell_rate: float = Field(0.8, ge=0, le=1, description="Dwell time reported.")
    copy_rate: float = Field(0.4, ge=0, le=1, description="Copy, for a fully pleased user.")
    regenerate_rate: float = Field(
        0.3, ge=0, le=1, description="Regenerate, for a fully displeased user."
    )
    adversarial_vote_rate: float = Field(
        0.5, ge=0, le=1, description="Votes per answer of an adversarial user (no implicit)."
    )

    def shares(self) -> dict[Family, float]:
        total = sum(max(v, 0.0) for v in self.families.values())
        if total <= 0:
            raise ValueError("families: at least one family needs a positive share")
        return {f: max(v, 0.0) / total for f, v in self.families.items()}


def _only(family: Family) -> dict[Family, float]:
    return {family: 1.0}


def n_words(text: str) -> int:
    return len(_WORD.findall(text))


def score(family: Family, text: str, config: PopulationConfig, prompt: str = "") -> float:
    """The hidden utility of `text` for a user of `family`, in [0, 1]: how well it suits
    the user's taste, times whether it is an answer at all (`quality`)."""
    return _taste(family, text, config) * quality(text, prompt)


def _taste(family: Family, text: str, config: PopulationConfig) -> float:
    if family == "concise":
        low, high = config.concise_words
        return _clamp((high - n_words(text)) / max(high - low, 1))
    if family == "list":
        return min(1.0, len(_LIST_ITEM.findall(text)) / 3)
    if family == "warm":
        lowered = text.lower()
        return min(1.0, 0.2 + 0.4 * sum(lowered.count(m) > 0 for m in _WARM))
    return 0.0 if _contains(text, config.phrase) else 1.0


def quality(text: str, prompt: str = "") -> float:
    """Every user wants an answer: one that repeats itself ("1. 1. 1. 1.") is worth
    little, and one that never mentions what was asked about is worth less. Without this
    a taste such as `concise` would reward any short noise, and so would the benchmark."""
    words = [w.strip(".,!?;:\"'()").lower() for w in text.split()]
    words = [w for w in words if w]
    if not words:
        return 0.0
    bigrams = list(itertools.pairwise(words))
    distinct = len(set(bigrams)) / len(bigrams) if bigrams else 1.0
    coherent = _clamp((distinct - 0.5) / 0.4)  # >= 90% distinct bigrams: 1; <= 50%: 0
    topics = {w[:5] for w in re.findall(r"[a-z]{4,}", prompt.lower()) if w not in _COMMON}
    on_topic = not topics or any(w[:5] in topics for w in words)
    return coherent * (1.0 if on_topic else 0.4)


# Words of a prompt that say nothing about its topic (for `quality`'s on-topic test).
_COMMON = frozenset(
    re.findall(
        r"\w+",
        """what which when where while whom whose that this these those there their them they
        then than with from into onto over under about above after before some more most much
        many very just only also does doing done have having make makes made give gives tell
        explain describe define write list name suggest show help need want like would could
        should shall will your yours mine ours each every other another same such good best
        better ways tips idea ideas thing things simple short quick plain words sentence
        sentences difference between someone something anyone anything here know think feel
        really please thanks favourite favorite""",
    )
)


def judge(text: str, config: PopulationConfig, prompt: str = "") -> float:
    """The population's mean utility: the benchmark's judge of an answer."""
    taste = sum(share * _taste(f, text, config) for f, share in config.shares().items())
    return taste * quality(text, prompt)


def rewrite(family: Family, text: str, config: PopulationConfig) -> str:
    """What a user of `family` edits the answer into: their own better version."""
    sentences = [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]
    if family == "concise":
        kept: list[str] = []
        for sentence in sentences or [text.strip()]:
            if kept and n_words(" ".join([*kept, sentence])) > config.concise_words[0]:
                break
            kept.append(sentence)
        short = " ".join(kept)
        words = short.split()
        if len(words) > config.concise_words[0]:  # one long sentence: cut it
            short = " ".join(words[: config.concise_words[0]]).rstrip(",;:") + "."
        return short
    if family == "list":
        return "\n".join(f"- {s}" for s in sentences[:5]) or f"- {text.strip()}"
    if family == "warm":
        return f"Happy to help! {text.strip()} Hope this helps!"
    cleaned = re.sub(rf"\b{re.escape(config.phrase)}\b[,!.]?\s*", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", cleaned).strip() or "OK."


_COMMENTS: dict[Family, tuple[str, str]] = {
    "concise": ("Short and clear, great answer!", "Too long and rambling, not helpful."),
    "list": ("Nice clear list, thanks!", "Hard to read, a bad wall of text."),
    "warm": ("Friendly and helpful, I love it!", "Cold and curt, not nice."),
    "avoid_phrase": ("Good answer, thanks!", "Annoying phrasing, I hate it."),
}


@dataclass(frozen=True)
class Action:
    """One piece of feedback, as the API takes it (`kind`, `value`)."""

    kind: FeedbackKind
    value: int | float | str


@dataclass(frozen=True)
class SimUser:
    user_id: str
    family: Family
    adversary: Adversary | None = None

    def utility(self, text: str, config: PopulationConfig, prompt: str = "") -> float:
        return score(self.family, text, config, prompt)

    def react(
        self,
        text: str,
        config: PopulationConfig,
        rng: random.Random,
        can_regenerate: bool = True,
        prompt: str = "",
    ) -> list[Action]:
        """The feedback this user gives on one answer to `prompt` (possibly none)."""
        if self.adversary is not None:
            return self._vote_badly(text, config, rng, prompt)
        pleased = _clamp(self.utility(text, config, prompt) + rng.gauss(0.0, config.noise))
        actions: list[Action] = []
        if rng.random() < config.explicit_rate:
            actions.append(_vote(pleased, config, rng))
        if pleased < 0.5 and rng.random() < config.edit_rate:
            edited = rewrite(self.family, text, config)
            if edited.strip() != text.strip():
                actions.append(Action(FeedbackKind.edit, edited))
        if rng.random() < config.comment_rate:
            good, bad = _COMMENTS[self.family]
            actions.append(Action(FeedbackKind.comment, good if pleased >= 0.5 else bad))
        if rng.random() < config.dwell_rate:
            actions.append(Action(FeedbackKind.dwell, dwell_ms(pleased, rng)))
        if rng.random() < config.copy_rate * pleased:
            actions.append(Action(FeedbackKind.click, "copy"))
        if can_regenerate and rng.random() < config.regenerate_rate * (1.0 - pleased):
            actions.append(Action(FeedbackKind.click, "regenerate"))
        return actions

    def _vote_badly(
        self, text: str, config: PopulationConfig, rng: random.Random, prompt: str
    ) -> list[Action]:
        """Vote rigging: many votes, no reading (so no implicit signals)."""
        if rng.random() >= config.adversarial_vote_rate:
            return []
        if self.adversary == "random":
            pleased = rng.random()
        else:
            pleased = 1.0 - _clamp(
                self.utility(text, config, prompt) + rng.gauss(0.0, config.noise)
            )
        return [_vote(pleased, config, rng)]


def _vote(pleased: float, config: PopulationConfig, rng: random.Random) -> Action:
    if rng.random() < config.thumb_share:
        return Action(FeedbackKind.thumb, 1 if pleased >= 0.5 else -1)
    return Action(FeedbackKind.rating, 1 + round(4 * pleased))


def dwell_ms(pleased: float, rng: random.Random) -> int:
    """Satisfied readers stay longer: ~15 s at indifference, x4.5 either way at the
    extremes, with log-normal spread (people read at different speeds)."""
    return int(15_000 * math.exp(1.5 * (2 * pleased - 1) + rng.gauss(0.0, 0.5)))


def make_users(n: int, config: PopulationConfig, seed: int) -> list[SimUser]:
    """`n` users, families drawn by share, a share of them adversarial. Deterministic."""
    rng = random.Random(seed)
    shares = config.shares()
    families, weights = list(shares), list(shares.values())
    n_bad = round(n * config.adversarial_share)
    users = []
    for i in range(n):
        family = rng.choices(families, weights)[0]
        users.append(
            SimUser(f"sim-user-{seed}-{i}", family, config.adversary if i < n_bad else None)
        )
    rng.shuffle(users)
    return users


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text, flags=re.IGNORECASE) is not None


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))
