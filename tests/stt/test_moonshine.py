"""Moonshine tiny-en (the alternative embedded English recognizer): streaming partials and finals."""

from __future__ import annotations

from npc_engine.pipeline.stt_common import SpeculativeStream
from npc_engine.pipeline.wer import corpus_wer

from .speech import frames

# Measured 0.37 on the natural voices (docs/stt.md): Moonshine tiny is the fast,
# less accurate option. The bound catches a broken adapter (dropped lines, garbage).
WER_BOUND_NATURAL = 0.45


def test_interfaces(moonshine) -> None:
    assert moonshine.sample_rate == 16_000 and moonshine.name == "moonshine"
    assert isinstance(moonshine.open_stream(), SpeculativeStream)


def test_streamed_wer_on_natural_voices(moonshine, clips) -> None:
    natural = [c for c in clips if c.natural and c.lang == "en"]
    stream = moonshine.open_stream(partial_interval_ms=60_000)  # finals only: partials are tested below
    pairs = []
    for c in natural:
        for f in frames(c.pcm):
            stream.accept(f)
        pairs.append((c.text, stream.finalize()))
    assert all(h for _, h in pairs), pairs
    assert corpus_wer(pairs) <= WER_BOUND_NATURAL, pairs


def test_partials_arrive_before_the_final_and_are_clean(moonshine, clip_named) -> None:
    stream = moonshine.open_stream()
    partials = [p for f in frames(clip_named("kokoro_af_heart_09.wav").pcm) if (p := stream.accept(f)) is not None]
    final = stream.finalize()
    texts = [p for p in partials if p]
    assert len(texts) >= 2 and final
    assert all(ch.isprintable() for p in partials for ch in p)  # no stray bytes from the library


def test_speculative_final_equals_the_real_final(moonshine, clip_named) -> None:
    stream = moonshine.open_stream()
    for f in frames(clip_named("kokoro_bf_emma_07.wav").pcm):
        stream.accept(f)
    speculative = stream.prepare_final()
    decodes = stream.decodes
    assert stream.finalize() == speculative and speculative
    assert stream.decodes == decodes


def test_reset_between_turns(moonshine, clip_named) -> None:
    stream = moonshine.open_stream()
    for f in frames(clip_named("kokoro_am_michael_04.wav").pcm):
        stream.accept(f)
    stream.reset()
    assert stream.finalize() == ""
    second = clip_named("kokoro_af_heart_01.wav").pcm
    for f in frames(second):
        stream.accept(f)
    text = stream.finalize()
    fresh = moonshine.open_stream()
    for f in frames(second):
        fresh.accept(f)
    assert text and text == fresh.finalize()  # nothing of the reset turn leaked into this one
    assert stream.finalize() == ""
