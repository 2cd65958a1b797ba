"""Intents: what the player means, classified from a transcript by explainable rules.

No model is involved: the matcher is deterministic and every decision carries
a human-readable reason, so a writer can see why a line matched and tune the
examples. How a transcript is scored against one intent (the best rule wins):

=====================  =====  ==============================================
rule                   score  when
=====================  =====  ==============================================
``patterns``            1.0   the regular expression matches the normalised text
``examples`` (phrase)   1.0   the whole example phrase occurs in the transcript
``keywords``            0.8   the keyword (a word or short phrase) occurs
``examples`` (overlap)  0.9×  at least two of the example's content words occur;
                              score is 0.9 × the fraction of them present
=====================  =====  ==============================================

``exclude`` phrases veto the intent outright. An intent fires when its score
reaches ``min_score`` (default 0.5). Between intents, the higher score wins,
then the one that explains more of the transcript's words, then the exit listed
first. Normalising: lower case, curly quotes straightened, apostrophes dropped
("don't" -> "dont"), punctuation to spaces, and a light stemmer that strips a
plural ``s`` and ``ing``/``ed`` so "gates" matches "gate" and "opened" "open".
Content words are all words except a small list of fillers (``STOPWORDS``);
question words and negations are content words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import Field, PrivateAttr, field_validator

from npc_engine.yamlsrc import Sourced

# fmt: off
STOPWORDS = frozenset([
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "am", "to", "of", "and", "or", "in", "on",
    "at", "for", "with", "it", "its", "that", "this", "these", "those", "i", "im", "me", "my", "mine",
    "you", "youre", "your", "yours", "we", "us", "our", "he", "him", "his", "she", "her", "they", "them",
    "their", "there", "here", "do", "does", "did", "can", "could", "would", "will", "shall", "should",
    "may", "might", "must", "so", "just", "please", "hey", "oh", "um", "uh", "er", "well", "then", "than",
    "also", "too", "very", "really", "some", "any", "all", "as", "by", "from", "about", "into", "up",
    "out", "if", "but", "like", "ok", "okay", "yes", "yeah", "hi", "ill", "ive", "id",
])
# fmt: on
DEFAULT_MIN_SCORE = 0.5
_WORD = re.compile(r"[a-z0-9']+")


def normalise(text: str) -> str:
    """Lower case, straightened and dropped apostrophes, punctuation to single spaces."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(w.replace("'", "") for w in _WORD.findall(text) if w.replace("'", ""))


def stem(word: str) -> str:
    """A deliberately tiny stemmer: predictable beats clever for writers tuning examples."""
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True, slots=True)
class Words:
    """A normalised text: stemmed words and which of them carry content."""

    text: str
    stems: tuple[str, ...]
    content: frozenset[str]

    @classmethod
    def of(cls, text: str) -> Words:
        norm = normalise(text)
        raw = norm.split()
        stems = tuple(stem(w) for w in raw)
        content = frozenset(s for w, s in zip(raw, stems, strict=True) if w not in STOPWORDS)
        return cls(norm, stems, content)

    def find(self, phrase: tuple[str, ...]) -> bool:
        """Whether ``phrase`` (stems) occurs as consecutive words."""
        n = len(phrase)
        if n == 0:
            return False
        return any(self.stems[i : i + n] == phrase for i in range(len(self.stems) - n + 1))


@dataclass(frozen=True, slots=True)
class IntentMatch:
    """How well one intent matched a transcript, and why."""

    intent: str
    score: float
    reason: str
    coverage: int = 0  # distinct transcript words the intent's rules explained

    def __str__(self) -> str:
        return f"{self.intent} {self.score:.2f}: {self.reason}"


class Intent(Sourced):
    """A named player intent (its name is its key under ``intents:``)."""

    INJECTED = frozenset({"name"})

    name: str
    examples: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    min_score: float = Field(DEFAULT_MIN_SCORE, gt=0.0, le=1.0)

    _compiled: tuple[list[re.Pattern[str]], list[Words], list[Words], list[Words]] | None = PrivateAttr(
        default=None
    )

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for p in value:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a valid regular expression: {e}") from None
        return value

    @field_validator("examples", "keywords", "exclude")
    @classmethod
    def _has_words(cls, value: list[str]) -> list[str]:
        for phrase in value:
            if not normalise(phrase):
                raise ValueError(f"{phrase!r} has no words to match")
        return value

    def _rules(self) -> tuple[list[re.Pattern[str]], list[Words], list[Words], list[Words]]:
        if self._compiled is None:
            self._compiled = (
                [re.compile(p) for p in self.patterns],
                [Words.of(e) for e in self.examples],
                [Words.of(k) for k in self.keywords],
                [Words.of(x) for x in self.exclude],
            )
        return self._compiled

    def score(self, text: str | Words) -> IntentMatch:
        """Score a transcript against this intent (0.0 when nothing matches)."""
        words = text if isinstance(text, Words) else Words.of(text)
        patterns, examples, keywords, excludes = self._rules()
        for ex, raw in zip(excludes, self.exclude, strict=True):
            if words.find(ex.stems):
                return IntentMatch(self.name, 0.0, f"excluded by {raw!r}")
        best: tuple[float, str] = (0.0, "no rule matched")
        covered: set[str] = set()

        def offer(score: float, reason: str) -> None:
            nonlocal best
            if score > best[0]:
                best = (score, reason)

        for pat, raw in zip(patterns, self.patterns, strict=True):
            m = pat.search(words.text)
            if m:
                offer(1.0, f"pattern {raw!r}")
                covered.update(stem(w) for w in m.group().split())
        for ex, raw in zip(examples, self.examples, strict=True):
            if words.find(ex.stems):
                offer(1.0, f"example {raw!r}")
                covered.update(ex.stems)
                continue
            hits = ex.content & words.content
            if len(hits) >= 2:
                offer(
                    0.9 * len(hits) / len(ex.content),
                    f"example {raw!r} ({len(hits)}/{len(ex.content)} words)",
                )
                covered.update(hits)
        for kw, raw in zip(keywords, self.keywords, strict=True):
            if words.find(kw.stems):
                offer(0.8, f"keyword {raw!r}")
                covered.update(kw.stems)
        return IntentMatch(self.name, round(best[0], 3), best[1], len(covered & set(words.stems)))

    def matches(self, text: str | Words) -> bool:
        return self.score(text).score >= self.min_score


def rank(text: str, intents: list[Intent]) -> list[IntentMatch]:
    """Every intent scored against ``text``, best first (ties keep the given order)."""
    words = Words.of(text)
    scored = [i.score(words) for i in intents]
    order = {m.intent: n for n, m in enumerate(scored)}
    return sorted(scored, key=lambda m: (-m.score, -m.coverage, order[m.intent]))


def classify(text: str, intents: list[Intent]) -> IntentMatch | None:
    """The winning intent among ``intents`` (in tie-break order), or None if none reaches its min_score."""
    by_name = {i.name: i for i in intents}
    for m in rank(text, intents):
        if m.score >= by_name[m.intent].min_score:
            return m
    return None
