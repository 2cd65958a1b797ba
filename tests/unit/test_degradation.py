"""Over budget or failing, a turn degrades instead of stalling: slow or silent models, failing voices."""

from __future__ import annotations

import pytest

from npc_engine.protocol import outgoing as msg
from tests.doubles import ScriptedChat, SilenceSynth
from tests.unit.conftest import DEFAULT_REPLY, NEUTRAL, MakeRig, Rig
from tests.unit.support import end_of, finished

# DEFAULT_REPLY's chunks: "Hm, the forge is cold" (1.0 s of SilenceSynth audio), "today.", "Come back at dawn."
FIRST_CHUNK = "Hm, the forge is cold"


def reasons(end: msg.TurnEnd, stage: str) -> list[str]:
    return [d["reason"] for d in end.degraded or [] if d["stage"] == stage]


def fallback_texts(rig: Rig) -> set[str]:
    return {line.text for line in rig.character.fallbacks}


async def run_turn(rig: Rig) -> msg.TurnEnd:
    turn = rig.session.start_turn("text", NEUTRAL)
    await turn.wait()
    return end_of(rig.sent, 1)


# --------------------------------------------------------------------------- the model


async def test_first_token_past_the_budget_speaks_a_fallback_line_then_and_stops_the_model(make_rig: MakeRig) -> None:
    # The player gets a fallback line at the budget, not a wait up to llm_timeout_ms.
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY], ttft_s=3.0), budget_llm_first_token_ms=100, llm_timeout_ms=8_000)
    end = await run_turn(rig)
    assert end.status == "degraded"
    assert any("100 ms budget" in r and "fallback" in r for r in reasons(end, "llm")), end.degraded
    assert end.text in fallback_texts(rig) and end.tokens == 0
    assert [a.text for a in rig.sent.of(msg.ReplyAudio)] == [end.text], "the fallback line is spoken"
    assert "llm_first_token" not in end.timings
    # Its model call was stopped before its first token (the double sees the stop event).
    await finished(rig.chat.calls[0], timeout=5.0)
    assert rig.chat.calls[0].tokens == 0


async def test_llm_timeout_caps_a_first_token_budget_set_above_it(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat(["never said"], never_first_token=True),
                         budget_llm_first_token_ms=8_000, llm_timeout_ms=100)
    end = await run_turn(rig)
    assert end.status == "degraded"
    llm = reasons(end, "llm")
    assert any("100 ms budget" in r for r in llm), llm
    texts = [t.delta for t in rig.sent.of(msg.ReplyText)]
    assert len(texts) == 1 and texts[0] in fallback_texts(rig)
    assert [a.text for a in rig.sent.of(msg.ReplyAudio)] == texts, "the fallback line is spoken"
    assert end.text == texts[0] and end.tokens == 0
    assert rig.session.memory.history[-1].content == texts[0]


async def test_giving_up_on_the_first_token_stops_the_model(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat(["never said"], never_first_token=True),
                         budget_llm_first_token_ms=50, llm_timeout_ms=200)
    await run_turn(rig)
    # The stalled stream is released only by `cancel` (or the engine closing at teardown).
    await finished(rig.chat.calls[0], timeout=1.0)


async def test_a_model_that_ends_without_a_word_gives_way_to_a_fallback_line(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([""]))
    end = await run_turn(rig)
    assert end.text in fallback_texts(rig)
    assert [a.text for a in rig.sent.of(msg.ReplyAudio)] == [end.text]


@pytest.mark.parametrize("reply", ["(nods slowly)", "...", "[emotion:happy] *smiles*", " — "])
async def test_a_reply_with_no_words_to_say_gives_way_to_a_fallback_line(make_rig: MakeRig, reply: str) -> None:
    # Tokens came, but only a stage direction or punctuation. The guard says a fallback for
    # the ones it sees as empty; the reply stage for whatever leaves no clause to speak (a
    # lone "..." passes the guard, then the chunker drops it). Without either, the player,
    # who may have heard an ack already, got silence: CI once saw such a turn, an ack alone.
    rig = await make_rig(ScriptedChat([reply]))
    end = await run_turn(rig)
    assert end.text in fallback_texts(rig)
    assert [a.text for a in rig.sent.of(msg.ReplyAudio)] == [end.text]
    assert "tts_first_chunk" in end.timings and "first_audio_sent" in end.timings


