"""Speculative turns: they run silently until committed (numbered, sent in order) or dropped (no trace)."""

from __future__ import annotations

import asyncio

from npc_engine.protocol import outgoing as msg
from npc_engine.turns.handle import TurnHandle
from tests.doubles import ScriptedChat, ScriptedReply
from tests.unit.conftest import DEFAULT_REPLY, NEUTRAL, PLAYER, MakeRig, Rig
from tests.unit.support import end_of, eventually, finished

SLOW = ScriptedReply(
    "Hm, the forge is cold today and the coals will not catch however hard I work the bellows. "
    "Come back at dawn when the iron is hot.",
    tokens_per_s=20,
)
# An intent example from story/oakhollow.yaml: fires Bram's `offer_help` exit (bram_hammer_stolen -> bram_waiting).
MOVES_THE_STORY = "I can help you"


async def spoken_in_full(turn: TurnHandle, reply: str = DEFAULT_REPLY) -> None:
    """Wait until a (held) speculative turn has synthesized its whole reply."""
    await eventually(lambda: " ".join(turn.delivered.audio_text) == reply, what="the speculative turn's reply")


def assert_whole_turn(rig: Rig, turn_id: int) -> list[msg.SessionMessage]:
    msgs = rig.sent.turn(turn_id)
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    assert isinstance(msgs[0], msg.TurnStart) and isinstance(msgs[-1], msg.TurnEnd)
    return msgs


async def test_a_speculative_turn_sends_nothing_until_committed(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]))
    spec = rig.session.start_turn("text", NEUTRAL, speculative=True)
    assert spec.speculative and spec.id is None
    await spoken_in_full(spec)
    assert rig.sent.messages == [], "a pending turn's messages are held"
    assert not spec.done, "it waits for the decision before its turn.end"
    assert rig.session.memory.history == []

    await rig.session.commit_turn(spec)
    assert spec.id == 1 and not spec.speculative
    await spec.wait()
    msgs = assert_whole_turn(rig, 1)
    assert msgs == rig.sent.messages
    end = end_of(rig.sent, 1)
    assert (end.status, end.text) == ("ok", DEFAULT_REPLY)
    assert [a.chunk for a in rig.sent.of(msg.ReplyAudio)] == [0, 1, 2]
    assert [e.content for e in rig.session.memory.history] == [NEUTRAL, DEFAULT_REPLY]


async def test_a_committed_turn_follows_the_running_turns_end(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([SLOW, DEFAULT_REPLY]))
    running = rig.session.start_turn("text", "Tell me about the forge.")
    await rig.sent.first(msg.ReplyText, turn=1)
    spec = rig.session.start_turn("text", NEUTRAL, speculative=True)
    await spoken_in_full(spec)
    assert all(getattr(m, "turn", None) == 1 for m in rig.sent.messages), "only the running turn speaks"
    assert not running.cancelled, "a speculative turn runs beside the running one"

    await rig.session.commit_turn(spec)
    assert running.done and running.interrupted
    await spec.wait()
    msgs = rig.sent.messages
    end1 = end_of(rig.sent, 1)
    assert end1.status == "cancelled"
    assert msgs.index(end1) < msgs.index(rig.sent.of(msg.TurnStart, 2)[0])
    assert msgs[msgs.index(end1) + 1:] == assert_whole_turn(rig, 2), "turn 2 arrives whole, after turn 1"
    assert end_of(rig.sent, 2).text == DEFAULT_REPLY


async def test_a_dropped_turn_leaves_no_trace(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY, "Off with you."]))
    spec = rig.session.start_turn("text", NEUTRAL, speculative=True)
    await spoken_in_full(spec)
    rig.session.drop_turn(spec)
    await spec.wait()
    assert spec.done and spec.dropped and spec.id is None
    assert rig.sent.messages == []
    assert rig.session.memory.history == []
    assert await rig.engine.store.load_history(PLAYER, "bram") == []

    turn = rig.session.start_turn("text", "Where is the mill?")
    await turn.wait()
    assert turn.id == 1, "a dropped turn takes no turn id"
    assert_whole_turn(rig, 1)
    assert rig.sent.messages == rig.sent.turn(1)
    assert [e.content for e in rig.session.memory.history] == ["Where is the mill?", "Off with you."]


