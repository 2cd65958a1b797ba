"""End of turn by meaning, without models: the Whisper features against a hand-computed
reference, and the detector's decision with ``ScriptedTurnModel`` (Smart Turn's place),
``EnergyVad`` (speech is any non-silent window) and ``ToneTranscriber`` (the text check)."""

from __future__ import annotations

import numpy as np
import pytest

from npc_engine.config import EngineConfig
from npc_engine.pipeline.smart_turn import (
    HOP,
    N_FFT,
    N_SAMPLES,
    ends_mid_thought,
    fit_window,
    log_mel,
    mel_filters,
)
from npc_engine.pipeline.stt_turns import TurnRecognizer
from npc_engine.pipeline.vad import WINDOW, EndOfTurnDetector, TurnConfig, TurnEvent
from npc_engine.pipeline.workers import ModelWorker
from npc_engine.session.voice import VoiceInput
from tests.doubles import EnergyVad, ScriptedTurnModel, ToneTranscriber

SR = 16_000

# ---------------------------------------------------------------------- features


def test_features_have_whisper_shape_and_range() -> None:
    rng = np.random.default_rng(1)
    out = log_mel(fit_window(rng.normal(0, 0.1, 3 * SR).astype(np.float32)))
    assert out.shape == (80, 800) and out.dtype == np.float32
    # log10 clamped to 8 below its maximum, then (x + 4) / 4: a span of at most 2
    assert out.max() - out.min() <= 2.0 + 1e-6


def test_fit_window_keeps_the_end_and_pads_in_front() -> None:
    short = np.arange(1, 101, dtype=np.float32)
    fitted = fit_window(short)
    assert fitted.shape == (N_SAMPLES,)
    assert not fitted[:-100].any() and np.array_equal(fitted[-100:], short)  # zeros first, then the audio
    long = np.arange(N_SAMPLES + 500, dtype=np.float32)
    assert np.array_equal(fit_window(long), long[500:])  # the last 8 s


