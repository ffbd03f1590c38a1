"""Simulated users: a hidden preference over answers, and the feedback it makes them give.

The system never sees anything in this module. It sees only what these users do through
the public API: thumbs, ratings, edits, comments, copy/regenerate clicks and dwell time.
Each user's taste is one *family* of scoring function (``score``), which turns an answer
into a utility in [0, 1]; how the user *perceives* an answer is that utility plus noise.

Feedback mirrors real products: explicit feedback is sparse (a few percent of answers),
implicit feedback is dense and noisy. A configurable share of users is adversarial
(random or inverted votes), to exercise the processor's cleaning. ``realistic()`` is the
feedback mix the learning benchmark runs on.

The families, what each user wants (``_taste``) and how they edit an answer they dislike
(``rewrite``: always the model's own answer, moved toward the taste, its content kept):

- ``concise``: short answers (a word count); edit: keep the first sentences.
- ``list``: answers as a list of at least three items; edit: one item a sentence.
- ``warm``: friendly wording; edit: a friendly opening and closing.
- ``avoid_phrase``: never the phrase ``PopulationConfig.phrase``; edit: strike it.
- ``summary``: the answer opens with a one-line summary ("In short: ..."); edit: the
  first sentence becomes that line.
- ``bold``: the key term of the question in **bold**; edit: bold its first mention.

``summary`` and ``bold`` were added for the learning benchmark: SmolLM2-135M-Instruct
almost never does either by itself (of its greedy 80-token answers to the 70 prompts the
benchmark holds out, none opened with a summary; 2 bolded the question's key term and 6
something else), neither rewards a shorter answer (so learning them is learning a
preference, not learning to stop early), and both sit at the start of an answer or in
its first sentence, where an answer cut off at 80 tokens still shows them.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from streaming.kinds import FeedbackKind

Family = Literal["concise", "list", "warm", "avoid_phrase", "summary", "bold"]
Adversary = Literal["random", "inverted"]
FAMILIES: tuple[Family, ...] = ("concise", "list", "warm", "avoid_phrase", "summary", "bold")

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


# The feedback mix of a chat product, which the learning benchmark runs on (the defaults
# above are sparser, and are what `livealign simulate` sends): every answer is read (dwell
# on each), a pleased user sometimes copies it, about one answer in eight gets a thumb or
# a rating, a user edits a fifth of the answers they dislike into what they wanted, a
# displeased one sometimes regenerates, and comments are rare. Adversaries as in the
# defaults: 10% of the users, inverted votes on half the answers they see, no reading.
REALISTIC: dict[str, float] = {
    "dwell_rate": 1.0,
    "copy_rate": 0.3,
    "explicit_rate": 0.12,
    "edit_rate": 0.2,
    "regenerate_rate": 0.2,
    "comment_rate": 0.01,
}


def realistic(families: Mapping[str, float], **overrides: Any) -> PopulationConfig:
    """A population with `families` (name -> share) and the REALISTIC feedback mix; any
    other PopulationConfig field (or a rate) in `overrides`."""
    return PopulationConfig.model_validate({**REALISTIC, "families": dict(families), **overrides})


def n_words(text: str) -> int:
    return len(_WORD.findall(text))


def score(family: Family, text: str, config: PopulationConfig, prompt: str = "") -> float:
    """The hidden utility of `text` for a user of `family`, in [0, 1]: how well it suits
    the user's taste, times whether it is an answer at all (`quality`)."""
    return _taste(family, text, config, prompt) * quality(text, prompt)


def _taste(family: Family, text: str, config: PopulationConfig, prompt: str = "") -> float:
    if family == "concise":
        low, high = config.concise_words
        return _clamp((high - n_words(text)) / max(high - low, 1))
    if family == "list":
        return min(1.0, len(_LIST_ITEM.findall(text)) / 3)
    if family == "warm":
        lowered = text.lower()
        return min(1.0, 0.2 + 0.4 * sum(lowered.count(m) > 0 for m in _WARM))
    if family == "summary":
        # The gist first, where the eye lands: an opening "In short: ..." is what this
        # user wants; a summary further down (a closing "In summary, ...") is worth a
        # little; none, nothing.
        if _SUMMARY_OPENING.match(text.strip()):
            return 1.0
        return 0.3 if _SUMMARY_ANYWHERE.search(text) else 0.0
    if family == "bold":
        # The question's key term in bold, to find the answer at a glance: a short bold
        # span naming a topic word of the prompt. Bolding something else is half of it
        # (SmolLM2 bolds list headings now and then: "1. **Preparation**: ...").
        return _bold_taste(text, prompt)
    return 0.0 if _contains(text, config.phrase) else 1.0


def _bold_taste(text: str, prompt: str) -> float:
    spans = _BOLD.findall(text)
    if not spans:
        return 0.0
    topics = _topics(prompt)
    if not topics:
        return 1.0
    key = any(len(span.split()) <= 5 and _topics(span) & topics for span in spans)
    return 1.0 if key else 0.5


def quality(text: str, prompt: str = "") -> float:
    """Every user wants an answer: one that repeats itself ("1. 1. 1. 1.") is worth
    little, and one that never mentions what was asked about is worth less. Without this
    a taste such as `concise` would reward any short noise, and so would the benchmark."""
    # Markdown is not a word: "**basil**" mentions basil, "- Water it" is two words.
    words = [w.strip(".,!?;:\"'()*-•#`").lower() for w in text.split()]
    words = [w for w in words if w]
    if not words:
        return 0.0
    bigrams = list(itertools.pairwise(words))
    distinct = len(set(bigrams)) / len(bigrams) if bigrams else 1.0
    coherent = _clamp((distinct - 0.5) / 0.4)  # >= 90% distinct bigrams: 1; <= 50%: 0
    topics = _topics(prompt)
    on_topic = not topics or any(w[:5] in topics for w in words)
    return coherent * (1.0 if on_topic else 0.4)


