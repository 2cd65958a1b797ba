"""Stopping a turn: the one cancel path, what memory keeps, and what the player heard."""

from __future__ import annotations

import pytest

from npc_engine.protocol import outgoing as msg
from npc_engine.session.session import Session
from npc_engine.store import HistoryEntry
from tests.doubles import ScriptedChat, ScriptedReply
from tests.unit.conftest import NEUTRAL, PLAYER, MakeRig, Rig
from tests.unit.support import Sent, end_of, finished

# Two long sentences (Bram may say two): slow enough to be cut off mid-way.
LONG = (
    "Hm, the forge is cold today and the coals will not catch however hard I work the bellows. "
    "Come back at dawn when the iron is hot and the new hammer is finished and sharp."
)
SLOW = ScriptedReply(LONG, tokens_per_s=20)
# What SilenceSynth (0.2 s a word) makes of LONG's first chunk, "Hm, the forge is cold": words at 0.0, 0.2, 0.4, ...
HEARD_HALF_SECOND = "Hm, the forge"


def after_end(sent: Sent, turn_id: int) -> list[msg.SessionMessage]:
    msgs = sent.turn(turn_id)
    return msgs[msgs.index(end_of(sent, turn_id)) + 1:]


async def slow_rig(make_rig: MakeRig, *replies: str | ScriptedReply, audio: bool = True) -> Rig:
    return await make_rig(ScriptedChat(list(replies) or [SLOW]), audio=audio)


async def test_cancel_mid_reply_ends_the_turn_and_keeps_only_what_was_delivered(make_rig: MakeRig) -> None:
    rig = await slow_rig(make_rig)
    turn = rig.session.start_turn("text", NEUTRAL)
    await rig.sent.first(msg.ReplyAudio)
    rig.session.cancel()
    assert turn.cancelled and turn.interrupted
    await turn.wait()
    call = rig.chat.calls[0]
    await finished(call)
    assert call.saw_cancel or call.closed_early, "the model stopped"
    assert call.tokens < call.total

    end = end_of(rig.sent, 1)
    assert (end.status, end.interrupted) == ("cancelled", True)
    assert after_end(rig.sent, 1) == [], "nothing of the turn after its turn.end"
    assert rig.sent.messages[-1] is end
    spoken = " ".join(a.text for a in rig.sent.of(msg.ReplyAudio))
    assert spoken and len(spoken) < len(LONG)
    assert end.text == spoken
    assert rig.session.memory.history == [HistoryEntry("user", NEUTRAL), HistoryEntry("assistant", spoken, interrupted=True)]
    assert await rig.engine.store.load_history(PLAYER, "bram") == rig.session.memory.history


async def test_cancel_in_a_text_only_session_keeps_the_text_that_was_sent(make_rig: MakeRig) -> None:
    rig = await slow_rig(make_rig, audio=False)
    turn = rig.session.start_turn("text", NEUTRAL)
    # The guard lets text out per checked sentence (the first clause early): two deltas are
    # the first clause and the rest of the first sentence.
    await rig.sent.until(lambda ms: len(rig.sent.of(msg.ReplyText)) >= 2)
    rig.session.cancel()
    await turn.wait()
    read = "".join(t.delta for t in rig.sent.of(msg.ReplyText)).strip()
    assert read and len(read) < len(LONG)
    end = end_of(rig.sent, 1)
    assert (end.status, end.interrupted, end.text) == ("cancelled", True, read)
    assert rig.session.memory.history[-1] == HistoryEntry("assistant", read, interrupted=True)


async def test_cancel_for_another_turn_id_leaves_the_turn_running(session: Session, sent: Sent) -> None:
    turn = session.start_turn("text", NEUTRAL)
    session.cancel(turn_id=99)
    await turn.wait()
    assert not turn.cancelled
    assert end_of(sent, 1).status == "ok"


async def test_cancel_with_heard_mid_turn_keeps_only_the_words_heard(make_rig: MakeRig) -> None:
    rig = await slow_rig(make_rig)
    turn = rig.session.start_turn("text", NEUTRAL)
    first = await rig.sent.first(msg.ReplyAudio)
    assert first.text.startswith(HEARD_HALF_SECOND) and first.duration > 0.5
    rig.session.cancel(turn_id=1, heard=0.5)
    await turn.wait()
    end = end_of(rig.sent, 1)
    assert (end.status, end.text) == ("cancelled", HEARD_HALF_SECOND)
    assert rig.session.memory.history[-1] == HistoryEntry("assistant", HEARD_HALF_SECOND, interrupted=True)
    assert (await rig.engine.store.load_history(PLAYER, "bram"))[-1] == rig.session.memory.history[-1]


