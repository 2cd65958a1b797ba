"""The story drives turns: intents move beats across characters; verbatim beats are scripted turns."""

from __future__ import annotations

from pathlib import Path

from npc_engine.client import EngineClient
from tests.harness import engine_config, running_engine


async def test_quest_moves_across_characters_and_scripted_lines_share_one_turn(tmp_path: Path) -> None:
    async with running_engine(engine_config(tmp_path)) as running:
        c = await EngineClient.connect(running.endpoint)
        bram = await c.open_session("bram", "hero", greet=False, audio=False, vars={"player_name": "Ada"})
        marta = await c.open_session("marta", "hero", greet=False, audio=False)
        assert marta.info["beat"] == "marta_tavern"

        start = await (await bram.say("Don't worry, I can help you find your hammer.")).collect()
        assert any(m["type"] == "story" and m["kind"] == "intent_matched" and m["intent"] == "offer_help" for m in start)

        # The quest has started, so asking Marta about the stranger enters her gossip beat,
        # whose two verbatim lines are one scripted turn: no LLM, both lines, in order.
        gossip = await (await marta.say("Did you see a stranger here last night?")).collect()
        said = [m["line_id"] for m in gossip if m["type"] == "story" and m["kind"] == "say_line"]
        assert said == ["marta.gossip.1", "marta.gossip.2"]
        texts = [m["delta"] for m in gossip if m["type"] == "reply.text"]
        assert len(texts) == 2 and "Ada" in texts[0], "lines are templated with the player's name"
        end = gossip[-1]
        assert end["status"] == "ok" and end["tokens"] == 0
        assert ("beat_entered", "marta_gossip") in [(m["kind"], m.get("beat")) for m in gossip if m["type"] == "story"]
        assert running.engine.story_states["hero"].value("knows_about_mill") is True
        await c.close()
