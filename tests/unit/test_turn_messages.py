"""A turn's messages: their order, numbering, audio timeline, and the sentence limit."""

from __future__ import annotations

import pytest

from npc_engine.engine import Engine
from npc_engine.protocol import outgoing as msg
from npc_engine.session.session import Session
from tests.doubles import ScriptedChat, SilenceSynth, word_pieces
from tests.harness import eventually
from tests.unit.conftest import DEFAULT_REPLY, NEUTRAL, PLAYER, MakeRig
from tests.unit.support import Sent, end_of, finished

# Eight sentences; Bram's character file allows two (reply.max_sentences).
LONG_REPLY = (
    "One two three. Four five six. Seven eight nine. Ten eleven twelve. Thirteen fourteen fifteen. "
    "Sixteen seventeen eighteen. Nineteen twenty twenty-one. Twenty-two twenty-three twenty-four."
)
FIRST_TWO = "One two three. Four five six."


def chunk_cues(msgs: list[msg.SessionMessage], audio: msg.ReplyAudio) -> list[msg.Cue]:
    """The cue messages that directly follow ``audio``."""
    out: list[msg.Cue] = []
    for m in msgs[msgs.index(audio) + 1:]:
        if not isinstance(m, msg.Cue):
            break
        out.append(m)
    return out


async def test_text_turn_in_audio_session_sends_messages_in_protocol_order(
    session: Session, sent: Sent, chat: ScriptedChat, voices: list[SilenceSynth]
) -> None:
    turn = session.start_turn("text", NEUTRAL)
    await turn.wait()
    assert turn.id == 1
    msgs = sent.turn(1)
    assert msgs == sent.messages, "every message belongs to the turn"
    assert [m.seq for m in msgs] == list(range(len(msgs))), "seq counts 0, 1, 2, ... in send order"
    assert all(m.session == session.id for m in msgs)

    start, end = msgs[0], msgs[-1]
    assert isinstance(start, msg.TurnStart) and start.source == "text" and start.input == NEUTRAL
    assert isinstance(end, msg.TurnEnd) and end.status == "ok" and not end.interrupted
    assert sent.types(1).count("turn.start") == 1 and sent.types(1).count("turn.end") == 1

    texts = sent.of(msg.ReplyText)
    audio = sent.of(msg.ReplyAudio)
    assert len(audio) >= 2, "the reply is spoken in several chunks"
    assert "".join(t.delta for t in texts) == DEFAULT_REPLY
    assert msgs.index(texts[0]) < msgs.index(audio[0]), "text goes out ahead of the audio"
    assert " ".join(a.text for a in audio) == DEFAULT_REPLY
    assert [a.chunk for a in audio] == list(range(len(audio)))

    offset = 0.0
    step = voices[0].seconds_per_word
    for a in audio:
        assert a.start == pytest.approx(offset, abs=1e-3), "each chunk starts where the previous ones end"
        assert a.duration == pytest.approx(step * len(a.text.split()), abs=1e-3)
        assert len(a.pcm) == 2 * round(a.duration * a.rate)
        offset += a.duration
        cues = chunk_cues(msgs, a)
        assert [c.kind for c in cues] == ["visemes", "words"], "each reply.audio is followed by its tracks"
        assert all(c.chunk == a.chunk for c in cues)
        words = cues[-1].words
        assert words is not None
        assert [w["word"] for w in words] == a.text.split()
        assert [w["start"] for w in words] == pytest.approx([i * step for i in range(len(words))], abs=1e-3)
    assert end.audio_seconds == pytest.approx(offset, abs=1e-3)
    assert end.text == DEFAULT_REPLY
    assert end.tokens == len(word_pieces(DEFAULT_REPLY)) == chat.calls[0].tokens

    assert voices[0].texts == [a.text for a in audio], "the primary voice spoke every chunk"
    assert voices[1].texts == []
    assert [(e.role, e.content, e.interrupted) for e in session.memory.history] == [
        ("user", NEUTRAL, False), ("assistant", DEFAULT_REPLY, False),
    ]


async def test_the_model_is_asked_with_the_persona_and_the_players_line(
    session: Session, chat: ScriptedChat
) -> None:
    # The player speaks once the open's warm-up is over (one that comes in the middle of it
    # goes ahead after its step on the model: session/warm.py).
    await eventually(lambda: not session.warming, what="the open's warm-up")
    turn = session.start_turn("text", NEUTRAL)
    await turn.wait()
    call = chat.calls[0]
    assert call.affinity == session.id, "a conversation keeps its KV cache slot"
    assert call.messages[0].role == "system" and "Bram" in call.messages[0].content
    assert (call.messages[-1].role, call.messages[-1].content) == ("user", NEUTRAL)
    assert call.options.max_tokens == session.character.reply.max_tokens
    # Everything before the player's line (persona, example exchanges) was warmed up.
    assert chat.warm_ups and chat.warm_ups[-1][0] == call.messages[:-1], "the persona prompt was warmed up"


