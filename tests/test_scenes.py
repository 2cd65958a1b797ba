"""Scenes end to end: the real (fast) model, real sockets, the shipped characters.

Who answers is asserted on the wire (``turn.start.character``) and on the rule the engine
says it used; what the small model says is never asserted, only what the engine did with it:
which turns exist, whose voice spoke, whose memory holds what."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from npc_engine.client import ClientSession, EngineClient, EngineError, Turn
from npc_engine.scene import Scene
from tests.harness import Prompts, engine_config, eventually, running_engine

log = logging.getLogger(__name__)




def scene_of(server_sessions: dict[str, Any], sid: str) -> Scene:
    scene = server_sessions[sid]
    assert isinstance(scene, Scene)
    return scene


async def answer(scene: ClientSession, text: str, **kw: Any) -> tuple[str, list[dict[str, Any]]]:
    """Who answered ``text``, and the answer's messages (each must name that character)."""
    turn = await scene.say(text, **kw)
    msgs = await turn.collect()
    # A `story` message's character is who the effect is about (docs/protocol.md): not counted.
    who = {str(m.get("character")) for m in msgs if m["type"] != "story"}
    assert len(who) == 1 and "None" not in who, f"every message of a turn names one character: {msgs}"
    assert msgs[-1]["type"] == "turn.end" and msgs[-1]["status"] in ("ok", "degraded"), msgs[-1]
    return who.pop(), msgs


async def test_who_answers_by_each_rule_of_precedence(tmp_path: Path) -> None:
    async with running_engine(engine_config(tmp_path / "data")) as run:
        # The shipped story: Marta leads her tavern beat (`lead: marta`), Bram's beat names nobody.
        assert run.engine.story.beats["marta_tavern"].lead == "marta"
        c = await EngineClient.connect(run.endpoint)
        # Bram is listed first: without the beat's lead, the first listed would answer.
        tavern = await c.open_scene(["bram", "marta"], "p-rules", audio=False)
        engine_side = scene_of(run.server.sessions, tavern.id)
        assert [x["character"] for x in tavern.info["characters"]] == ["bram", "marta"]

        who, _ = await answer(tavern, "Good evening.")
        assert (who, engine_side.answers[-1].rule) == ("marta", "beat"), "the story beat names Marta"

        who, _ = await answer(tavern, "Bram, how is the forge tonight?")
        assert (who, engine_side.answers[-1].rule) == ("bram", "name")

        updated = await tavern.update(facing="marta")
        assert updated["type"] == "scene.updated" and updated["facing"] == "marta"
        who, _ = await answer(tavern, "And how are you?")
        assert (who, engine_side.answers[-1].rule) == ("marta", "facing")
        who, _ = await answer(tavern, "Bram, do you like ale?")  # a name beats facing
        assert (who, engine_side.answers[-1].rule) == ("bram", "name")

        who, _ = await answer(tavern, "What a night.", character="bram")  # the game forces it
        assert (who, engine_side.answers[-1].rule) == ("bram", "forced")

        # No name, nobody faced, no lead in their beats: the last speaker goes on.
        gate = await c.open_scene(["aldric", "bram"], "p-rules-2", audio=False)
        gate_side = scene_of(run.server.sessions, gate.id)
        who, _ = await answer(gate, "Bram, is the captain always this stern?")
        assert who == "bram"
        who, _ = await answer(gate, "Why is that?")
        assert (who, gate_side.answers[-1].rule) == ("bram", "last")
        await c.close()