def test_slaney_mel_filters() -> None:
    filters = mel_filters()
    assert filters.shape == (80, N_FFT // 2 + 1)
    # Slaney's scale is linear to 1 kHz (15 mel) then logarithmic (27 mel per factor 6.4):
    # 80 filters spread evenly over 0-8 kHz in mel, each peaking at its centre frequency.
    top = 15 + 27 * np.log(8000 / 1000) / np.log(6.4)
    centres_mel = np.linspace(0, top, 82)[1:-1]
    centres_hz = np.where(centres_mel < 15, centres_mel * 200 / 3, 1000 * 6.4 ** ((centres_mel - 15) / 27))
    bin_hz = np.linspace(0, 8000, N_FFT // 2 + 1)
    peaks = bin_hz[filters.argmax(axis=1)]
    assert np.all(np.abs(peaks - centres_hz) <= 8000 / (N_FFT // 2) / 2 + 1e-6)  # within half an FFT bin
    # Slaney's area normalisation: every triangle has unit area (sampled on the 40 Hz bin grid)
    np.testing.assert_allclose(filters.sum(axis=1) * (8000 / (N_FFT // 2)), 1.0, atol=0.1)


def test_log_mel_of_a_sine_matches_a_direct_dft() -> None:
    """One frame in the middle of a steady 1 kHz tone, computed by hand: normalise, Hann
    window, a direct DFT (no FFT), triangles written out from the mel formula, log10, scale."""
    t = np.arange(N_SAMPLES) / SR
    noise = np.random.default_rng(7).normal(0, 0.003, N_SAMPLES)  # lifts every band off the floor
    x = (0.3 * np.sin(2 * np.pi * 1000.0 * t) + noise).astype(np.float32)
    out = log_mel(x)

    xn = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    frame = 400
    start = frame * HOP - N_FFT // 2  # frame k is centred on sample k * hop
    seg = xn[start : start + N_FFT].astype(np.float64)
    n = np.arange(N_FFT)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic
    k = np.arange(N_FFT // 2 + 1)
    dft = (seg * hann) @ np.exp(-2j * np.pi * np.outer(n, k) / N_FFT)
    power = np.abs(dft) ** 2

    def mel(hz: float) -> float:
        return 3 * hz / 200 if hz < 1000 else 15 + 27 * np.log(hz / 1000) / np.log(6.4)

    def hz(m: float) -> float:
        return 200 * m / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    edges = [hz(m) for m in np.linspace(mel(0.0), mel(8000.0), 82)]
    bins = np.linspace(0, 8000, N_FFT // 2 + 1)
    ref = np.empty(80)
    for m in range(80):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        tri = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
        ref[m] = np.log10(max(float(tri * 2 / (hi - lo) @ power), 1e-10))
    expected = (ref + 4) / 4
    unclamped = ref > (out.max() * 4 - 4) - 8 + 1e-3
    assert unclamped.sum() > 70
    np.testing.assert_allclose(out[unclamped, frame], expected[unclamped], atol=2e-4)
    # and the tone is where it should be: the loudest band is the one centred nearest 1 kHz
    assert abs(edges[int(out[:, frame].argmax()) + 1] - 1000) < 60


def test_log_mel_takes_exactly_eight_seconds() -> None:
    with pytest.raises(ValueError, match="fit_window"):
        log_mel(np.zeros(SR, np.float32))


# ---------------------------------------------------------------------- the text check


@pytest.mark.parametrize("text", ["I went to the mill and", "So, um", "Give me the", "and so…", "I was going to -"])
def test_a_line_ending_mid_thought(text: str) -> None:
    assert ends_mid_thought(text)


@pytest.mark.parametrize("text", ["", "Where is the key?", "What for?", "See you then.", "Tell me about the band."])
def test_a_finished_line(text: str) -> None:
    assert not ends_mid_thought(text)


# ---------------------------------------------------------------------- the decision

LEVEL = 2000
SPEECH = (8000, 24000)  # 0.5 s of silence, 1 s of speech
LAST_SPEECH_END = 24064  # the end of the last window holding speech (47 windows of 512)


def utterance(speech_s: float = 1.0, silence_s: float = 2.0) -> np.ndarray:
    return np.concatenate([
        np.zeros(8000, np.int16), np.full(int(speech_s * SR), LEVEL, np.int16), np.zeros(int(silence_s * SR), np.int16),
    ])


def feed(det: EndOfTurnDetector, pcm: np.ndarray, frame: int = 320) -> list[TurnEvent]:
    return [e for i in range(0, len(pcm), frame) for e in det.feed(pcm[i : i + frame])]


def ends(events: list[TurnEvent]) -> list[TurnEvent]:
    return [e for e in events if e.kind == "end_of_turn"]


def test_complete_ends_the_turn_at_the_first_check() -> None:
    model = ScriptedTurnModel(0.9)
    det = EndOfTurnDetector(EnergyVad(), TurnConfig(smart_turn_ms=200, complete_ms=None, incomplete_ms=1200), model)
    pcm = utterance()
    (end,) = ends(feed(det, pcm))
    assert end.sample == LAST_SPEECH_END
    assert 200 <= end.delay_ms < 200 + 1000 * WINDOW / SR  # the first window past 200 ms of silence
    assert end.p_complete == pytest.approx(0.9) and not end.text_hold
    # asked once, on the turn from its pre-roll (250 ms before the onset) to the deciding window
    (heard,) = model.heard
    onset = SPEECH[0] // WINDOW * WINDOW
    assert np.array_equal(heard, pcm[onset - 4000 : end.decided_at])


def test_mid_thought_waits_for_the_long_silence() -> None:
    model = ScriptedTurnModel(0.2)
    det = EndOfTurnDetector(EnergyVad(), TurnConfig(smart_turn_ms=200, complete_ms=None, incomplete_ms=1200), model)
    (end,) = ends(feed(det, utterance()))
    assert 1200 <= end.delay_ms < 1200 + 1000 * WINDOW / SR
    assert end.p_complete == pytest.approx(0.2)
    assert len(model.heard) == 1  # one question per silence: the wait is the answer to "not sure"


def test_without_a_classifier_the_silence_decides() -> None:
    det = EndOfTurnDetector(EnergyVad(), TurnConfig(end_of_turn_ms=600, smart_turn_ms=200))
    (end,) = ends(feed(det, utterance()))
    assert 600 <= end.delay_ms < 600 + 1000 * WINDOW / SR and end.p_complete is None


def test_speech_coming_back_is_a_new_silence_and_a_new_question() -> None:
    model = ScriptedTurnModel(0.1, 0.95)
    det = EndOfTurnDetector(EnergyVad(), TurnConfig(smart_turn_ms=200, complete_ms=None, incomplete_ms=1200), model)
    pause = np.zeros(int(0.5 * SR), np.int16)
    pcm = np.concatenate([utterance(silence_s=0)[:-1], pause, np.full(SR // 2, LEVEL, np.int16), np.zeros(2 * SR, np.int16)])
    events = feed(det, pcm)
    kinds = [e.kind for e in events]
    assert kinds == ["speech_start", "silence_start", "speech_resume", "silence_start", "end_of_turn"], kinds
    assert len(model.heard) == 2
    assert len(model.heard[1]) > len(model.heard[0])  # the second question hears the whole turn
    assert 200 <= events[-1].delay_ms < 240


def test_the_classifier_hears_the_last_eight_seconds_of_a_long_turn() -> None:
    model = ScriptedTurnModel(1.0)
    det = EndOfTurnDetector(EnergyVad(), TurnConfig(complete_ms=None), model)
    pcm = utterance(speech_s=10.0)
    (end,) = ends(feed(det, pcm, frame=1600))
    (heard,) = model.heard
    assert len(heard) == N_SAMPLES and np.array_equal(heard, pcm[end.decided_at - N_SAMPLES : end.decided_at])


def test_text_ending_mid_thought_holds_the_turn_without_asking() -> None:
    ears = ToneTranscriber()
    model = ScriptedTurnModel(1.0)  # the audio model would end it at once
    rec = TurnRecognizer(EndOfTurnDetector(EnergyVad(), TurnConfig(incomplete_ms=1200), model), ears.open_stream())
    pcm = np.concatenate([np.zeros(8000, np.int16), ears.say("bring the", silence_s=2.0)])
    events = [e for i in range(0, len(pcm), 320) for e in rec.feed(pcm[i : i + 320]).events]
    (end,) = ends(events)
    assert end.text_hold and end.p_complete is None and model.heard == []
    assert end.delay_ms >= 1200


def test_text_that_ends_a_line_leaves_the_decision_to_the_model() -> None:
    ears = ToneTranscriber()
    model = ScriptedTurnModel(1.0)
    rec = TurnRecognizer(EndOfTurnDetector(EnergyVad(), TurnConfig(complete_ms=None, incomplete_ms=1200), model), ears.open_stream())
    pcm = np.concatenate([np.zeros(8000, np.int16), ears.say("bring the sword", silence_s=2.0)])
    events = [e for i in range(0, len(pcm), 320) for e in rec.feed(pcm[i : i + 320]).events]
    (end,) = ends(events)
    assert not end.text_hold and len(model.heard) == 1 and end.delay_ms < 240


def test_text_is_heard_only_during_a_silence() -> None:
    det = EndOfTurnDetector(EnergyVad(), TurnConfig(complete_ms=None), ScriptedTurnModel(1.0))
    det.hear("and")  # between turns: nothing to hold
    (end,) = ends(feed(det, utterance()))
    assert not end.text_hold and end.delay_ms < 240


class _Hooks:
    id = "s1"
    closed = False


@pytest.mark.parametrize(("smart_turn", "push_to_talk", "uses_model"),
                         [(True, False, True), (True, True, False), (False, False, False)])
def test_the_session_asks_the_model_on_open_mic_only(smart_turn: bool, push_to_talk: bool, uses_model: bool) -> None:
    model = ScriptedTurnModel(1.0)
    cfg = EngineConfig(smart_turn=smart_turn, smart_turn_ms=160, smart_turn_complete_ms=320, smart_turn_incomplete_ms=900)
    voice = VoiceInput(_Hooks(), ToneTranscriber(), EnergyVad(), ModelWorker("stt-test"), cfg,  # type: ignore[arg-type]
                       push_to_talk=push_to_talk, turn_model=model)
    assert (voice.detector.classifier is model) is uses_model
    turn_cfg = voice.detector.config
    assert (turn_cfg.smart_turn_ms, turn_cfg.complete_ms, turn_cfg.incomplete_ms) == (160, 320, 900)


def test_complete_can_be_made_to_wait_a_little_longer() -> None:
    model = ScriptedTurnModel(0.9)
    det = EndOfTurnDetector(EnergyVad(), TurnConfig(smart_turn_ms=200, complete_ms=400, incomplete_ms=1200), model)
    (end,) = ends(feed(det, utterance()))
    assert 400 <= end.delay_ms < 400 + 1000 * WINDOW / SR
    assert len(model.heard) == 1 and len(model.heard[0]) < end.decided_at - 4000  # asked at 200 ms, not at 400