async def test_cues_go_out_with_the_chunk_they_belong_to(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat(["[emotion:happy] Hm, the forge is cold today. Come back at dawn."]))
    turn = rig.session.start_turn("text", NEUTRAL)
    await turn.wait()
    msgs = rig.sent.turn(turn.id)
    first = rig.sent.of(msg.ReplyAudio)[0]
    cues = chunk_cues(msgs, first)
    assert (cues[0].kind, cues[0].name, cues[0].chunk, cues[0].at) == ("emotion", "happy", 0, 0.0)
    assert "[" not in "".join(t.delta for t in rig.sent.of(msg.ReplyText)), "markup never reaches the text"
    assert end_of(rig.sent, 1).text == "Hm, the forge is cold today. Come back at dawn."


async def test_text_only_session_sends_text_and_cues_but_no_audio(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat(["[gesture:nod] Hm, the forge is cold today. Come back at dawn."]), audio=False)
    turn = rig.session.start_turn("text", NEUTRAL)
    await turn.wait()
    assert not rig.sent.of(msg.ReplyAudio)
    assert all(v.texts == [] for v in rig.voices), "a text-only session never touches a voice"
    nod = rig.sent.of(msg.Cue)
    assert [(c.kind, c.name, c.chunk) for c in nod] == [("gesture", "nod", None)]
    end = end_of(rig.sent, 1)
    assert (end.status, end.audio_seconds) == ("ok", 0.0)
    assert end.text == "".join(t.delta for t in rig.sent.of(msg.ReplyText)).strip()
    assert rig.session.memory.history[-1].content == end.text


async def test_sentence_limit_cuts_the_reply_and_stops_the_model(make_rig: MakeRig) -> None:
    chat = ScriptedChat([LONG_REPLY], tokens_per_s=50)
    rig = await make_rig(chat)
    assert rig.character.reply.max_sentences == 2
    turn = rig.session.start_turn("text", NEUTRAL)
    await turn.wait()
    end = end_of(rig.sent, 1)
    assert end.status == "ok"
    assert " ".join(a.text for a in rig.sent.of(msg.ReplyAudio)) == FIRST_TWO
    assert end.text == FIRST_TWO
    assert rig.session.memory.history[-1].content == FIRST_TWO
    call = chat.calls[0]
    await finished(call)
    assert call.saw_cancel or call.closed_early, "the reply's stream was stopped once it had its sentences"
    # It stops within a few tokens of the cut (the one that ended the sentence, one in flight,
    # a slack for a busy machine), far short of the whole reply.
    assert call.tokens <= len(word_pieces(FIRST_TWO)) + 5 < call.total


async def test_sentence_limit_in_a_text_only_session_drops_the_dangling_words(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([LONG_REPLY], tokens_per_s=50), audio=False)
    turn = rig.session.start_turn("text", NEUTRAL)
    await turn.wait()
    assert end_of(rig.sent, 1).text == FIRST_TWO  # got "One two three. Four five six. Seven"
    # The protocol's promise for text-only sessions: turn.end.text is what reply.text sent.
    assert "".join(m.delta for m in rig.sent.of(msg.ReplyText)).strip() == FIRST_TWO


async def test_turn_ids_count_up_per_session_and_seq_restarts(session: Session, sent: Sent) -> None:
    for expected in (1, 2, 3):
        turn = session.start_turn("text", NEUTRAL)
        await turn.wait()
        assert turn.id == expected
        assert [m.seq for m in sent.turn(expected)] == list(range(len(sent.turn(expected))))
    assert len(session.memory.history) == 6


async def test_memory_is_persisted_and_reloaded(engine: Engine, session: Session) -> None:
    turn = session.start_turn("text", NEUTRAL)
    await turn.wait()
    stored = await engine.store.load_history(PLAYER, "bram")
    assert stored == session.memory.history
    again = Session(engine, "s-again", engine.characters["bram"], PLAYER, Sent())
    opened = await again.open({})
    assert opened.resumed and again.memory.history == stored
    await again.close()


async def test_a_cue_between_sentences_goes_with_the_next_sentence(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat(["Hm, the forge is cold today. [gesture:nod] Come back at dawn."]))
    turn = rig.session.start_turn("text", NEUTRAL)
    await turn.wait()
    come_back = next(a for a in rig.sent.of(msg.ReplyAudio) if a.text == "Come back at dawn.")
    nod = next(c for c in rig.sent.of(msg.Cue) if c.name == "nod")
    assert nod.chunk == come_back.chunk  # got the chunk of "today."


async def test_a_greeting_is_a_scripted_line_without_the_model(session: Session, sent: Sent, chat: ScriptedChat) -> None:
    turn = session.start_turn("greeting", None)
    await turn.wait()
    greetings = {session.engine.story.fill(g.text, session.engine.story_states[PLAYER]) for g in session.character.greetings}
    end = end_of(sent, 1)
    assert sent.of(msg.TurnStart)[0].source == "greeting"
    assert (end.status, end.tokens) == ("ok", 0) and end.text in greetings
    assert [a.text for a in sent.of(msg.ReplyAudio)] == [end.text]
    assert chat.calls == [], "no model call"
    assert [(e.role, e.content) for e in session.memory.history] == [("assistant", end.text)]
