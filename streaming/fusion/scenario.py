"""Which scenario a conversation is: safety-sensitive, open-domain, or general.

The scenario sets the prior share of explicit signals in a response's score: explicit
feedback counts more where a wrong answer can hurt, implicit behaviour more in chit-chat.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from streaming.events import AnyInteraction
from streaming.fusion.config import FusionConfig, Scenario

# ASCII punctuation becomes a space; lower-cased text is then split on whitespace (several
# times faster than a tokenizing regex, and the same function cuts keywords and prompts).
_PUNCTUATION_TO_SPACE = str.maketrans(dict.fromkeys(string.punctuation, " "))
# Only the end of a long conversation is scanned: enough to find the topic, bounded cost.
_SCAN_CHARS = 4000
# Prompts whose scenario a detector remembers (oldest forgotten first): at most ~16 MB.
_MEMO_SIZE = 4096


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


class ScenarioDetector:
    """Classifies a conversation by keywords in the user's messages (system prompts are
    ignored: a "never give medical advice" instruction does not make every chat medical).
    Safety wins over open-domain; neither -> general."""

    def __init__(self, config: FusionConfig) -> None:
        self._safety = KeywordMatcher(config.safety_keywords)
        self._open_domain = KeywordMatcher(config.open_domain_keywords)
        self._memo: dict[str, Scenario] = {}

    def detect(self, interaction: AnyInteraction) -> Scenario:
        # The fuser asks once per event, so a response's prompt is classified again and
        # again; a memo keyed by the text itself (not the response id) is never stale.
        text = "\n".join(m.content for m in interaction.messages if m.role == "user")
        text = text[-_SCAN_CHARS:]
        scenario = self._memo.get(text)
        if scenario is None:
            scenario = self._classify(text)
            if len(self._memo) >= _MEMO_SIZE:
                del self._memo[next(iter(self._memo))]
            self._memo[text] = scenario
        return scenario

    def _classify(self, text: str) -> Scenario:
        tokens = _tokens(text)
        unique = set(tokens)
        if self._safety.search(tokens, unique):
            return "safety"
        if self._open_domain.search(tokens, unique):
            return "open_domain"
        return "general"
