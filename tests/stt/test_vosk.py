"""The Vosk adapter with the real Korean model from PyPI (no English Vosk model is on a registry).

The speech is espeak-ng Korean, which the model half understands: the tests check the
mechanics (partials before the final, reset, reuse, grammar), never the words.
"""

from __future__ import annotations

import json

import pytest

from npc_engine.pipeline.stt_common import SpeculativeStream, SttModelNotFoundError
from npc_engine.pipeline.stt_factory import make_transcriber
from npc_engine.pipeline.stt_vosk import VoskConfig, VoskTranscriber, grammar_json

from .speech import frames


@pytest.fixture(scope="module")
def korean(clips):
    ko = [c for c in clips if c.lang == "ko"]
    assert len(ko) >= 2
    return ko


def test_partials_then_a_nonempty_final(vosk_ko, korean) -> None:
    stream = vosk_ko.open_stream()
    assert isinstance(stream, SpeculativeStream)
    partials = [p for f in frames(korean[0].pcm) if (p := stream.accept(f)) is not None]
    final = stream.finalize()
    assert len([p for p in partials if p]) >= 2, partials
    assert isinstance(final, str) and final.strip()
    assert stream.last_result.get("result"), "SetWords(True) gives word timings"


def test_reset_drops_the_utterance_and_the_stream_is_reused(vosk_ko, korean) -> None:
    stream = vosk_ko.open_stream()
    partials = [p for f in frames(korean[0].pcm[: len(korean[0].pcm) // 2]) if (p := stream.accept(f))]
    assert partials  # it had heard something...
    stream.reset()
    assert stream.finalize() == ""  # ...which reset dropped
    for f in frames(korean[1].pcm):
        stream.accept(f)
    assert stream.finalize().strip()  # the same recognizer serves the next utterance
    assert stream.finalize() == ""


def test_speculative_final_equals_the_real_final(vosk_ko, korean) -> None:
    stream = vosk_ko.open_stream()
    for f in frames(korean[1].pcm):
        stream.accept(f)
    speculative = stream.prepare_final()
    assert speculative and stream.finalize() == speculative


def test_grammar_limits_the_words(vosk_ko, korean) -> None:
    free = vosk_ko.open_stream()
    for f in frames(korean[0].pcm):
        free.accept(f)
    heard = free.finalize().split()
    phrases = ["대장장이 칼", "열쇠 어디", "안녕"]
    allowed = {w for p in phrases for w in p.split()}
    stream = vosk_ko.open_stream(phrases=phrases)
    for clip in korean:
        for f in frames(clip.pcm):
            stream.accept(f)
        words = stream.finalize().split()
        assert set(words) <= allowed, words
    # the grammar changed the outcome: free recognition used words outside it
    assert not set(heard) <= allowed


def test_grammar_json_keeps_hangul_raw() -> None:
    text = grammar_json(["열쇠 어디"], allow_unknown=True)
    assert "열쇠" in text and "\\u" not in text
    assert json.loads(text) == ["열쇠 어디", "[unk]"]


def test_missing_model_dir_names_the_dir_and_where_to_get_one(tmp_path) -> None:
    with pytest.raises(SttModelNotFoundError) as err:
        VoskTranscriber(VoskConfig(model_dir=tmp_path / "vosk-model-en"))
    assert str(tmp_path / "vosk-model-en") in str(err.value)
    assert "alphacephei.com/vosk/models" in str(err.value)


def test_no_model_configured_says_how_to_get_one() -> None:
    with pytest.raises(SttModelNotFoundError, match="model_dir"):
        make_transcriber("vosk")


def test_model_by_name_that_cannot_be_had_is_a_sentence() -> None:
    """Online, Vosk finds no such name; offline (CI), the list cannot be fetched: same error either way."""
    with pytest.raises(SttModelNotFoundError, match=r"alphacephei\.com/vosk/models"):
        VoskTranscriber(VoskConfig(model_name="vosk-model-that-does-not-exist-0.0"))
