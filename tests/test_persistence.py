"""Story state and conversation memory survive a sidecar restart; save blobs round-trip."""

from __future__ import annotations

from pathlib import Path

from npc_engine.client import EngineClient
from tests.harness import engine_config, running_engine


def kinds(msgs: list[dict]) -> list[tuple[str, str | None]]:
    return [(m["kind"], m.get("beat") or m.get("name")) for m in msgs if m["type"] == "story"]


async def test_story_and_memory_survive_a_restart(tmp_path: Path) -> None:
    cfg = engine_config(tmp_path)
    async with running_engine(cfg) as first:
        c = await EngineClient.connect(first.endpoint)
        s = await c.open_session("bram", "p1", greet=False, audio=False, vars={"player_name": "Ada"})
        assert s.info["beat"] == "bram_hammer_stolen" and s.info["resumed"] is False
        msgs = await (await s.say("Don't worry, I can help you find your hammer.")).collect()
        story = kinds(msgs)
        assert ("beat_entered", "bram_waiting") in story
        assert ("emit_event", "quest.started") in story
        assert ("flag_set", "quest_started") in story
        blob = await s.save()
        await c.close()

    async with running_engine(cfg) as second:  # same data dir: a restarted sidecar
        c = await EngineClient.connect(second.endpoint)
        s = await c.open_session("bram", "p1", greet=False, audio=False)
        assert s.info["resumed"] is True
        assert s.info["beat"] == "bram_waiting"
        history = await second.engine.store.load_history("p1", "bram")
        assert [h.role for h in history[:2]] == ["user", "assistant"]
        assert "help you find your hammer" in history[0].content
        # A game event moves the story on: picking up the hammer brings Bram's scripted line.
        ok = await s.event("item.picked_up", {"item": "hammer"})
        assert ("beat_entered", "bram_hammer_back") in [(e["kind"], e.get("beat")) for e in ok["effects"]]
        state = await c.request({"type": "state.get", "player": "p1"})
        assert state["beats"]["bram"] == "bram_hammer_back" and state["flags"]["has_hammer"] is True
        assert state["vars"]["player_name"] == "Ada"
        line_turn = await s.next_turn(timeout=30)
        said = await line_turn.collect()
        assert said[0]["source"] == "story"
        assert "Ada" in said[-1]["text"], "the scripted line is templated with the player's name"
        # Loading the earlier save puts the quest back where it was.
        loaded = await s.load(blob)
        assert loaded["beat"] == "bram_waiting"
        assert second.engine.story_states["p1"].value("has_hammer") is False
        # Another player starts from the beginning.
        other = await c.open_session("bram", "p2", greet=False, audio=False)
        assert other.info["beat"] == "bram_hammer_stolen" and other.info["resumed"] is False
        await c.close()
