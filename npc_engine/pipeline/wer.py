"""Word error rate with the light normalisation speech tests need.

Both sides are lower-cased, digits become words ("3" → "three", so a recogniser
that writes numbers is not penalised), hyphens split words, apostrophes are
unified, and other punctuation is dropped before the word-level edit distance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def _spell_number(match: re.Match[str]) -> str:
    try:
        from num2words import num2words

        return f" {num2words(float(match.group()) if '.' in match.group() else int(match.group()))} "
    except (ImportError, OverflowError, ValueError):
        return f" {match.group()} "


def normalize(text: str) -> list[str]:
    """Words of ``text`` in a form two transcripts of the same speech agree on."""
    text = text.lower().replace("’", "'").replace("‘", "'")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 → 1000
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"[-–—]", " ", text)
    text = _NON_WORD.sub(" ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions all cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis; 0.0 when both are empty, 1.0 per word when only one is."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else float(len(hyp))
    return edit_distance(ref, hyp) / len(ref)


def corpus_wer(pairs: Sequence[tuple[str, str]]) -> float:
    """WER over many (reference, hypothesis) pairs: total edits over total reference words."""
    edits = words = 0
    for reference, hypothesis in pairs:
        ref, hyp = normalize(reference), normalize(hypothesis)
        edits += edit_distance(ref, hyp)
        words += len(ref)
    return edits / words if words else 0.0
