"""The recognizer factory, and the open-mic turn recognizer (VAD + Whisper) end to end."""

from __future__ import annotations

import pytest

from npc_engine.pipeline.stt_factory import make_transcriber
from npc_engine.pipeline.stt_turns import TurnRecognizer
from npc_engine.pipeline.vad import EndOfTurnDetector

from .speech import frames


def test_unknown_recognizer_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="whisper, moonshine, vosk"):
        make_transcriber("sphinx")


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="partial_interval_ms"):
        make_transcriber("whisper", beam=5)


def test_factory_builds_vosk_with_options(vosk_ko_dir) -> None:
    tr = make_transcriber("vosk", model_dir=vosk_ko_dir, phrases=["열쇠"])
    assert tr.name == "vosk" and tr.config.phrases == ("열쇠",)


def feed_clip(recognizer: TurnRecognizer, pcm):
    updates = [recognizer.feed(f) for f in frames(pcm)]
    events = [e.kind for u in updates for e in u.events]
    finals = [u for u in updates if u.final is not None]
    partials = [u.partial for u in updates if u.partial is not None]
    return events, finals, partials


def test_open_mic_turn_gives_partials_then_one_final(vad, whisper, clip_named) -> None:
    recognizer = TurnRecognizer(EndOfTurnDetector(vad), whisper.open_stream())
    events, finals, partials = feed_clip(recognizer, clip_named("kokoro_bm_george_02.wav").pcm)
    assert events[0] == "speech_start" and events[-1] == "end_of_turn"
    assert len(finals) == 1 and finals[0].final
    assert partials and all(partials)


def test_speculative_final_matches_plain_and_is_ready_at_end_of_turn(vad, whisper, clip_named) -> None:
    pcm = clip_named("pause_mid_sentence.wav").pcm
    spec_stream = whisper.open_stream()
    _, spec, _ = feed_clip(TurnRecognizer(EndOfTurnDetector(vad), spec_stream, speculative=True), pcm)
    plain_stream = whisper.open_stream()
    _, plain, _ = feed_clip(TurnRecognizer(EndOfTurnDetector(vad), plain_stream, speculative=False), pcm)
    assert spec[0].final == plain[0].final and spec[0].final
    # the speculative path decoded before the end of turn, so finalize had nothing left to do
    assert spec[0].finalize_seconds < plain[0].finalize_seconds


def test_cough_gives_no_turn_and_no_decode(vad, whisper, clip_named) -> None:
    stream = whisper.open_stream()
    events, finals, _ = feed_clip(TurnRecognizer(EndOfTurnDetector(vad), stream), clip_named("cough.wav").pcm)
    assert events == [] and finals == [] and stream.decodes == 0


def test_push_to_talk_release_ends_the_turn(vad, whisper, clip_named) -> None:
    clip = clip_named("kokoro_af_heart_05.wav")
    recognizer = TurnRecognizer(EndOfTurnDetector(vad), whisper.open_stream())
    cut = int((clip.speech_end_s + 0.05) * 16_000)  # the key is released right after the line
    for f in frames(clip.pcm[:cut]):
        assert recognizer.feed(f).final is None
    update = recognizer.end_turn()
    assert update.final
    assert not recognizer.detector.in_turn
