"""Memory that stays true, end to end on the real (fast) model over a real socket: a name the
player told Bram is in his prompt after a restart with no history in it, a ``tell`` reaches
Marta's prompt and not Aldric's, and facts travel in save blobs. The assertions are on the
prompts the model got and on the facts kept, not on the small model's wording (which is only
reported)."""

from __future__ import annotations

import logging
from pathlib import Path

from npc_engine.client import EngineClient
from npc_engine.facts import told_name
from npc_engine.store import Fact
from tests.harness import GOSSIP, OFFER, Prompts, engine_config, gossip_story, running_engine

log = logging.getLogger(__name__)

PLAYER = "p-facts"


async def test_a_told_name_outlives_the_history_and_gossip_reaches_only_its_character(tmp_path: Path) -> None:
    story = gossip_story(tmp_path / "story")
    cfg = engine_config(tmp_path / "data", story=story)
    async with running_engine(cfg) as first:
        c = await EngineClient.connect(first.endpoint)
        bram = await c.open_session("bram", PLAYER, greet=False, audio=False)
        end = (await (await bram.say("My name is Ana.")).collect())[-1]
        assert end["type"] == "turn.end" and end["status"] in ("ok", "degraded")
        assert told_name(first.engine.facts.known(PLAYER, "bram")) == "Ana"
        await c.close()

    # A restarted sidecar whose prompt carries no history: only the fact can tell Bram the name.
    again = engine_config(tmp_path / "data", story=story, history_turns=0, history_block=1)
    async with running_engine(again) as second:
        prompts = Prompts(second.engine)
        c = await EngineClient.connect(second.endpoint)
        bram = await c.open_session("bram", PLAYER, greet=False, audio=False)
        assert bram.info["resumed"] is True
        reply = (await (await bram.say("Do you remember my name?")).collect())[-1]
        asked = prompts.asked_with(bram.id, "Do you remember my name?")
        system = asked[0].content
        assert "They told you their name is Ana." in system and "You are talking to Ana." in system
        assert not any("My name is Ana" in m.content for m in asked), "the name came from the facts, not the history"
        log.info("Bram, asked for the name: %r (uses it: %s)", reply["text"], "Ana" in reply["text"])

        # Gossip: Bram's exit tells Marta; she learns it, Aldric does not.
        moved = await (await bram.say(OFFER)).collect()
        told = [(m["character"], m["fact"]) for m in moved if m["type"] == "story" and m["kind"] == "fact_told"]
        assert told == [("marta", GOSSIP)], moved
        # In the system message, or (the cache holding the one before the move) in a note
        # right before the line: prompt.py keep_cached_system.
        offered = "\n".join(m.content for m in prompts.asked_with(bram.id, OFFER))
        assert "What happened while Ana was with you: quest started." in offered, (
            "Bram saw the quest start, in the turn it started"
        )
        marta = await c.open_session("marta", PLAYER, greet=False, audio=False)
        aldric = await c.open_session("aldric", PLAYER, greet=False, audio=False)
        await (await marta.say("Nice weather today.")).collect()
        await (await aldric.say("Nice weather today.")).collect()
        assert "You heard: The traveller offered to find Bram's hammer." in prompts.last_system(marta.id)
        assert "offered to find" not in prompts.last_system(aldric.id)
        assert not any(f.source == "did" for f in second.engine.facts.known(PLAYER, "marta"))

        # A save carries the facts; loading it after a change brings them back.
        blob = await bram.save()
        await (await bram.say("Call me Bee.")).collect()
        assert told_name(second.engine.facts.known(PLAYER, "bram")) == "Bee"
        await bram.load(blob)
        assert told_name(second.engine.facts.known(PLAYER, "bram")) == "Ana"
        assert Fact("heard", GOSSIP) in await second.engine.store.load_facts(PLAYER, "marta")
        await c.close()
