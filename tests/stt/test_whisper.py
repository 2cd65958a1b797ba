"""Whisper tiny.en (the embedded English default) on the fixture set: accuracy, partials, speculative final."""

from __future__ import annotations

import numpy as np
import pytest

from npc_engine.pipeline.stt_common import SpeculativeStream, SttModelNotFoundError
from npc_engine.pipeline.stt_whisper import WhisperConfig, WhisperTranscriber, _collapse_repeats
from npc_engine.pipeline.threads import ThreadChoice
from npc_engine.pipeline.wer import corpus_wer, wer
from npc_engine.session.voice import same_words

from .speech import frames

# Measured 0.156 on the natural voices (17 clips, 109 words; docs/stt.md); the
# bound leaves room for a few words of drift between CPU kernels, not for a
# regression to the cut-window decode (0.36) or to Moonshine tiny (0.37).
WER_BOUND_NATURAL = 0.22


def test_interfaces(whisper) -> None:
    stream = whisper.open_stream()
    assert whisper.sample_rate == 16_000 and whisper.name == "whisper"
    assert isinstance(stream, SpeculativeStream)


def test_wer_on_natural_voices(whisper, clips) -> None:
    natural = [c for c in clips if c.natural and c.lang == "en"]
    assert len(natural) >= 15
    pairs = [(c.text, whisper.transcribe(c.pcm)) for c in natural]
    assert all(isinstance(h, str) for _, h in pairs)
    assert corpus_wer(pairs) <= WER_BOUND_NATURAL, pairs


def test_partials_arrive_before_the_final(whisper, clip_named) -> None:
    clip = clip_named("kokoro_bm_george_00.wav")  # 3.6 s of speech: room for several partials
    stream = whisper.open_stream()
    partials = [p for f in frames(clip.pcm) if (p := stream.accept(f)) is not None]
    final = stream.finalize()
    # One a second at most, fewer when the machine is busy (the cost cap): at least one.
    assert 1 <= len(partials) <= 5, partials
    assert all(isinstance(p, str) and p for p in partials)
    assert len(set(partials)) == len(partials)  # accept() only reports a change
    assert final and len(final.split()) >= len(partials[0].split())


def test_partial_cost_cap_keeps_decoding_to_its_share_of_real_time(clip_named) -> None:
    """With no time allowed for partials, only the first one (before any cost is known) runs."""
    capped = WhisperTranscriber(WhisperConfig(partial_max_cost=0.0))
    stream = capped.open_stream()
    partials = [p for f in frames(clip_named("kokoro_bm_george_00.wav").pcm) if (p := stream.accept(f)) is not None]
    assert stream.decodes == 1 and len(partials) <= 1
    assert stream.finalize()


def test_speculative_final_equals_the_real_final(whisper, clip_named) -> None:
    clip = clip_named("kokoro_af_heart_09.wav")
    stream = whisper.open_stream()
    for f in frames(clip.pcm):
        stream.accept(f)
    speculative = stream.prepare_final()
    decodes = stream.decodes
    final = stream.finalize()
    assert final == speculative and final
    assert stream.decodes == decodes  # finalize served the cached decode


def test_audio_after_prepare_final_is_decoded_again(whisper, clip_named) -> None:
    clip = clip_named("kokoro_af_heart_05.wav")
    half = int(clip.speech_start_s * 16_000) + 16_000
    stream = whisper.open_stream()
    stream.accept(clip.pcm[:half])
    early = stream.prepare_final()
    decodes = stream.decodes
    stream.accept(clip.pcm[half:])
    final = stream.finalize()
    assert stream.decodes > decodes
    assert len(final.split()) > len(early.split())


