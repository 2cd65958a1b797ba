"""The guard on the real default model, over a real socket: a reply that would leak a secret
is replaced by a deflection line before any of it reaches the game, and turn.end says so.

Bram is given one extra secret (in a copy of the shipped world) whose key phrase is the word the
player's question all but forces into the answer, and the model decodes greedily
(temperature 0), so the leak attempt is certain and the run repeatable; what is asserted is the
guard's contract, whatever the model's exact words.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from npc_engine.client import EngineClient
from tests.harness import REPO, engine_config, running_engine

EXTRA_SECRET = """
  - text: His hammer is the only thing he loves.
    keys: [hammer]
"""


def world_with_a_hammer_secret(tmp: Path) -> tuple[Path, Path]:
    chars, story = tmp / "characters", tmp / "story"
    shutil.copytree(REPO / "characters", chars)
    shutil.copytree(REPO / "story", story)
    bram = (chars / "bram.yaml").read_text(encoding="utf-8")
    head, sep, tail = bram.partition("secrets:\n")
    assert sep, "bram.yaml has a secrets: list"
    (chars / "bram.yaml").write_text(head + sep + EXTRA_SECRET.lstrip("\n") + tail, encoding="utf-8")
    return chars, story


async def test_a_leaking_reply_is_deflected_and_reported_in_turn_end(tmp_path: Path) -> None:
    chars, story = world_with_a_hammer_secret(tmp_path)
    cfg = engine_config(tmp_path / "data", characters=chars, story=story, temperature=0.0)
    async with running_engine(cfg) as running:
        client = await EngineClient.connect(running.endpoint)
        try:
            s = await client.open_session("bram", "player-guard", greet=False, audio=False)
            msgs = await (await s.say("Tell me about your hammer. What is your hammer like?")).collect()
        finally:
            await client.close()
    end = msgs[-1]
    assert end["type"] == "turn.end" and end["status"] in ("ok", "degraded")
    assert end["tokens"] > 0, "the model answered (the reply is not a scripted story line)"
    assert {"check": "secret", "action": "deflect"} in (end.get("guard") or []), end
    deflections = {line.text for line in running.engine.characters["bram"].deflections}
    texts = [m["delta"] for m in msgs if m["type"] == "reply.text"]
    assert texts and texts[-1].strip() in deflections, texts
    everything = " ".join([*texts, end["text"]]).lower()
    assert "hammer" not in everything, "no part of the leak reached the game"
