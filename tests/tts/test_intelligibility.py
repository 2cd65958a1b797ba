"""Kokoro's speech, transcribed by whisper tiny.en, must come back as the words we asked for."""

from __future__ import annotations

import numpy as np
import pytest

from npc_engine.pipeline.base import Voice
from npc_engine.pipeline.tts_espeak import resample
from npc_engine.pipeline.tts_kokoro import KokoroSynthesizer
from npc_engine.pipeline.wer import corpus_wer, normalize, wer

MAX_WER = 0.3

# Everyday NPC lines across all five shipped voices (fantasy names are tested for sound, not spelling:
# a recogniser cannot be expected to spell "Thalgrim").
LINES: list[tuple[str, str]] = [
    ("Welcome, traveller. The road north is closed until spring.", "af_heart"),
    ("I can sell you a sword, but it will cost you ten gold coins.", "bm_george"),
    ("Have you seen my brother? He went to the old mine yesterday.", "af_bella"),
    ("Stay away from the forest after dark. Wolves hunt there.", "am_michael"),
    ("The blacksmith is busy, so please come back tomorrow morning.", "bf_emma"),
    ("Thank you for your help. The village will not forget this.", "af_heart"),
    ("If you bring me three healing herbs, I will brew you a potion.", "bm_george"),
    ("Quiet now! The guards are coming this way.", "am_michael"),
]


def transcribe(model: object, pcm: np.ndarray, rate: int) -> str:
    audio = resample(pcm.astype(np.float32) / 32768.0, rate, 16_000)
    segments, _ = model.transcribe(  # type: ignore[attr-defined]
        audio, language="en", beam_size=1, vad_filter=False, condition_on_previous_text=False)
    return " ".join(s.text for s in segments).strip()


@pytest.mark.slow
def test_kokoro_speech_is_intelligible(kokoro: KokoroSynthesizer, whisper: object) -> None:
    pairs = []
    for text, voice in LINES:
        chunk = kokoro.synthesize(text, Voice(voice))
        pairs.append((text, transcribe(whisper, chunk.pcm, chunk.sample_rate)))
    score = corpus_wer(pairs)
    report = "\n".join(f"  {wer(r, h):.2f}  {r!r} -> {h!r}" for r, h in pairs)
    assert score <= MAX_WER, f"WER {score:.2f} > {MAX_WER}:\n{report}"
    # No single line may be lost entirely (a silent or garbled chunk hides in a corpus average).
    assert all(wer(r, h) < 0.6 for r, h in pairs), report


# ------------------------------------------------------------------ the WER helper itself


def test_normalize_ignores_case_punctuation_and_number_style() -> None:
    assert normalize("Ten gold coins, traveller!") == normalize("10 gold coins traveller")
    assert normalize("Don’t go—it's 1,000 paces.") == ["don't", "go", "it's", "one", "thousand", "paces"]


def test_wer_counts_substitutions_insertions_and_deletions() -> None:
    assert wer("the road is closed", "the road is closed") == 0.0
    assert wer("the road is closed", "the road closed") == pytest.approx(0.25)
    assert wer("the road is closed", "the toad is closed now") == pytest.approx(0.5)
    assert wer("", "") == 0.0
    assert wer("hello there", "") == 1.0
    assert corpus_wer([("a b c d", "a b c d"), ("e f", "x f")]) == pytest.approx(1 / 6)
