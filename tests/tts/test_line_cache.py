"""LineCache: a line is synthesized once, then served from disk (also after a restart)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npc_engine.pipeline.base import SpeechChunk, Voice
from npc_engine.pipeline.line_cache import LineCache, line_key
from npc_engine.pipeline.tts_espeak import EspeakSynthesizer
from npc_engine.pipeline.tts_kokoro import KokoroSynthesizer


class CountingSynth:
    """Passes every call to a real synthesizer and counts them (to see cache misses)."""

    def __init__(self, inner: KokoroSynthesizer | EspeakSynthesizer) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self.model_hash = inner.model_hash
        self.calls: list[tuple[str, Voice]] = []

    def synthesize(self, text: str, voice: Voice) -> SpeechChunk:
        self.calls.append((text, voice))
        return self.inner.synthesize(text, voice)

    def warm_up(self) -> None:
        self.inner.warm_up()


def test_a_repeated_line_is_served_from_disk(kokoro: KokoroSynthesizer, tmp_path: Path) -> None:
    synth = CountingSynth(kokoro)
    cache = LineCache(tmp_path / "lines", synth)
    text, voice = "Halt. State your business, citizen.", Voice("am_michael")
    assert not cache.has(text, voice)

    first = cache.get_or_render(text, voice)
    assert len(synth.calls) == 1
    audio_path, meta_path = cache.paths(text, voice)
    assert audio_path.is_file() and meta_path.is_file()
    assert cache.has(text, voice)

    second = cache.get_or_render(text, voice)
    assert len(synth.calls) == 1, "the second request must not synthesize"
    assert np.array_equal(second.pcm, first.pcm)
    assert second.sample_rate == first.sample_rate == 24_000
    assert second.visemes == first.visemes and second.visemes
    assert [w.label for w in second.words] == [w.label for w in first.words]

    # A new process (a new cache object on the same directory) finds it too.
    restarted = LineCache(tmp_path / "lines", synth)
    assert np.array_equal(restarted.get_or_render(text, voice).pcm, first.pcm)
    assert len(synth.calls) == 1


def test_text_voice_speed_and_model_are_all_part_of_the_key(espeak: EspeakSynthesizer, tmp_path: Path) -> None:
    synth = CountingSynth(espeak)
    cache = LineCache(tmp_path, synth)
    cache.get_or_render("Welcome to Oakhollow.", Voice("bf_emma"))
    cache.get_or_render("Welcome to  Oakhollow.", Voice("bf_emma"))  # same words, other spacing: a hit
    assert len(synth.calls) == 1
    cache.get_or_render("Welcome to Oakhollow!", Voice("bf_emma"))
    cache.get_or_render("Welcome to Oakhollow.", Voice("af_heart"))
    cache.get_or_render("Welcome to Oakhollow.", Voice("bf_emma", speed=1.2))
    assert len(synth.calls) == 4
    assert line_key("Hi.", Voice("bf_emma"), "model-a") != line_key("Hi.", Voice("bf_emma"), "model-b")


def test_an_unreadable_entry_is_rendered_again(espeak: EspeakSynthesizer, tmp_path: Path) -> None:
    synth = CountingSynth(espeak)
    cache = LineCache(tmp_path, synth)
    text, voice = "The gate is shut.", Voice("am_michael")
    cache.get_or_render(text, voice)
    _, meta_path = cache.paths(text, voice)
    meta_path.write_text("{not json", encoding="utf-8")
    chunk = cache.get_or_render(text, voice)
    assert len(synth.calls) == 2 and len(chunk.pcm) > 0
    assert cache.get(text, voice) is not None, "the entry was rewritten"


def test_prerender_renders_only_what_is_missing(espeak: EspeakSynthesizer, tmp_path: Path) -> None:
    synth = CountingSynth(espeak)
    cache = LineCache(tmp_path, synth)
    lines = [("Hm. You need something forged?", Voice("bm_george")), ("Speak plainly.", Voice("am_michael"))]
    assert cache.prerender(lines) == 2
    assert cache.prerender(lines) == 0
    assert len(synth.calls) == 2
