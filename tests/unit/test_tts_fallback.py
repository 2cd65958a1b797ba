"""``FallbackSynthesizer`` on its own (no event loop): voices in order, degradations, ``NoVoiceLeft``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from npc_engine.pipeline.base import ChatModel, Synthesizer, Voice
from npc_engine.pipeline.scheduling import lower_this_thread
from npc_engine.pipeline.tts_fallback import FallbackSynthesizer, NoVoiceLeft, SynthBudget
from tests.doubles import ScriptedChat, SilenceSynth

VOICE = Voice("bm_george", 0.95)
# Far from any real chunk's render time: a double's chunk is never over this budget by accident.
RELAXED = SynthBudget(chunk_ms=60_000.0, max_rtf=100.0)


def test_the_doubles_implement_the_protocols() -> None:
    assert isinstance(SilenceSynth(), Synthesizer)
    assert isinstance(ScriptedChat(["Hm."]), ChatModel)
    speech = SilenceSynth(seconds_per_word=0.2).synthesize("Come back at dawn.", VOICE)
    assert speech.duration == pytest.approx(0.8)
    assert speech.pcm.dtype == np.int16 and not speech.pcm.any()
    assert [(w.label, w.start) for w in speech.words] == [
        ("Come", 0.0), ("back", pytest.approx(0.2)), ("at", pytest.approx(0.4)), ("dawn.", pytest.approx(0.6)),
    ]
    assert speech.words[-1].end == pytest.approx(speech.duration)


def test_the_first_voice_speaks_while_it_works() -> None:
    a, b = SilenceSynth("silence-a"), SilenceSynth("silence-b")
    chain = FallbackSynthesizer([a, b], RELAXED)
    assert chain.on_primary and chain.name == "silence-a" and chain.sample_rate == 24_000
    for text in ("one", "two words", "three more words"):
        assert chain.synthesize(text, VOICE).text == text
    assert a.texts == ["one", "two words", "three more words"] and b.texts == []
    assert a.voices == [VOICE] * 3
    assert chain.take_degradations() == []


def test_a_failure_retries_the_same_text_with_the_next_voice_for_the_rest_of_the_turn() -> None:
    a, b = SilenceSynth("silence-a", fail_on={1}), SilenceSynth("silence-b")
    chain = FallbackSynthesizer([a, b], RELAXED)
    chain.synthesize("one", VOICE)
    assert chain.synthesize("two", VOICE).text == "two"
    chain.synthesize("three", VOICE)
    assert a.texts == ["one", "two"]
    assert b.texts == ["two", "three"]
    assert not chain.on_primary and chain.name == "silence-b"
    (reason,) = chain.take_degradations()
    assert reason.startswith("silence-a failed (silence-a: scripted failure on call 1")
    assert reason.endswith("; silence-b for the rest of the turn")
    assert chain.take_degradations() == [], "taken once"


def test_a_chunk_over_budget_is_kept_and_the_next_chunks_use_the_next_voice() -> None:
    # A 0.4 s chunk may take max(1 ms, 0.001 x 400 ms) = 1 ms; it takes 50 ms.
    a, b = SilenceSynth("silence-a", delay_s=0.05), SilenceSynth("silence-b")
    chain = FallbackSynthesizer([a, b], SynthBudget(chunk_ms=1.0, max_rtf=0.001))
    kept = chain.synthesize("two words", VOICE)
    assert kept.text == "two words" and kept.duration == pytest.approx(0.4)
    assert chain.current is b
    chain.synthesize("next", VOICE)
    assert a.texts == ["two words"] and b.texts == ["next"]
    (reason,) = chain.take_degradations()
    assert "a 0.4 s chunk took" in reason and "(limit 1 ms)" in reason
    assert "silence-a cannot keep up with playback; silence-b for the rest of the turn" in reason


def test_a_slow_last_voice_is_kept() -> None:
    b = SilenceSynth("silence-b", delay_s=0.05)
    chain = FallbackSynthesizer([b], SynthBudget(chunk_ms=1.0, max_rtf=0.001))
    chain.synthesize("one", VOICE)
    chain.synthesize("two", VOICE)
    assert chain.current is b and b.texts == ["one", "two"]
    assert chain.take_degradations() == [], "nowhere better to go: no switch, no degradation"


def test_budget_allows_a_long_chunk_that_renders_faster_than_it_plays() -> None:
    budget = SynthBudget(chunk_ms=3000.0, max_rtf=1.5)
    assert budget.limit_ms(1.0) == 3000.0
    assert budget.limit_ms(4.0) == pytest.approx(6000.0)


def test_when_every_voice_fails_no_voice_is_left() -> None:
    a, b = SilenceSynth("silence-a", fail_all=True), SilenceSynth("silence-b", fail_all=True)
    chain = FallbackSynthesizer([a, b], RELAXED)
    with pytest.raises(NoVoiceLeft):
        chain.synthesize("one", VOICE)
    assert a.texts == ["one"] and b.texts == ["one"]
    assert chain.current is None and chain.name == "none" and not chain.on_primary
    first, second = chain.take_degradations()
    assert first.startswith("silence-a failed") and first.endswith("; silence-b for the rest of the turn")
    assert second.startswith("silence-b failed") and second.endswith("; text only for the rest of the turn")
    with pytest.raises(NoVoiceLeft):
        chain.synthesize("two", VOICE)
    assert a.texts == ["one"] and b.texts == ["one"], "a spent chain tries no voice again"
    assert chain.take_degradations() == []


def test_an_empty_chain_has_no_voice() -> None:
    chain = FallbackSynthesizer([], RELAXED)
    assert chain.current is None and chain.sample_rate == 0 and not chain.on_primary
    with pytest.raises(NoVoiceLeft):
        chain.synthesize("one", VOICE)


def test_warm_up_warms_every_voice_and_each_turn_starts_on_the_primary() -> None:
    a, b = SilenceSynth("silence-a", fail_on={0}), SilenceSynth("silence-b")
    voices = [a, b]
    FallbackSynthesizer(voices, RELAXED).warm_up()
    assert (a.warm_ups, b.warm_ups) == (1, 1)
    turn1 = FallbackSynthesizer(voices, RELAXED)
    turn1.synthesize("one", VOICE)
    assert turn1.current is b
    assert FallbackSynthesizer(voices, RELAXED).current is a, "falling back is per turn"


def test_a_chunk_rendered_on_a_lowered_thread_is_not_held_against_the_voice() -> None:
    # The later lane (a later sentence while other turns are live) runs below the LLM on
    # purpose: a slow render there says nothing about whether the voice keeps up.
    a, b = SilenceSynth("silence-a", delay_s=0.05), SilenceSynth("silence-b")
    chain = FallbackSynthesizer([a, b], SynthBudget(chunk_ms=1.0, max_rtf=0.001))
    with ThreadPoolExecutor(1, initializer=lower_this_thread, initargs=(1,)) as lowered:
        assert lowered.submit(chain.synthesize, "two words", VOICE).result().text == "two words"
    assert chain.on_primary and chain.take_degradations() == []
    chain.synthesize("two words", VOICE)  # the same render on a thread of normal priority
    assert not chain.on_primary