async def test_dropping_a_speculative_turn_mid_reply_stops_the_model(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([SLOW]))
    spec = rig.session.start_turn("text", NEUTRAL, speculative=True)
    await eventually(lambda: bool(rig.chat.calls) and rig.chat.calls[0].tokens >= 3, what="the model streaming")
    rig.session.drop_turn(spec)
    await spec.wait()
    await finished(rig.chat.calls[0])
    assert rig.chat.calls[0].stopped_early
    assert rig.sent.messages == [] and rig.session.memory.history == []


async def test_closing_the_session_drops_its_speculative_turns(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([SLOW]))
    spec = rig.session.start_turn("text", NEUTRAL, speculative=True)
    await rig.session.close()
    await spec.wait()
    assert spec.dropped and rig.sent.messages == []


async def test_a_speculative_line_that_moves_the_story_waits_and_changes_nothing_if_dropped(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]))
    state = await rig.engine.story_state(PLAYER)
    before = state.to_dict()
    assert rig.engine.story.on_player_line(state.copy(), "bram", MOVES_THE_STORY), "the line fires an exit"
    assert state.current["bram"] == "bram_hammer_stolen" and not state.flags["quest_started"]

    spec = rig.session.start_turn("text", MOVES_THE_STORY, speculative=True)
    await eventually(lambda: rig.engine.turns.count == 1, what="the speculative turn running")
    rig.session.drop_turn(spec)
    await spec.wait()
    assert rig.sent.messages == []
    assert state.to_dict() == before, "the story did not move"
    assert await rig.engine.store.load_story_state(PLAYER) is None, "nothing was saved"
    assert rig.session.memory.history == []


async def test_a_committed_speculative_line_moves_the_story(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]))
    spec = rig.session.start_turn("text", MOVES_THE_STORY, speculative=True)
    await eventually(lambda: rig.engine.turns.count == 1, what="the speculative turn running")
    assert rig.chat.calls == [], "a line that would move the story waits for the decision before the model"
    await rig.session.commit_turn(spec)
    await spec.wait()
    state = await rig.engine.story_state(PLAYER)
    assert state.current["bram"] == "bram_waiting" and state.flags["quest_started"]
    saved = await rig.engine.store.load_story_state(PLAYER)
    assert saved is not None and saved["current"]["bram"] == "bram_waiting"
    kinds = [m.effect.get("kind") for m in rig.sent.of(msg.StoryMessage, 1)]
    assert kinds == ["intent_matched", "flag_set", "emit_event", "beat_entered"], kinds
    msgs = rig.sent.turn(1)
    story_at = [msgs.index(m) for m in rig.sent.of(msg.StoryMessage, 1)]
    assert max(story_at) < msgs.index(rig.sent.of(msg.ReplyText, 1)[0]), "story effects go out before the reply"
    assert end_of(rig.sent, 1).text == DEFAULT_REPLY


async def test_a_speculative_turn_dropped_before_its_story_check_changes_nothing(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]))
    state = await rig.engine.story_state(PLAYER)
    before = state.to_dict()
    spec = rig.session.start_turn("text", MOVES_THE_STORY, speculative=True)
    # Step the loop exactly once: the turn's task passes its `cancelled` check and hands the
    # reply to `ahead`, whose producer task (the story check) has not run yet. Drop there.
    await asyncio.sleep(0)
    assert rig.engine.turns.count == 1
    rig.session.drop_turn(spec)
    await spec.wait()
    assert rig.sent.messages == []
    assert state.to_dict() == before
