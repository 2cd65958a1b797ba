"""A scene's logic on test doubles (``ScriptedChat``, ``SilenceSynth``): one floor for all its
characters, banter that gives way to the player without a trace of the line it was preparing,
a character leaving mid-sentence, and no model work for a silent character."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from npc_engine.engine import Engine
from npc_engine.protocol import outgoing as msg
from npc_engine.scene import Scene
from tests.doubles import ScriptedChat, ScriptedReply, SilenceSynth
from tests.unit.conftest import PLAYER, MakeEngine
from tests.unit.support import Sent, eventually

SLOW = ScriptedReply("Hm, the forge is cold today and the coals will not catch. Come back at dawn.", tokens_per_s=15)


@pytest.fixture
async def scenes() -> AsyncIterator[list[Scene]]:
    opened: list[Scene] = []
    yield opened
    for scene in opened:
        if not scene.closed:
            await scene.close()


async def open_scene(engine: Engine, sent: Sent, scenes: list[Scene], *ids: str, sid: str = "tavern") -> Scene:
    scene = Scene(engine, sid, PLAYER, sent, audio=True)
    scenes.append(scene)
    await scene.open([engine.characters[c] for c in ids], {})
    return scene


def turns(sent: Sent) -> list[msg.TurnStart]:
    return sent.of(msg.TurnStart)


async def test_one_floor_turn_ids_run_across_characters_and_a_new_line_cuts_whoever_speaks(
    make_engine: MakeEngine, scenes: list[Scene],
) -> None:
    engine = make_engine(ScriptedChat([SLOW, "Aye."]), [SilenceSynth()])
    sent = Sent()
    scene = await open_scene(engine, sent, scenes, "marta", "bram")
    first = scene.start_turn("text", "Marta, what news?")
    await sent.first(msg.ReplyAudio, turn=1)
    second = scene.start_turn("text", "Bram, and you?")  # cuts Marta off
    await second.wait()
    assert first.cancelled and first.done
    starts = turns(sent)
    assert [(s.turn, s.character) for s in starts] == [(1, "marta"), (2, "bram")]
    ends = sent.of(msg.TurnEnd)
    assert [(e.turn, e.status) for e in ends] == [(1, "cancelled"), (2, "ok")], "turn.end of the cut turn goes first"
    assert all(m.character == ("marta" if m.turn == 1 else "bram") for m in sent.messages
               if isinstance(m, msg.SessionMessage) and m.turn is not None)


async def test_the_player_stops_a_banter_and_the_line_being_prepared_leaves_no_trace(
    make_engine: MakeEngine, scenes: list[Scene],
) -> None:
    chat = ScriptedChat([SLOW])
    # Each chunk takes a second to render: the first line is still being said (its later
    # chunks) well after its text is complete and the next line is being prepared.
    engine = make_engine(chat, [SilenceSynth(delay_s=1.0)])
    sent = Sent()
    scene = await open_scene(engine, sent, scenes, "bram", "aldric")
    scene.banter(request_id="b1", topic="the gate", beat=None, characters=None, lines=4)
    first = scene.floor

    def preparing() -> bool:
        return bool(scene.member("aldric")._speculative) and first.current is not None and not first.current.done

    await eventually(preparing, what="Aldric's line prepared while Bram's is still being said")
    prepared = next(iter(scene.member("aldric")._speculative))
    answer = scene.start_turn("text", "Captain, a word.", request_id="t1")
    await answer.wait()
    end = await sent.first(msg.BanterEnd)
    assert end.interrupted and end.lines == 1 and end.id == "b1"
    assert prepared.dropped and prepared.id is None
    starts = turns(sent)
    assert [(s.source, s.character) for s in starts] == [("banter", "bram"), ("text", "aldric")], (
        "the prepared line (Aldric's) never started: no turn id, no message"
    )
    assert [s.turn for s in starts] == [1, 2]
    assert [h.role for h in scene.member("aldric").memory.history][-2:] == ["user", "assistant"]
    assert not any(h.role == "assistant" for h in scene.member("aldric").memory.history[:-1]), (
        "Aldric's dropped banter line is not remembered"
    )


async def test_a_character_leaving_mid_sentence_is_cut_and_the_scene_goes_on(
    make_engine: MakeEngine, scenes: list[Scene],
) -> None:
    engine = make_engine(ScriptedChat([SLOW, "Aye."]), [SilenceSynth()])
    sent = Sent()
    scene = await open_scene(engine, sent, scenes, "marta", "bram")
    scene.start_turn("text", "Marta, what news?")
    await sent.first(msg.ReplyAudio, turn=1)
    await scene.update(facing=None, sets_facing=False, reactions=None, join=[], leave=["marta"])
    assert sent.of(msg.TurnEnd, 1)[0].status == "cancelled"
    assert scene.present_ids() == ["bram"]
    after = scene.start_turn("text", "Marta? She left. Well, Bram?")
    await after.wait()
    assert after.outbox.character == "bram" and sent.of(msg.TurnEnd, 2)[0].status == "ok"


async def test_no_model_work_for_a_silent_character(make_engine: MakeEngine, scenes: list[Scene]) -> None:
    chat = ScriptedChat(["Aye."])
    engine = make_engine(chat, [SilenceSynth()])
    sent = Sent()
    scene = await open_scene(engine, sent, scenes, "marta", "bram", "aldric")
    scene.reactions = False
    scene.facing = "bram"  # else Marta's beat, which she leads, would take "How is the forge?"
    for line in ("Bram, hello.", "How is the forge?", "Bram, goodbye."):
        await scene.start_turn("text", line).wait()
    assert {c.affinity for c in chat.calls} == {"tavern/bram"}, "only the speaker's model generated"


async def test_turning_to_a_character_evaluates_what_it_overheard_before_the_player_speaks(
    make_engine: MakeEngine, scenes: list[Scene],
) -> None:
    chat = ScriptedChat(["Aye, the forge is hot today and the iron is ready for work."])
    engine = make_engine(chat, [SilenceSynth()])
    sent = Sent()

    async def marta_evaluates(turn_to_her: bool) -> int:
        # Each scene its own id, so its characters have their own slots in the double's cache.
        scene = await open_scene(engine, sent, scenes, "marta", "bram", sid=f"tavern-{turn_to_her}")
        scene.reactions = False
        await scene.start_turn("text", "Marta, hello.").wait()  # her prompt is cached
        await scene.start_turn("text", "Bram, what are you forging today?").wait()  # she overhears it
        if turn_to_her:
            await scene.update(facing="marta", sets_facing=True, reactions=None, join=[], leave=[])
            marta = scene.member("marta")
            await eventually(lambda: not marta.warming, what="Marta's overheard lines evaluated")
            warmed, affinity = chat.warm_ups[-1]
            assert affinity == marta.affinity and "what are you forging today" in warmed[-1].content
        await scene.start_turn("text", "Marta, did you hear him?").wait()
        call = chat.calls[-1]
        assert call.affinity.endswith("/marta")
        await scene.close()
        return call.prompt.evaluated

    cold, prepared = await marta_evaluates(False), await marta_evaluates(True)
    assert prepared < cold, (prepared, cold)
    assert prepared <= 12, "only the player's new line (and the chat template's few tokens) is left to evaluate"


async def test_a_banter_keeps_pace_with_playback_so_the_player_can_still_cut_in(
    make_engine: MakeEngine, scenes: list[Scene],
) -> None:
    # Scripted lines render at once; 0.5 s of audio a word makes each line seconds long to play.
    engine = make_engine(ScriptedChat(["Aye."]), [SilenceSynth(seconds_per_word=0.5)])
    sent = Sent()
    scene = await open_scene(engine, sent, scenes, "bram", "aldric")
    scene.banter(request_id="b", topic=None, beat="forge_argument", characters=None, lines=4)
    await sent.first(msg.TurnEnd)
    assert [(s.source, s.character) for s in turns(sent)] == [("banter", "bram")], (
        "Aldric's line waits until Bram's has nearly been played, not only sent"
    )
    scene.start_turn("text", "Enough, both of you.")
    end = await sent.first(msg.BanterEnd)
    assert end.interrupted and end.lines == 1
    assert [s.source for s in turns(sent)] == ["banter", "text"]


async def test_the_line_heard_so_far_is_evaluated_by_the_character_it_goes_to(
    make_engine: MakeEngine, scenes: list[Scene],
) -> None:
    chat = ScriptedChat(["Aye, the forge is hot today and the iron is ready for work."])
    engine = make_engine(chat, [SilenceSynth()])
    scene = await open_scene(engine, Sent(), scenes, "marta", "bram")
    scene.reactions = False
    await scene.start_turn("text", "Marta, hello.").wait()
    await scene.start_turn("text", "Bram, what are you forging today?").wait()  # Marta overhears it
    # A partial transcript of the player's next line, which names Marta.
    scene.transcript("Marta, did you hear", final=False, utterance=0)
    marta = scene.member("marta")
    await eventually(lambda: not marta.warming, what="Marta's prompt evaluated up to the words so far")
    warmed, affinity = chat.warm_ups[-1]
    assert affinity == marta.affinity
    assert "Marta, did you hear" in warmed[-1].content and "what are you forging today" in warmed[-1].content
    await scene.close()