@pytest.mark.parametrize("turn_id", [1, None], ids=["by-id", "latest"])
async def test_late_cancel_with_heard_trims_the_finished_turn(make_rig: MakeRig, turn_id: int | None) -> None:
    rig = await make_rig(ScriptedChat([LONG]))
    turn = rig.session.start_turn("text", NEUTRAL)
    await turn.wait()
    end = end_of(rig.sent, 1)
    assert end.status == "ok" and end.audio_seconds > 0.5
    assert rig.session.memory.history[-1].content == end.text

    rig.session.cancel(turn_id=turn_id, heard=0.5)
    await rig.session.close()  # waits for the session's background work (the trim)
    assert rig.session.memory.history[-1] == HistoryEntry("assistant", HEARD_HALF_SECOND, interrupted=True)
    stored = await rig.engine.store.load_history(PLAYER, "bram")
    assert stored == [HistoryEntry("user", NEUTRAL), HistoryEntry("assistant", HEARD_HALF_SECOND, interrupted=True)]
    assert after_end(rig.sent, 1) == [], "a late cancel sends nothing"


async def test_late_cancel_that_heard_everything_or_names_an_old_turn_changes_nothing(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat([LONG, "Off with you. I have work to do."]))
    for _ in range(2):
        await rig.session.start_turn("text", NEUTRAL).wait()
    before = list(rig.session.memory.history)
    rig.session.cancel(turn_id=2, heard=end_of(rig.sent, 2).audio_seconds + 1.0)  # heard it all
    rig.session.cancel(turn_id=1, heard=0.5)  # not the latest turn: its memory is settled
    await rig.session.close()
    assert rig.session.memory.history == before
    assert await rig.engine.store.load_history(PLAYER, "bram") == before


async def test_a_new_line_while_speaking_ends_the_first_turn_before_the_second_starts(make_rig: MakeRig) -> None:
    rig = await slow_rig(make_rig, SLOW, "Off with you. I have work to do.")
    first = rig.session.start_turn("text", NEUTRAL)
    await rig.sent.first(msg.ReplyAudio, turn=1)
    second = rig.session.start_turn("text", "Where is the mill?")
    assert first.cancelled and first.interrupted
    await second.wait()
    assert first.done

    msgs = rig.sent.messages
    end1 = end_of(rig.sent, 1)
    start2 = rig.sent.of(msg.TurnStart, 2)[0]
    assert (end1.status, end1.interrupted) == ("cancelled", True)
    assert msgs.index(end1) < msgs.index(start2), "turn 1's turn.end goes out before turn 2's turn.start"
    assert after_end(rig.sent, 1) == []
    assert end_of(rig.sent, 2).status == "ok"
    assert [m.seq for m in rig.sent.turn(2)] == list(range(len(rig.sent.turn(2))))
    await finished(rig.chat.calls[0])
    assert rig.chat.calls[0].stopped_early
    assert [(e.role, e.interrupted) for e in rig.session.memory.history] == [
        ("user", False), ("assistant", True), ("user", False), ("assistant", False),
    ]


CANCEL_PATHS = ["cancel", "cancel-by-id", "barge-in", "new-turn", "cancel-and-wait", "close", "commit-speculative"]


@pytest.mark.parametrize("path", CANCEL_PATHS)
async def test_every_cancel_path_marks_the_turn_interrupted(make_rig: MakeRig, path: str) -> None:
    rig = await slow_rig(make_rig, SLOW, "Off with you.")
    s = rig.session
    turn = s.start_turn("text", NEUTRAL)
    await rig.sent.first(msg.ReplyText, turn=1)
    if path == "cancel":
        s.cancel()
    elif path == "cancel-by-id":
        s.cancel(turn_id=1)
    elif path == "barge-in":
        assert s.npc_speaking()
        s.barge_in()
        assert not s.npc_speaking()
    elif path == "new-turn":
        s.start_turn("text", "Where is the mill?")
    elif path == "cancel-and-wait":
        await s.cancel_and_wait()
        assert turn.done
    elif path == "close":
        await s.close()
        assert turn.done
    elif path == "commit-speculative":
        await s.commit_turn(s.start_turn("text", "Where is the mill?", speculative=True))
    await turn.wait()
    end = end_of(rig.sent, 1)
    assert (turn.cancelled, turn.interrupted) == (True, True)
    assert (end.status, end.interrupted) == ("cancelled", True)
    assert after_end(rig.sent, 1) == []
