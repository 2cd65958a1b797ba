"""Silero VAD end-of-turn detection on the synthetic fixture clips (real model, real audio)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from npc_engine.pipeline.vad import EndOfTurnDetector, TurnConfig, TurnEvent, default_model_path

from .speech import SR, frames


def run(vad, pcm: np.ndarray, config: TurnConfig | None = None, size: int = 320) -> list[TurnEvent]:
    det = EndOfTurnDetector(vad, config)
    return [e for f in frames(pcm, size) for e in det.feed(f)]


def test_model_file_is_found_on_disk() -> None:
    assert default_model_path().suffix == ".onnx"


def test_every_line_is_one_turn_that_ends_after_the_speech(vad, english_lines) -> None:
    cfg = TurnConfig()
    for clip in english_lines:
        events = run(vad, clip.pcm, cfg)
        kinds = [e.kind for e in events]
        assert kinds[0] == "speech_start" and kinds[-1] == "end_of_turn", (clip.name, kinds)
        assert kinds.count("speech_start") == 1 and kinds.count("end_of_turn") == 1, (clip.name, kinds)
        start, end = events[0], events[-1]
        # The onset is found near the true start (Silero fires a window or three late)...
        assert abs(start.sample / SR - clip.speech_start_s) < 0.2, clip.name
        # ...and the turn ends after the speech, by the configured silence plus at most ~150 ms.
        assert end.decided_at / SR > clip.speech_end_s, clip.name
        delay = end.decided_at / SR - clip.speech_end_s
        assert cfg.end_of_turn_ms / 1000 <= delay + 0.05 < cfg.end_of_turn_ms / 1000 + 0.2, (clip.name, delay)
        assert end.delay_ms >= cfg.end_of_turn_ms


def test_events_are_ordered_in_stream_time(vad, clip_named) -> None:
    events = run(vad, clip_named("pause_mid_sentence.wav").pcm)
    decided = [e.decided_at for e in events]
    assert decided == sorted(decided)
    for e in events:
        assert e.sample <= e.decided_at
    # silence_start always precedes the resume or the end that follows it
    for a, b in itertools.pairwise(events):
        if b.kind in ("speech_resume", "end_of_turn"):
            assert a.kind == "silence_start", [e.kind for e in events]


def test_mid_sentence_pause_does_not_end_the_turn(vad, clip_named) -> None:
    clip = clip_named("pause_mid_sentence.wav")
    events = run(vad, clip.pcm)
    kinds = [e.kind for e in events]
    assert kinds.count("end_of_turn") == 1 and kinds.count("speech_start") == 1, kinds
    assert "speech_resume" in kinds  # the pause was heard, as a pause
    pause_end = clip.pauses[0][1]
    assert events[-1].sample / SR > pause_end  # the one end of turn is after the second half


def test_a_shorter_end_of_turn_would_split_the_paused_line(vad, clip_named) -> None:
    """The mid-sentence test can fail: with 200 ms of trailing silence the pause ends the turn."""
    events = run(vad, clip_named("pause_mid_sentence.wav").pcm, TurnConfig(end_of_turn_ms=200))
    assert [e.kind for e in events].count("end_of_turn") == 2


def test_cough_does_not_start_a_turn(vad, clip_named) -> None:
    det = EndOfTurnDetector(vad)
    events = [e for f in frames(clip_named("cough.wav").pcm) for e in det.feed(f)]
    assert events == []
    assert not det.in_turn


def test_speech_shorter_than_min_speech_does_not_start_a_turn(vad, clip_named) -> None:
    clip = clip_named("kokoro_af_heart_05.wav")
    s = int((clip.speech_start_s + 0.3) * SR)
    burst = clip.pcm[s : s + int(0.12 * SR)]  # 120 ms of real speech, clearly voiced
    quiet = np.zeros(SR, np.int16)
    pcm = np.concatenate([quiet, burst, quiet])
    assert run(vad, pcm, TurnConfig(min_speech_ms=200)) == []
    # the same burst is a turn once the minimum is below it: the gate is what stopped it
    assert [e.kind for e in run(vad, pcm, TurnConfig(min_speech_ms=32))][:1] == ["speech_start"]


@pytest.mark.parametrize("size", [17, 320, 512, 1600])
def test_frame_size_does_not_change_the_events(vad, clip_named, size: int) -> None:
    pcm = clip_named("kokoro_am_michael_00.wav").pcm
    reference = [(e.kind, e.sample, e.decided_at) for e in run(vad, pcm, size=320)]
    assert [(e.kind, e.sample, e.decided_at) for e in run(vad, pcm, size=size)] == reference


def test_speech_start_hands_back_the_preroll_and_everything_fed(vad, clip_named) -> None:
    clip = clip_named("kokoro_bf_emma_03.wav")
    det = EndOfTurnDetector(vad, TurnConfig(preroll_ms=250))
    fed = 0
    for f in frames(clip.pcm):
        fed += len(f)
        starts = [e for e in det.feed(f) if e.kind == "speech_start"]
        if starts:
            audio = starts[0].audio
            assert audio is not None and audio.dtype == np.int16
            first = fed - len(audio)
            assert first <= starts[0].sample - int(0.25 * SR) + 1  # the pre-roll is there
            assert np.array_equal(audio, clip.pcm[first:fed])  # and it is the stream, to the sample
            break
    else:
        pytest.fail("no speech_start")


def test_barge_in_query_tracks_ongoing_speech(vad, clip_named) -> None:
    clip = clip_named("kokoro_bm_george_00.wav")
    det = EndOfTurnDetector(vad)
    seen_long = False
    for f in frames(clip.pcm):
        det.feed(f)
        if det.is_speech_ongoing(400):
            seen_long = True
            assert det.in_turn and det.speech_ms() >= 400
    assert seen_long
    assert not det.is_speech_ongoing(1)  # the clip ends in silence


def test_int16_is_required(vad) -> None:
    det = EndOfTurnDetector(vad)
    with pytest.raises(TypeError, match="int16"):
        det.feed(np.zeros(320, np.float32))
