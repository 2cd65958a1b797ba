"""A reply's first words voiced first (``HeadFirst``): the chain's terms and the turn's chunks.

Test doubles (``HeadFirstSilence``, ``SilenceSynth``, ``ScriptedChat``) stand in for the models
here; Kokoro's own first windows, and what they sound like against the whole render, are in
``tests/tts/test_head_first.py``.
"""

from __future__ import annotations

import threading

import pytest

from npc_engine.pipeline.base import HeadFirst, Synthesizer, Voice
from npc_engine.pipeline.tts_fallback import FallbackSynthesizer, SynthBudget
from npc_engine.protocol import outgoing as msg
from npc_engine.store import HistoryEntry
from tests.doubles import HeadFirstSilence, ScriptedChat, SilenceSynth
from tests.unit.conftest import DEFAULT_REPLY, NEUTRAL, MakeRig
from tests.unit.support import end_of

VOICE = Voice("bm_george")
RELAXED = SynthBudget(chunk_ms=60_000.0, max_rtf=100.0)


def test_the_double_is_a_head_first_synthesizer() -> None:
    synth = HeadFirstSilence()
    assert isinstance(synth, Synthesizer) and isinstance(synth, HeadFirst)
    assert not isinstance(SilenceSynth(), HeadFirst)


def test_the_chain_voices_the_head_then_the_rest_on_demand() -> None:
    head_first, other = HeadFirstSilence(), SilenceSynth("silence-b")
    chain = FallbackSynthesizer([head_first, other], RELAXED)
    head = chain.synthesize_head("Come back at dawn.", VOICE)
    assert head.chunk.text == "Come back" and head.rest_text == "at dawn."
    assert head_first.texts == ["Come back"], "the rest is not rendered until asked for"
    assert head.rest is not None
    assert head.rest().text == "at dawn."
    assert head_first.texts == ["Come back", "at dawn."] and other.texts == []
    assert chain.take_degradations() == []


def test_a_voice_without_first_windows_renders_the_whole_text() -> None:
    plain = SilenceSynth("silence-a")
    head = FallbackSynthesizer([plain], RELAXED).synthesize_head("Come back at dawn.", VOICE)
    assert head.rest is None and head.chunk.text == "Come back at dawn."
    assert plain.texts == ["Come back at dawn."]


def test_if_the_rest_fails_the_next_voice_says_its_words() -> None:
    head_first, other = HeadFirstSilence(fail_rest=True), SilenceSynth("silence-b")
    chain = FallbackSynthesizer([head_first, other], RELAXED)
    head = chain.synthesize_head("Come back at dawn.", VOICE)
    assert head.rest is not None
    rest = head.rest()
    assert rest.text == "at dawn." and other.texts == ["at dawn."]
    (reason,) = chain.take_degradations()
    assert "scripted failure of the rest" in reason and reason.endswith("silence-b for the rest of the turn")


def test_if_the_head_fails_the_next_voice_says_the_whole_text() -> None:
    head_first, other = HeadFirstSilence(fail_all=True), SilenceSynth("silence-b")
    chain = FallbackSynthesizer([head_first, other], RELAXED)
    head = chain.synthesize_head("Come back at dawn.", VOICE)
    assert head.rest is None and head.chunk.text == "Come back at dawn." and other.texts == ["Come back at dawn."]
    assert len(chain.take_degradations()) == 1


async def test_the_replys_first_chunk_is_its_first_words_and_the_rest_follows(make_rig: MakeRig) -> None:
    voice = HeadFirstSilence()
    rig = await make_rig(ScriptedChat(["[emotion:happy] " + DEFAULT_REPLY]), voices=[voice, SilenceSynth("silence-b")])
    turn = rig.session.start_turn("text", NEUTRAL)
    await turn.wait()
    audio = rig.sent.of(msg.ReplyAudio)
    assert " ".join(a.text for a in audio) == DEFAULT_REPLY, "every word once, in order"
    assert len(audio[0].text.split()) == 2, audio[0].text
    assert voice.rests == 1, "only the reply's first chunk goes head first"
    assert voice.texts == [a.text for a in audio]
    offset = 0.0
    for a in audio:  # back to back, as ever
        assert a.start == pytest.approx(offset, abs=1e-3)
        offset += a.duration
    msgs = rig.sent.turn(turn.id)
    after_first = msgs[msgs.index(audio[0]) + 1:msgs.index(audio[1])]
    assert [(c.kind, c.name) for c in after_first if isinstance(c, msg.Cue)][:1] == [("emotion", "happy")], \
        "the chunk's cues go with its first words"
    words = next(c for c in msgs[msgs.index(audio[1]) + 1:] if isinstance(c, msg.Cue) and c.kind == "words")
    assert words.chunk == 1 and [w["word"] for w in words.words or []] == audio[1].text.split()
    end = end_of(rig.sent, 1)
    assert end.status == "ok" and end.text == DEFAULT_REPLY
    assert rig.session.memory.history[-1] == HistoryEntry("assistant", DEFAULT_REPLY)


async def test_a_later_chunk_goes_head_first_only_when_the_voice_says_it_would_be_late(make_rig: MakeRig) -> None:
    # The first chunk is asked with no due time (the player waits now); later ones with the
    # time the audio before them has played. A voice that would be late splits them too.
    for late in (False, True):
        voice = HeadFirstSilence(late_heads=late)
        rig = await make_rig(ScriptedChat([DEFAULT_REPLY]), voices=[voice])
        turn = rig.session.start_turn("text", NEUTRAL)
        await turn.wait()
        audio = rig.sent.of(msg.ReplyAudio)
        assert " ".join(a.text for a in audio) == DEFAULT_REPLY, "every word once, in order"
        assert voice.dues[0] is None and len(voice.dues) >= 2 and all(d is not None for d in voice.dues[1:])
        assert voice.dues[1:] == sorted(voice.dues[1:]), "each due when the audio before it has played"
        # DEFAULT_REPLY's chunks: "Hm, the forge is cold", "today.", "Come back at dawn."
        split_late = ["Come back", "at dawn."] if late else ["Come back at dawn."]
        assert voice.texts == ["Hm, the", "forge is cold", "today.", *split_late]
        assert end_of(rig.sent, 1).text == DEFAULT_REPLY


async def test_a_turn_cut_off_after_the_head_sends_no_rest(make_rig: MakeRig) -> None:
    held = threading.Event()
    voice = HeadFirstSilence(hold_rest=held)
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]), voices=[voice])
    turn = rig.session.start_turn("text", NEUTRAL)
    first = await rig.sent.first(msg.ReplyAudio)
    await rig.sent.until(lambda _: voice.rests == 1)  # the rest is rendering (held)
    rig.session.cancel()
    held.set()
    await turn.wait()
    audio = rig.sent.of(msg.ReplyAudio)
    assert audio == [first], "nothing after the head"
    end = end_of(rig.sent, 1)
    assert end.status == "cancelled" and end.text == first.text
    assert rig.session.memory.history[-1] == HistoryEntry("assistant", first.text, interrupted=True)