def test_finalize_resets_and_the_stream_is_reused(whisper, clip_named) -> None:
    a, b = clip_named("kokoro_am_michael_04.wav"), clip_named("kokoro_bf_emma_07.wav")
    stream = whisper.open_stream()
    stream.accept(a.pcm)
    first = stream.finalize()
    assert stream.buffered_seconds == 0
    assert stream.finalize() == ""  # nothing since: empty, not the last turn again
    stream.accept(b.pcm)
    second = stream.finalize()
    assert first and second and first != second
    stream.accept(a.pcm)
    stream.reset()
    assert stream.finalize() == ""


def test_rejects_float_audio(whisper) -> None:
    with pytest.raises(TypeError, match="int16"):
        whisper.open_stream().accept(np.zeros(320, np.float32))


def test_missing_model_dir_is_a_sentence(tmp_path) -> None:
    with pytest.raises(SttModelNotFoundError, match=str(tmp_path / "nope")):
        WhisperTranscriber(WhisperConfig(model_dir=tmp_path / "nope"))


def test_finals_on_either_thread_count_hear_the_same_words(whisper, clip_named) -> None:
    # Finals run on one or two threads, whichever has been faster (pipeline/threads.py); the
    # warm-up ran each once, so both have a measured cost.
    costs = whisper.thread_costs()
    assert sorted(costs) == [1, 2] and all(c is not None and c > 0 for c in costs.values()), costs
    choice = whisper._finals
    for name in ("kokoro_af_heart_09.wav", "piper_joe_03.wav", "kokoro_bm_george_00.wav"):
        audio = clip_named(name).pcm.astype(np.float32) / 32768
        heard = []
        for threads, model in zip((2, 1), choice.models, strict=True):
            whisper._finals = ThreadChoice([(threads, model)])
            try:
                heard.append(whisper.decode(audio).text)  # a final: the cut window
            finally:
                whisper._finals = choice
        # The same words here; a word's margin for a CPU whose kernels split sums differently.
        assert heard[0] and (same_words(heard[0], heard[1]) or wer(heard[0], heard[1]) <= 0.15), (name, heard)


@pytest.mark.parametrize(("decoded", "kept"), [
    # What a cut-window decode adds when it runs on into the padding (seen on the fixtures).
    ("Where is the missing key? Where", "Where is the missing key?"),
    ("Where's the missing key? Where", "Where's the missing key?"),
    ("Get by for now... Get by for now", "Get by for now..."),
    ("Can you show me the way to the tavern? Can you show me the way to the tavern",
     "Can you show me the way to the tavern?"),
    ("No. No.", "No."),
    # What a player says is left alone.
    ("Where? Where is it?", "Where? Where is it?"),
    ("Hello there. How are you?", "Hello there. How are you?"),
    ("I found it. It was in the mill.", "I found it. It was in the mill."),
])
def test_a_decode_that_runs_on_into_the_padding_is_cut_back(decoded: str, kept: str) -> None:
    assert _collapse_repeats(decoded) == kept


def test_finals_on_the_cut_window_hear_as_well_as_on_30_s(whisper, clips) -> None:
    # Finals take the line + 12 s: about the 30 s window's WER at a third of its cost
    # (docs/stt.md; on these cuts 0.149-0.158 against 0.119 on our machine, one to four words
    # of ~110, and 0.138 against 0.147 on the streamed turns of bench/bench_stt.py).
    assert whisper.config.encoder_window == "fit"
    natural = [c for c in clips if c.natural and c.lang == "en"]
    cut, full = [], []
    for c in natural:
        # As a push-to-talk turn hands it over: from just before the speech to ~0.1 s after it.
        start = max(0, int((c.speech_start_s - 0.25) * 16_000))
        audio = c.pcm[start : int((c.speech_end_s + 0.1) * 16_000)].astype(np.float32) / 32768
        cut.append((c.text, whisper.decode(audio).text))
        full.append((c.text, whisper.decode(audio, "full").text))
    assert corpus_wer(cut) <= min(WER_BOUND_NATURAL, corpus_wer(full) + 0.08), (corpus_wer(full), cut)
