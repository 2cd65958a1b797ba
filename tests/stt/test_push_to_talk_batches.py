"""Push-to-talk: the key release reuses the decode made when the player fell silent, however
the frames were batched and however many times the VAD heard silence begin.

Real Silero VAD and real whisper tiny.en behind the real ``VoiceInput``; only the session
side (``VoiceHooks``) is a recording double.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pytest

from npc_engine.config import EngineConfig
from npc_engine.metrics import TurnClock
from npc_engine.pipeline.stt_whisper import WhisperStream, WhisperTranscriber
from npc_engine.pipeline.vad import EndOfTurnDetector, SileroVad, TurnConfig
from npc_engine.pipeline.workers import ModelWorker
from npc_engine.protocol.errors import ErrorCode
from npc_engine.session.voice import VoiceInput

from .speech import SR, frames

CLIP = "kokoro_am_michael_04.wav"  # "Goodbye for now.": speech 0.54-1.86 s


@dataclass
class RecordingHooks:
    """TEST DOUBLE for the session side of ``VoiceHooks``: records what voice input reports."""

    id: str = "ptt-batches"
    closed: bool = False
    finals: list[str] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def npc_speaking(self) -> bool:
        return False

    def barge_in(self) -> None:
        raise AssertionError("nobody is speaking over")

    def transcript(self, text: str, final: bool, utterance: int) -> None:
        if final:
            self.finals.append(text)

    def player_turn_ended(self, text: str, clock: TurnClock) -> None:
        self.turns.append(text)

    def report_error(self, code: ErrorCode, message: str) -> None:
        self.errors.append(f"{code.value}: {message}")


def utterance_with_a_second_silence(pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The line and 300 ms of silence (the VAD hears silence begin: the first speculative
    decode), then a 300 ms fragment of speech and 300 ms of silence again (a resume, and
    silence begins a second time)."""
    line = pcm[: int((1.86 + 0.3) * SR)]
    again = np.concatenate([pcm[int(0.9 * SR):int(1.2 * SR)], np.zeros(int(0.3 * SR), np.int16)])
    return line, again


def vad_events(vad: SileroVad, pieces: Iterable[np.ndarray]) -> list[str]:
    detector = EndOfTurnDetector(vad, TurnConfig(end_of_turn_ms=600))
    return [e.kind for p in pieces for e in detector.feed(p)]


async def release_after(pieces: Iterable[np.ndarray], whisper: WhisperTranscriber, vad: SileroVad,
                        ) -> tuple[int, int, RecordingHooks]:
    """Push the pieces, each recognised before the next, then release the key; returns the
    decodes before and after the release."""
    hooks = RecordingHooks()
    worker = ModelWorker("stt-test")
    voice = VoiceInput(hooks, whisper, vad, worker, EngineConfig(stt="whisper", tts="none"), push_to_talk=True)
    stream = voice.recognizer.stream
    assert isinstance(stream, WhisperStream)
    try:
        for piece in pieces:
            voice.push(piece.tobytes())
            await voice.drained()
        before = stream.decodes
        voice.end()
        await voice.drained()
        return before, stream.decodes, hooks
    finally:
        await voice.close()
        worker.shutdown()


@pytest.mark.parametrize("feeding", ["frame by frame", "one message per part"])
async def test_key_release_reuses_the_last_speculative_decode(whisper: WhisperTranscriber, vad: SileroVad,
                                                              clip_named, feeding: str) -> None:
    line, again = utterance_with_a_second_silence(clip_named(CLIP).pcm)
    # A game may send longer frames, and frames pile up while the recognizer is busy: then one
    # batch holds both the resume and the new silence.
    tail = list(frames(again)) if feeding == "frame by frame" else [again]
    pieces = [*frames(line), *tail]
    kinds = vad_events(vad, pieces)
    # The premise: silence begins twice, with a resume between (in one batch, when fed so).
    assert kinds[-3:] == ["silence_start", "speech_resume", "silence_start"], kinds
    before, after, hooks = await release_after(pieces, whisper, vad)
    assert after == before, "the key release decoded the utterance again"
    assert hooks.turns and hooks.turns[0], "the release ended a turn with the line's text"
    assert not hooks.errors