async def test_reactions_come_when_relevant_and_can_be_turned_off(tmp_path: Path) -> None:
    async with running_engine(engine_config(tmp_path / "data")) as run:
        c = await EngineClient.connect(run.endpoint)
        tavern = await c.open_scene(["marta", "bram"], "p-react", audio=False)
        side = scene_of(run.server.sessions, tavern.id)

        who, msgs = await answer(tavern, "Marta, is Bram a good smith?")
        assert who == "marta"
        reaction = await tavern.next_turn()
        got = await reaction.collect()
        assert reaction.start is not None and reaction.start["source"] == "reaction"
        assert {m.get("character") for m in got} == {"bram"}, "Bram was named: he reacts"
        assert reaction.start["id"] == msgs[0]["id"], "a reaction names the request it follows"

        off = await tavern.update(reactions=False)
        assert off["reactions"] is False
        who, _ = await answer(tavern, "Marta, is Bram always this grumpy?")
        assert who == "marta"
        assert side._reaction is None or side._reaction.done()
        # Nothing came between the answer and the next line's turn: no reaction turn.
        who, _ = await answer(tavern, "Thank you, Marta.")
        assert who == "marta"
        # A reaction turn would have started before this line's answer (right after the turn.end
        # the client waited for): the turns since reactions went off are the two answers.
        assert [(t["source"], t["character"]) for t in tavern.started[-2:]] == [("text", "marta")] * 2
        assert [t["source"] for t in tavern.started].count("reaction") == 1
        await c.close()


async def test_banter_in_two_voices_is_interrupted_by_the_player(tmp_path: Path) -> None:
    cfg = engine_config(tmp_path / "data", tts="kokoro")
    async with running_engine(cfg) as run:
        c = await EngineClient.connect(run.endpoint)
        forge = await c.open_scene(["bram", "aldric"], "p-banter", reactions=False)
        side = scene_of(run.server.sessions, forge.id)
        voices = {cid: m.voice_out.voice for cid, m in side.members.items()}
        assert voices["bram"] != voices["aldric"], voices

        first = await forge.banter(topic="who should guard the forge at night", lines=4)
        assert first is not None
        lines: list[tuple[Turn, list[dict[str, Any]]]] = [(first, await first.collect())]
        second = await forge.next_turn()
        got: list[dict[str, Any]] = []
        async for m in second:  # the player speaks as soon as the second voice is heard
            got.append(m)
            if m["type"] == "reply.audio":
                break
        interrupt = await forge.say("Captain, a word please.")
        got += await second.collect()
        lines.append((second, got))

        speakers = []
        for turn, msgs in lines:
            assert turn.start is not None and turn.start["source"] == "banter"
            audio = [m for m in msgs if m["type"] == "reply.audio"]
            visemes = [m for m in msgs if m["type"] == "cue" and m["kind"] == "visemes"]
            assert audio and visemes, f"each banter line is voiced, with lips: {msgs}"
            speakers.append(msgs[0]["character"])
        assert speakers == ["bram", "aldric"]

        end = await forge.other.get()
        while end["type"] != "banter.end":
            end = await forge.other.get()
        assert end["interrupted"] is True and end["lines"] < 4, end
        answer_msgs = await interrupt.collect()
        assert interrupt.start is not None and interrupt.start["character"] == "aldric"
        assert answer_msgs[-1]["type"] == "turn.end"
        assert side._banter is not None and side._banter.done()
        await c.close()


async def test_what_is_said_reaches_present_characters_only(tmp_path: Path) -> None:
    async with running_engine(engine_config(tmp_path / "data")) as run:
        c = await EngineClient.connect(run.endpoint)
        player = "p-know"
        aldric = await c.open_session("aldric", player, greet=False, audio=False)
        tavern = await c.open_scene(["marta", "bram"], player, audio=False, reactions=False)
        who, msgs = await answer(tavern, "Bram, the thief wore a grey cloak.")
        assert who == "bram"
        said = msgs[-1]["text"]
        side = scene_of(run.server.sessions, tavern.id)

        heard = [h.content for h in side.member("marta").memory.history]
        assert any('said to Bram: "Bram, the thief wore a grey cloak."' in h for h in heard), heard
        if said:
            assert any(f'[Bram said: "{said}"]' in h for h in heard), heard
        stored = [h.content for h in await run.engine.store.load_history(player, "marta")]
        assert any("grey cloak" in h for h in stored), "what Marta heard is on disk"
        assert not any("grey cloak" in h.content for h in await run.engine.store.load_history(player, "aldric"))

        # Marta's next prompt has it, right after what her KV cache holds; Aldric's has not.
        prompts = Prompts(run.engine)
        # The player turns to Marta: what she overheard is evaluated before the line comes.
        marta = side.member("marta")
        warmed = marta.warm_ups
        await tavern.update(facing="marta")
        await eventually(lambda: marta.warm_ups > warmed and not marta.warming, what="Marta's overheard lines evaluated")
        _, msgs = await answer(tavern, "Marta, did you hear that?")
        evaluated = msgs[-1]["prompt_tokens_evaluated"]
        log.info("Marta, prepared: %d prompt tokens evaluated", evaluated)
        # Her line and the chat template's markers: ~15 tokens; the overheard lines were 50+.
        assert evaluated < 40, f"Marta evaluated {evaluated} tokens: the overheard lines were not ready"
        await (await aldric.say("Nice weather today.")).collect()
        assert "grey cloak" in prompts.last_text(f"{tavern.id}/marta")
        assert "grey cloak" not in prompts.last_text(aldric.id)
        await c.close()


