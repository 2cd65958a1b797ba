"""Viseme and word tracks: the contract the game animates from, and that they match the audio."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from npc_engine.pipeline.base import VISEMES, SpeechChunk, Voice
from npc_engine.pipeline.g2p import PHONEME_VISEMES, EnglishG2P, phoneme_visemes
from npc_engine.pipeline.kokoro_model import SAMPLE_RATE, SAMPLES_PER_FRAME, VOCAB
from npc_engine.pipeline.tts_espeak import EspeakSynthesizer
from npc_engine.pipeline.tts_kokoro import (
    VOICES_DIR,
    KokoroConfig,
    KokoroSynthesizer,
    PhonemeTiming,
    _viseme_track,
)

from .audio import frame_rms

FRAME = SAMPLES_PER_FRAME / SAMPLE_RATE  # one model frame, 25 ms
TEXT = "Yes, traveller. The road is long, and the night is cold."


@pytest.fixture(scope="module")
def kokoro_chunk(kokoro: KokoroSynthesizer) -> SpeechChunk:
    return kokoro.synthesize(TEXT, Voice("af_heart"))


@pytest.fixture(scope="module")
def espeak_chunk(espeak: EspeakSynthesizer) -> SpeechChunk:
    return espeak.synthesize(TEXT, Voice("bm_george"))


def assert_track_contract(chunk: SpeechChunk) -> None:
    track = chunk.visemes
    assert track, "a spoken chunk has visemes"
    assert all(v.label in VISEMES for v in track)
    assert track[0].start == 0.0
    assert all(v.end > v.start for v in track), "no empty or reversed spans"
    assert all(a.end == pytest.approx(b.start, abs=1e-9) for a, b in itertools.pairwise(track)), \
        "contiguous: each viseme starts where the last one ended"
    assert all(a.label != b.label for a, b in itertools.pairwise(track)), "equal neighbours are merged"
    assert abs(track[-1].end - chunk.duration) <= FRAME, "the track ends with the audio"
    assert track[-1].label == "sil"
    words = chunk.words
    assert all(0.0 <= w.start < w.end <= chunk.duration + 1e-9 for w in words)
    assert all(a.end <= b.start + 1e-9 for a, b in itertools.pairwise(words)), "words in order"


@pytest.mark.parametrize("which", ["kokoro_chunk", "espeak_chunk"])
def test_tracks_keep_the_contract(which: str, request: pytest.FixtureRequest) -> None:
    chunk: SpeechChunk = request.getfixturevalue(which)
    assert_track_contract(chunk)
    expected = ["Yes", "traveller", "The", "road", "is", "long", "and", "the", "night", "is", "cold"]
    assert [w.label for w in chunk.words] == expected


@pytest.mark.parametrize("which", ["kokoro_chunk", "espeak_chunk"])
def test_punctuation_pauses_are_silent_visemes(which: str, request: pytest.FixtureRequest) -> None:
    chunk: SpeechChunk = request.getfixturevalue(which)
    words = {w.label: w for w in chunk.words}
    for before, after in (("Yes", "traveller"), ("traveller", "The")):
        gap = [v for v in chunk.visemes if v.start < words[after].start and v.end > words[before].end]
        assert any(v.label == "sil" for v in gap), f"no pause shown between {before!r} and {after!r}"


def test_kokoro_durations_put_pauses_where_the_audio_is_quiet(kokoro: KokoroSynthesizer) -> None:
    """Checked on the model's raw durations (not the energy-corrected track), so this tests the model output."""
    rendering = kokoro.render(TEXT, Voice("af_heart"))
    hop = 240  # 10 ms
    rms = frame_rms(rendering.audio, hop)
    vowels = [t for t in rendering.timings if phoneme_visemes(t.phoneme)[:1] in (("aa",), ("E",), ("oh",))]
    speech_level = float(np.median([rms[t.start // hop:max(t.end // hop, t.start // hop + 1)].mean()
                                    for t in vowels]))
    assert speech_level > 0.03, "the vowels themselves are loud (the measure can tell speech from pause)"
    interior = [t for t in rendering.timings[:-2] if t.phoneme and t.phoneme in ",."]
    assert len(interior) == 3  # "Yes," "traveller." "long,"
    for t in interior:
        # Widen by one model frame: durations are whole 25 ms frames.
        window = rms[max(0, (t.start - SAMPLES_PER_FRAME) // hop):(t.end + SAMPLES_PER_FRAME) // hop + 1]
        assert window.min() < 0.1 * speech_level, f"no quiet audio at {t.phoneme!r} ({t.start / SAMPLE_RATE:.2f} s)"


# The mouth is shut where the audio is quiet and open where it is loud, compared frame by frame
# (25 ms) by medians: the frames wholly inside "sil" against the frames wholly inside spoken
# visemes. Frames that straddle a boundary are left out, and medians ignore the odd loud pause
# (Kokoro sometimes renders a comma's duration as sound): where a pause begins and ends moves by
# a frame or so between CPUs, because int8 kernels differ (e.g. AVX2 without VNNI saturates
# where VNNI does not), and the old statistic (mean RMS of the sil spans against 0.15 x p90) sat on
# that edge: 0.149 x p90 on our AMD EPYC (Zen 5, VNNI), 0.219 on the (0.0247 / 0.1128).
#
# Measured on 5 voices x 4 lines (160 renderings), with onnxruntime's graph optimisations off
# and on and 1 and 2 threads (bit-identical output here: the int8 kernels are exact integer
# arithmetic on one CPU), the voice's style vector perturbed by 1, 3 and 5 % (a stand-in for
# another CPU's kernels: by 3 % it moves the old statistic on this line from 0.149 to between
# 0.146 and 0.225 with the draw, where the machine had 0.219), and speed 0.9 and 1.1:
#   median sil / median spoken   0.0006 - 0.037 (this line: 0.004 - 0.005)  -> bound 0.25
#   median spoken / p90 RMS      0.43 - 0.76   (this line: 0.58 - 0.63)    -> bound 0.2
# A track that does not follow the audio fails: the durations alone, without the quiet-audio
# correction, give 0.44 on this line (up to 0.90 on the others); shifted 200 ms late, 1.6.
SIL_TO_SPOKEN_MAX = 0.25
SPOKEN_TO_LEVEL_MIN = 0.2
VOICES = ("af_heart", "af_bella", "am_michael", "bf_emma", "bm_george")
DRIFT = 0.03  # relative perturbation of the style vector for the drift test


def _sil_and_spoken_rms(chunk: SpeechChunk) -> tuple[np.ndarray, np.ndarray, float]:
    """RMS of the 25 ms frames wholly inside sil / wholly inside speech, and the p90 level."""
    rms = frame_rms(chunk.pcm, SAMPLES_PER_FRAME)
    n = len(rms)
    sil = np.zeros(n * SAMPLES_PER_FRAME, bool)
    for v in chunk.visemes:
        if v.label == "sil":
            sil[round(v.start * SAMPLE_RATE):round(v.end * SAMPLE_RATE)] = True
    frames = sil.reshape(n, SAMPLES_PER_FRAME)
    return rms[frames.all(axis=1)], rms[~frames.any(axis=1)], float(np.percentile(rms, 90))


def assert_visemes_follow_energy(chunk: SpeechChunk) -> None:
    sil, spoken, level = _sil_and_spoken_rms(chunk)
    assert len(sil) >= 5 and len(spoken) >= 20, "the line has pauses and speech to compare"
    ratio = float(np.median(sil) / np.median(spoken))
    assert ratio < SIL_TO_SPOKEN_MAX, f"sil frames are {ratio:.3f} x as loud as spoken ones"
    loud = float(np.median(spoken)) / level
    assert loud > SPOKEN_TO_LEVEL_MIN, f"spoken frames are quiet: median {loud:.3f} x the p90 level"


@pytest.mark.parametrize("voice", VOICES)
def test_kokoro_visemes_follow_the_audio_energy(kokoro: KokoroSynthesizer, voice: str) -> None:
    assert_visemes_follow_energy(kokoro.synthesize(TEXT, Voice(voice)))


@pytest.fixture(scope="module")
def drifted_kokoro(tmp_path_factory: pytest.TempPathFactory) -> KokoroSynthesizer:
    """Kokoro with af_heart's style vector perturbed by 3 % (seeded): the model's output moves
    as it does on another CPU's kernels, so this runs that machine's case on any machine."""
    voices = tmp_path_factory.mktemp("drifted-voices")
    pack = np.fromfile(VOICES_DIR / "af_heart.bin", dtype=np.float32)
    noise = np.random.default_rng(3).standard_normal(pack.shape).astype(np.float32)
    (pack * (1 + DRIFT * noise)).astype(np.float32).tofile(voices / "af_heart.bin")
    return KokoroSynthesizer(KokoroConfig(voices_dir=voices))


def test_kokoro_visemes_follow_the_audio_energy_under_kernel_drift(drifted_kokoro: KokoroSynthesizer) -> None:
    """The old statistic fails on this rendering here: sil spans at 0.201 x p90 (0.0237 / 0.1179)
    against its bound of 0.15; the medians give 0.005 and 0.61."""
    assert_visemes_follow_energy(drifted_kokoro.synthesize(TEXT, Voice("af_heart")))


def test_word_times_fall_inside_speech(kokoro_chunk: SpeechChunk) -> None:
    rms = frame_rms(kokoro_chunk.pcm, SAMPLES_PER_FRAME)
    level = float(np.percentile(rms, 90))
    for word in kokoro_chunk.words:
        span = rms[int(word.start / FRAME):int(np.ceil(word.end / FRAME))]
        assert span.max() > 0.2 * level, f"{word.label!r} is timed over silence"


# ------------------------------------------------------------------ phoneme → viseme map


def test_every_misaki_phoneme_has_a_viseme_or_borrows_one() -> None:
    g2p = EnglishG2P()
    pangrams = ("The quick brown fox jumps over the lazy dog. Sphinx of black quartz, judge my vow! "
                "Thalgrim's oily choir booed the azure mirage; a bouquet of yachts hung near Oakhollow.")
    used = set(g2p(pangrams).phonemes) - {" "}
    assert used <= set(PHONEME_VISEMES), f"unmapped phonemes: {sorted(used - set(PHONEME_VISEMES))}"
    assert {"A", "I", "O", "W", "Y"} & used
    assert used <= set(VOCAB), "misaki only writes phonemes Kokoro can say"


@pytest.mark.parametrize(
    ("phoneme", "visemes"),
    [("p", ("PP",)), ("m", ("PP",)), ("f", ("FF",)), ("ð", ("TH",)), ("t", ("DD",)), ("ɡ", ("kk",)),
     ("ʃ", ("CH",)), ("z", ("SS",)), ("l", ("nn",)), ("ɹ", ("RR",)), ("æ", ("aa",)), ("ɛ", ("E",)),
     ("ɪ", ("ih",)), ("ɔ", ("oh",)), ("u", ("ou",)), ("A", ("E", "ih")), ("O", ("oh", "ou")),
     (",", ("sil",)), ("ˈ", ()), ("ː", ())],
)
def test_phoneme_viseme_map(phoneme: str, visemes: tuple[str, ...]) -> None:
    assert phoneme_visemes(phoneme) == visemes


def _timings(spec: list[tuple[str, int]]) -> list[PhonemeTiming]:
    out, at = [], 0
    for k, (phoneme, frames) in enumerate(spec):
        end = at + frames * SAMPLES_PER_FRAME
        out.append(PhonemeTiming(phoneme, -1 if phoneme == "" else k, at, end))
        at = end
    return out


def test_track_resolves_marks_spaces_and_diphthongs() -> None:
    timings = _timings([("", 1), ("h", 1), ("ˈ", 1), ("ɛ", 2), ("l", 1), ("O", 2), (",", 2), (" ", 1),
                        ("p", 1), ("ɑ", 2), ("ː", 1), (" ", 1), ("n", 1), ("", 1)])
    total = timings[-1].end
    track = _viseme_track(timings, np.zeros(total // SAMPLES_PER_FRAME, bool), total)
    got = [(v.label, round(v.start / FRAME, 2), round(v.end / FRAME, 2)) for v in track]
    assert got == [
        ("sil", 0, 1),
        ("E", 1, 5),  # "h" and the stress mark take the vowel after them
        ("nn", 5, 6),
        ("oh", 6, 7), ("ou", 7, 8),  # the diphthong glides
        ("sil", 8, 11),  # the comma, and the space beside it
        ("PP", 11, 12),
        ("aa", 12, 16),  # the length mark and a space between words extend the vowel
        ("nn", 16, 17),
        ("sil", 17, 18),
    ]


def test_quiet_audio_overrides_the_durations() -> None:
    timings = _timings([("", 1), ("ɛ", 4), ("l", 4), ("", 1)])
    total = timings[-1].end
    quiet = np.zeros(total // SAMPLES_PER_FRAME, bool)
    quiet[6:9] = True  # the model gave "l" four frames but rendered three of them silent
    track = _viseme_track(timings, quiet, total)
    assert [(v.label, round(v.start / FRAME), round(v.end / FRAME)) for v in track] == [
        ("sil", 0, 1), ("E", 1, 5), ("nn", 5, 6), ("sil", 6, 10)]
