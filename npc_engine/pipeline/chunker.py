"""Cut a streaming LLM reply into speakable chunks: a short first fragment, then sentences.

TTS latency grows with the length of what it is given, so the first chunk is a
short clause (cut at a comma or similar once it has a couple of words, or after
a few words at most): the NPC starts talking while the rest is still being
generated. Later chunks are whole sentences, which sound better, capped in
length so a run-on sentence cannot stall the voice: the cap grows with what has been said
(at most ``grow`` times the text already cut, from ``grow_floor`` up to ``max_chars``), so
the next chunk renders while the audio already sent plays (a short "Dear!" is not followed
by a 30-word sentence that takes seconds to render).

The cue parser upstream strips markup, but this is the last gate before the
voice, so it also drops anything in ``[brackets]``, ``*asterisks*`` or
``<tags>`` itself: an unclosed one at the end of the stream is dropped too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words that end with a full stop without ending the sentence.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "sr", "jr", "mt", "ft", "vs", "etc", "no", "lt", "capt", "sgt",
    "gen", "col", "prof", "rev", "e.g", "i.e", "approx",
})
# Don't end a first fragment on these: "I found the" sounds broken in a way "I found" does not.
_WEAK_ENDINGS = frozenset({
    "a", "an", "the", "to", "of", "and", "or", "but", "in", "on", "at", "for", "with", "my", "your",
    "his", "her", "their", "our", "its", "is", "was", "are", "were", "be", "am", "i", "you", "we",
    "they", "that", "this", "from", "by", "as", "if", "so", "not", "no", "into", "onto", "upon", "than",
    "has", "have", "had", "will", "would", "can", "could", "should", "shall", "must", "do", "does", "did",
})

_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)")
_CLAUSE_END = re.compile(r"(?:[,;:]+[\"'”’)]*(?=\s)|\s[-–—]{1,2}(?=\s)|[–—](?=\S))")
_SPACE = re.compile(r"\s+")
_CLOSERS = {"[": "]", "*": "*", "<": ">"}


@dataclass(frozen=True, slots=True)
class ChunkerConfig:
    first_min_words: int = 2  # a clause boundary cuts the first fragment once it has this many words
    # ... and this many characters. Kokoro's cost is ~0.2 s fixed plus ~0.3 s per second of
    # audio (about 15 characters a second), and the next chunk renders while the first one
    # plays: a fragment under ~0.8 s of audio ("Hm, yes,") saves ~0.1 s of first audio and
    # then stalls. Measured with bench/first_fragment.py; docs/architecture.md has the table.
    first_min_chars: int = 12
    first_max_words: int = 5  # ... and a word gap cuts it here if no boundary came first
    max_chars: int = 220  # later chunks: a sentence, cut at a clause (else a word) beyond this
    # ... or beyond ``grow`` × the characters already cut, at least ``grow_floor``. Synthesis
    # takes ~0.2 s + 0.3 s per second of audio on an idle core (2-3x that when loaded), so a
    # chunk about twice as long as what is queued is ready before that has played.
    grow: float = 2.0
    grow_floor: int = 40
    weak_ending_grace: int = 2  # extra words allowed to avoid ending the fragment on "the", "to"...


class ClauseChunker:
    """Feed text deltas with ``feed``; get back chunks ready to speak. ``flush`` at the end of the stream.

    One instance per reply (or call ``reset``). Pure logic: no models, no I/O.
    """

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self.reset()

    def reset(self) -> None:
        self._buf = ""  # speakable text not yet emitted
        self._markup: list[str] = []  # stack of closers we are waiting for
        self._first_done = False
        self._said = 0  # characters cut into chunks so far

    @property
    def first_emitted(self) -> bool:
        return self._first_done

    @property
    def pending(self) -> str:
        """Text fed but not yet cut into a chunk (what a reply stopped now would leave unsaid)."""
        return self._buf

    def feed(self, delta: str) -> list[str]:
        self._buf += self._strip_markup(delta)
        chunks: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            self._emit(self._buf[:cut], chunks)
            self._buf = self._buf[cut:]
        return chunks

    def flush(self) -> list[str]:
        """The rest of the reply (an unclosed ``[``/``*``/``<`` span is dropped), then reset."""
        chunks: list[str] = []
        while len(self._buf) > self._limit():
            cut = self._overlong_cut(self._buf) or len(self._buf)
            self._emit(self._buf[:cut], chunks)
            self._buf = self._buf[cut:]
        self._emit(self._buf, chunks)
        self.reset()
        return chunks

    # ------------------------------------------------------------------ internals

    def _strip_markup(self, delta: str) -> str:
        out: list[str] = []
        for ch in delta:
            if self._markup:
                if ch == self._markup[-1]:
                    self._markup.pop()
                elif ch == "[" and self._markup[-1] == "]":
                    self._markup.append("]")
                continue
            if ch in _CLOSERS:
                self._markup.append(_CLOSERS[ch])
                # Markup between two words must not glue them together.
                out.append(" ")
                continue
            out.append(ch)
        return "".join(out)

    def _emit(self, text: str, chunks: list[str]) -> None:
        text = _SPACE.sub(" ", text).strip()
        # Stray punctuation ("...", "—") has nothing to say; spaces before punctuation came from markup.
        text = re.sub(r"\s+([,.;:!?…])", r"\1", text)
        if any(c.isalnum() for c in text):
            chunks.append(text)
            self._first_done = True
            self._said += len(text)

    def _find_cut(self) -> int | None:
        buf = self._buf
        sentence = self._sentence_cut(buf)
        if not self._first_done:
            candidates = [c for c in (sentence, self._first_fragment_cut(buf)) if c is not None]
            return min(candidates) if candidates else None
        limit = self._limit()
        if sentence is not None and sentence <= limit:
            return sentence
        if len(buf) > limit:
            return self._overlong_cut(buf, final=False)
        return None  # a sentence longer than the cap: cut once the cap is reached

    def _limit(self) -> int:
        """The longest chunk to cut now: it grows with what has been said (see ``grow``)."""
        cfg = self.config
        return min(cfg.max_chars, max(cfg.grow_floor, int(cfg.grow * self._said)))

    def _sentence_cut(self, buf: str) -> int | None:
        for match in _SENTENCE_END.finditer(buf):
            if _is_abbreviation(buf, match.start()) or not _has_words(buf[:match.end()]):
                continue
            return match.end()
        return None

    def _first_fragment_cut(self, buf: str) -> int | None:
        cfg = self.config
        for match in _CLAUSE_END.finditer(buf):
            if _word_count(buf[:match.start()]) >= cfg.first_min_words and len(buf[:match.end()].strip()) >= cfg.first_min_chars:
                return match.end()
        # No clause boundary yet: cut at a word gap once enough words are in (the gap proves the word is whole).
        gaps = [m.start() for m in re.finditer(r"\s+", buf) if _has_words(buf[:m.start()])]
        if len(gaps) < cfg.first_max_words:
            return None
        for extra in range(cfg.weak_ending_grace + 1):
            index = cfg.first_max_words - 1 + extra
            if index >= len(gaps):
                return None  # wait for the word that would let us avoid a weak ending
            words = buf[:gaps[index]].split()
            if words[-1].strip("\"'”’“‘").lower() not in _WEAK_ENDINGS:
                return gaps[index]
        return gaps[cfg.first_max_words - 1 + cfg.weak_ending_grace]

    def _overlong_cut(self, buf: str, final: bool = True) -> int | None:
        """Where to cut a sentence longer than the cap: at its last clause end, else between
        words (not after "the", "to"...). Under a growing cap a clause end up to a quarter
        past it is better than a cut between words; while that could still come (``final``
        False: more text may follow), wait for it."""
        limit = self._limit()
        reach = limit if limit >= self.config.max_chars else limit + limit // 4
        clause = [m.end() for m in _CLAUSE_END.finditer(buf[:reach])]
        if clause and clause[-1] > limit // 3:
            return clause[-1]
        if not final and len(buf) <= reach:
            return None
        spaces = [m.start() for m in re.finditer(r"\s+", buf[:limit]) if m.start() > 0]
        for space in reversed(spaces):
            if buf[:space].split()[-1].strip("\"'”’“‘,").lower() not in _WEAK_ENDINGS:
                return space
        return spaces[-1] if spaces else limit


def _word_count(text: str) -> int:
    return sum(1 for w in text.split() if any(c.isalnum() for c in w))


def _has_words(text: str) -> bool:
    return any(c.isalnum() for c in text)


def _is_abbreviation(buf: str, dot: int) -> bool:
    if buf[dot] != ".":
        return False
    word = buf[:dot].split()[-1].lower() if buf[:dot].split() else ""
    word = word.lstrip("\"'“‘(")
    # "Mr." and friends, and single initials ("J. R. R."), but not "I." at a sentence end.
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha() and word != "i")