async def test_model_error_reports_an_error_in_the_turn_then_the_fallback_line(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY], fail_before_first_token=True))
    end = await run_turn(rig)
    msgs = rig.sent.turn(1)
    errors = rig.sent.of(msg.Error, 1)
    assert [e.code for e in errors] == ["model_error"]
    texts = rig.sent.of(msg.ReplyText)
    assert len(texts) == 1 and texts[0].delta in fallback_texts(rig)
    assert msgs.index(errors[0]) < msgs.index(texts[0]), "the error comes first, then the fallback line"
    assert end.status == "degraded" and reasons(end, "llm")
    assert end.text == texts[0].delta


async def test_model_error_mid_reply_reports_the_error_and_speaks_the_fallback(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY], fail_after_tokens=3))
    end = await run_turn(rig)
    assert [e.code for e in rig.sent.of(msg.Error, 1)] == ["model_error"]
    assert end.status == "degraded" and end.tokens == 3
    assert end.text in fallback_texts(rig), "the unfinished clause is not spoken; the fallback line is"


async def test_model_error_mid_reply_in_a_text_only_session_keeps_words_apart(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY], fail_after_tokens=3), audio=False)
    end = await run_turn(rig)
    assert "the forgeHm" not in end.text  # got "Hm, the forgeHm. Say that again."


# --------------------------------------------------------------------------- the voices


async def test_a_failing_primary_voice_hands_the_same_chunk_to_the_second(make_rig: MakeRig) -> None:
    a, b = SilenceSynth("silence-a", fail_on={0}), SilenceSynth("silence-b")
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]), voices=[a, b])
    end = await run_turn(rig)
    audio = rig.sent.of(msg.ReplyAudio)
    assert [x.chunk for x in audio] == list(range(len(audio)))
    assert audio[0].text == FIRST_CHUNK, "chunk 0 is not lost"
    assert a.texts == [FIRST_CHUNK], "the primary voice was tried once"
    assert b.texts == [x.text for x in audio], "the second voice spoke chunk 0 and the rest of the turn"
    assert end.status == "degraded"
    tts = reasons(end, "tts")
    assert len(tts) == 1 and "silence-a failed" in tts[0] and "silence-b for the rest of the turn" in tts[0]
    assert end.text == DEFAULT_REPLY


async def test_a_chunk_over_the_synth_budget_is_kept_and_later_chunks_use_the_second_voice(make_rig: MakeRig) -> None:
    # Chunk 0 is 1.0 s of audio: its limit is max(100 ms, 0.05 x 1000 ms) = 100 ms; it takes 600 ms.
    a, b = SilenceSynth("silence-a", delay_s=0.6), SilenceSynth("silence-b")
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]), voices=[a, b], budget_tts_chunk_ms=100, tts_max_rtf=0.05)
    end = await run_turn(rig)
    audio = rig.sent.of(msg.ReplyAudio)
    assert len(audio) >= 2
    assert a.texts == [audio[0].text] == [FIRST_CHUNK], "the slow chunk is still used"
    assert b.texts == [x.text for x in audio[1:]]
    assert end.status == "degraded"
    tts = reasons(end, "tts")
    assert len(tts) == 1 and "silence-a cannot keep up" in tts[0] and "silence-b for the rest" in tts[0], tts
    assert end.text == DEFAULT_REPLY


async def test_when_every_voice_fails_the_turn_goes_on_as_text(make_rig: MakeRig) -> None:
    a, b = SilenceSynth("silence-a", fail_all=True), SilenceSynth("silence-b", fail_all=True)
    rig = await make_rig(ScriptedChat(["[emotion:sad] Hm, the forge is cold today. Come back at dawn."]), voices=[a, b])
    end = await run_turn(rig)
    assert rig.sent.of(msg.ReplyAudio) == []
    assert (len(a.texts), len(b.texts)) == (1, 1), "each voice is tried once, then the turn is text only"
    assert end.status == "degraded" and end.audio_seconds == 0.0
    tts = reasons(end, "tts")
    assert len(tts) == 2 and "text only for the rest of the turn" in tts[1], tts
    assert end.text == DEFAULT_REPLY
    assert "".join(t.delta for t in rig.sent.of(msg.ReplyText)).strip() == DEFAULT_REPLY
    assert [(c.kind, c.name) for c in rig.sent.of(msg.Cue)] == [("emotion", "sad")], "cues still go out"
    assert rig.session.memory.history[-1].content == DEFAULT_REPLY
