"""The story drives turns: intents move beats across characters; verbatim beats are scripted turns."""

from __future__ import annotations

import shutil
from pathlib import Path

from npc_engine.client import EngineClient
from tests.harness import REPO, engine_config, running_engine


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


QUARREL = """\
intents:
  settle:
    keywords: [calm down, stop arguing]
triggers:
  - on_event: forge.quarrel
    goto: forge_quarrel
beats:
  forge_quarrel:
    character: [bram, aldric]
    together: [bram, aldric]
    objective: Argue about the north gate.
    lines:
      - id: quarrel.1
        text: Your gate let the thief out.
      - id: quarrel.2
        character: aldric
        text: My gate was shut at dusk.
      - id: quarrel.3
        character: bram
        text: Then he grew wings.
    exits:
      - on_intent: settle
        set: {settled: true}
"""


async def test_a_multi_character_exchange_goes_to_each_speakers_session_and_together_waits(
    tmp_path: Path,
) -> None:
    """One-to-one sessions: an exchange's lines reach each speaker's own session, in order; a
    `together` beat's intent exits never fire there (only in a scene with both present)."""
    story = tmp_path / "story"
    story.mkdir()
    shutil.copy(REPO / "story" / "oakhollow.yaml", story / "oakhollow.yaml")
    (story / "quarrel.yaml").write_text(QUARREL, encoding="utf-8")
    async with running_engine(engine_config(tmp_path, story=story)) as running:
        c = await EngineClient.connect(running.endpoint)
        bram = await c.open_session("bram", "hero", greet=False, audio=False)
        aldric = await c.open_session("aldric", "hero", greet=False, audio=False)
        ok = await bram.event("forge.quarrel")
        assert ok["effects"], "the event entered the quarrel"
        bram_turn = await (await bram.next_turn()).collect()
        aldric_turn = await (await aldric.next_turn()).collect()

        def said(turn: list[dict[str, object]]) -> list[object]:
            return [m["delta"] for m in turn if m["type"] == "reply.text"]

        assert said(bram_turn) == ["Your gate let the thief out.", "Then he grew wings."]
        assert said(aldric_turn) == ["My gate was shut at dusk."]
        assert bram_turn[-1]["status"] == "ok" and aldric_turn[-1]["status"] == "ok"

        answer = await (await bram.say("Calm down, stop arguing, both of you.")).collect()
        assert not any(m["type"] == "story" and m.get("kind") == "intent_matched" for m in answer)
        assert running.engine.story_states["hero"].value("settled") is not True
        assert answer[-1]["status"] == "ok"
        await c.close()
