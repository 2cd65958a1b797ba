"""A whole utterance fed in one call gives the same turn as 20 ms frames (large-batch regression)."""

from __future__ import annotations

from typing import Any

from npc_engine.pipeline.stt_turns import TurnRecognizer
from npc_engine.pipeline.vad import EndOfTurnDetector, TurnConfig
from npc_engine.pipeline.wer import edit_distance, normalize

from .speech import frames


def run(vad: Any, whisper: Any, pcm: Any, size: int) -> tuple[list[str], str | None]:
    rec = TurnRecognizer(EndOfTurnDetector(vad, TurnConfig(end_of_turn_ms=600)), whisper.open_stream())
    kinds: list[str] = []
    final = None
    for piece in frames(pcm, size):
        update = rec.feed(piece)
        kinds += [e.kind for e in update.events]
        final = update.final if update.final is not None else final
    return kinds, final


def test_one_big_batch_equals_real_time_frames(vad: Any, whisper: Any, clip_named: Any) -> None:
    clip = clip_named("pause_mid_sentence.wav")
    small = run(vad, whisper, clip.pcm, 320)
    big = run(vad, whisper, clip.pcm, len(clip.pcm))
    assert small[0] == big[0] and big[0][-1] == "end_of_turn"
    assert big[1], "the utterance's words survive a batch longer than the VAD's history"
    # The same audio either way; the two finals may run on different thread counts (each
    # final takes whichever has been faster lately, pipeline/threads.py), and int8 kernels
    # that split a sum across threads can change a word ("old mail" / "old mouth", seen on a
    # fresh-clone CI run): one word's margin.
    assert small[1] is not None
    assert edit_distance(normalize(big[1]), normalize(small[1])) <= 1, (big[1], small[1])