def _topics(prompt: str) -> set[str]:
    """What a prompt is about: the first five letters of each of its words of four or
    more letters that are not common words (so "plants" and "plant" match)."""
    return {w[:5] for w in _TOPIC_WORD.findall(prompt.lower()) if w not in _COMMON}


_TOPIC_WORD = re.compile(r"[a-z]{4,}")

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


def rewrite(family: Family, text: str, config: PopulationConfig, prompt: str = "") -> str:
    """What a user of `family` edits the answer into: their own better version of it
    (the model's answer, its content kept, moved toward the taste)."""
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
        return _listed(text)
    if family == "warm":
        return f"Happy to help! {text.strip()} Hope this helps!"
    if family == "summary":
        return _summarized(text)
    if family == "bold":
        return _bolded(text, prompt)
    cleaned = re.sub(rf"\b{re.escape(config.phrase)}\b[,!.]?\s*", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", cleaned).strip() or "OK."


def _listed(text: str) -> str:
    """One list item a sentence. Lines that are list items already stay as they are, a
    sentence ending in ':' stays as the lead-in of the list after it, code stays code."""
    out: list[str] = []
    in_code = False
    for line in text.strip().splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            out.append(line.rstrip())
        elif in_code:
            out.append(line.rstrip())
        elif not stripped:
            continue
        elif _LIST_ITEM.match(line):
            out.append(stripped)
        else:
            sentences = _sentences(stripped)
            lead_in = sentences.pop() if sentences[-1].endswith(":") else None
            out += [f"- {s}" for s in sentences]
            out += [lead_in] if lead_in else []
    return "\n".join(out)


def _summarized(text: str) -> str:
    """The answer's first sentence becomes its one-line summary, "In short: ...", and the
    rest follows (nothing added, nothing repeated: a user moves the gist up front)."""
    body = text.strip()
    if not body or _SUMMARY_OPENING.match(body):
        return body
    first_line, _, other_lines = body.partition("\n")
    if first_line.strip().startswith("```"):  # the answer opens with code
        return f"In short: the code below.\n\n{body}"
    first, *rest = _sentences(first_line.strip())
    summarized = f"In short: {_LIST_MARK.sub('', first, count=1)}"
    if rest:
        summarized += "\n\n" + " ".join(rest)
    return summarized + (f"\n{other_lines}" if other_lines.strip() else "")


def _bolded(text: str, prompt: str) -> str:
    """The first mention of the prompt's topic (outside code and bold) in **bold**, with
    the topic words right after it ("**monthly budget**"); where the answer never names
    the topic, its first long word (half the taste, but closer)."""
    if _bold_taste(text, prompt) == 1.0:
        return text
    topics = _topics(prompt)
    protected = [m.span() for m in _PROTECTED.finditer(text)]
    tokens = [
        m for m in _WORD_TOKEN.finditer(text) if not any(a <= m.start() < b for a, b in protected)
    ]

    def topical(m: re.Match[str]) -> bool:
        word = m.group().lower()
        return len(word) >= 4 and word[:5] in topics

    for i, m in enumerate(tokens):
        if topical(m):
            end = m.end()
            for after in tokens[i + 1 : i + 4]:  # a term of up to four words
                if not topical(after) or text[end : after.start()] != " ":
                    break
                end = after.end()
            return f"{text[: m.start()]}**{text[m.start() : end]}**{text[end:]}"
    for m in tokens:
        if len(m.group()) >= 6 and m.group().lower() not in _COMMON:
            return f"{text[: m.start()]}**{m.group()}**{text[m.end() :]}"
    return text


def _sentences(line: str) -> list[str]:
    """The sentences of one line: split after . ! ? (not after a digit, so that "1." and
    "3.5" stay where they are)."""
    return [s.strip() for s in _SENTENCE_END.split(line) if s.strip()] or [line]


_SENTENCE_END = re.compile(r"(?<=[^\s\d][.!?])\s+")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_BOLD = re.compile(r"\*\*([^*\n]+?)\*\*")
_WORD_TOKEN = re.compile(r"[A-Za-z](?:[A-Za-z'-]*[A-Za-z])?")
# Code (fenced, possibly cut off before its closing fence; inline) and bold spans.
_PROTECTED = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`|\*\*[^*\n]+?\*\*", re.DOTALL)
_SUMMARY_MARKERS = (
    r"in short|in brief|in summary|in a nutshell|to sum up|tl;?dr|short answer"
    r"|(?:the )?bottom line|summary(?=:)"
)
_SUMMARY_OPENING = re.compile(rf"^\W*(?:{_SUMMARY_MARKERS})(?![a-z])", re.IGNORECASE)
_SUMMARY_ANYWHERE = re.compile(rf"\b(?:{_SUMMARY_MARKERS})(?![a-z])", re.IGNORECASE)


_COMMENTS: dict[Family, tuple[str, str]] = {
    "concise": ("Short and clear, great answer!", "Too long and rambling, not helpful."),
    "list": ("Nice clear list, thanks!", "Hard to read, a bad wall of text."),
    "warm": ("Friendly and helpful, I love it!", "Cold and curt, not nice."),
    "avoid_phrase": ("Good answer, thanks!", "Annoying phrasing, I hate it."),
    "summary": ("Great, the gist up front, really helpful!", "Bad, I hate digging for the point."),
    "bold": ("Nice, easy to skim, the key term stands out!", "Hard to skim, not helpful."),
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
            edited = rewrite(self.family, text, config, prompt)
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