async def test_save_and_load_in_the_middle_of_a_scene(tmp_path: Path) -> None:
    async with running_engine(engine_config(tmp_path / "data")) as run:
        c = await EngineClient.connect(run.endpoint)
        player = "p-save"
        tavern = await c.open_scene(["marta", "bram"], player, audio=False, reactions=False)
        side = scene_of(run.server.sessions, tavern.id)
        await answer(tavern, "Marta, one ale please.")
        blob = await tavern.save()
        saved = {cid: [h.content for h in m.memory.history] for cid, m in side.members.items()}

        await answer(tavern, "Bram, I am off to find your hammer.")
        assert [h.content for h in side.member("bram").memory.history] != saved["bram"]

        loaded = await tavern.load(blob)
        assert loaded["type"] == "state.loaded" and loaded["session"] == tavern.id
        assert {cid: [h.content for h in m.memory.history] for cid, m in side.members.items()} == saved
        who, _ = await answer(tavern, "Bram, what were we talking about?")  # the scene goes on
        assert who == "bram"
        await eventually(lambda: side.current is None, what="the scene's floor free after the turn")
        await c.close()


async def test_a_reconnected_game_takes_its_scene_back_and_errors_are_typed(tmp_path: Path) -> None:
    async with running_engine(engine_config(tmp_path / "data")) as run:
        first = await EngineClient.connect(run.endpoint)
        tavern = await first.open_scene(["marta", "bram"], "p-resume", audio=False, reactions=False)
        assert tavern.token
        second = await EngineClient.connect(run.endpoint)
        back = await second.resume_session(tavern.id, tavern.token)
        assert back.info["type"] == "scene.resumed"
        assert [x["character"] for x in back.info["characters"]] == ["marta", "bram"]
        who, _ = await answer(back, "Bram, still there?")
        assert who == "bram"

        async def code(msg: dict[str, Any]) -> str:
            try:
                await second.request(msg)
            except EngineError as exc:
                return exc.code
            raise AssertionError(f"no error for {msg}")

        assert await code({"type": "scene.open", "characters": ["marta", "nobody"]}) == "unknown_character"
        assert await code({"type": "scene.open", "characters": ["marta", "marta"]}) == "invalid_field"
        assert await code({"type": "scene.update", "session": back.id, "leave": ["marta", "bram"]}) == "invalid_field"
        assert await code({"type": "scene.update", "session": back.id, "leave": ["aldric"]}) == "invalid_field"
        assert await code({"type": "scene.banter", "session": back.id}) == "invalid_field"
        assert await code({"type": "scene.banter", "session": back.id, "beat": "no_such_beat"}) == "invalid_field"
        assert await code({"type": "text", "session": back.id, "text": "hi", "character": "aldric"}) == "invalid_field"
        assert await code({"type": "scene.update", "session": back.id, "facing": "aldric"}) == "invalid_field"
        solo = await second.open_session("aldric", "p-resume", greet=False, audio=False)
        assert await code({"type": "scene.banter", "session": solo.id, "topic": "x"}) == "invalid_field"
        # Still serving: the scene answers after every bad request.
        who, _ = await answer(back, "Marta, one more ale.")
        assert who == "marta"
        await first.close()
        await second.close()
