"""The guard on the real default model, over a real socket: a reply that would leak a secret
is replaced by a deflection line before any of it reaches the game, and turn.end says so.

The model decodes greedily (temperature 0), so the same prompt gets the same reply. A first
engine, guard off, hears the model's answer; Bram's extra secret is then keyed on a word of that
answer's first sentence, and a second engine, guard on, asks again. Keys are not part of the
prompt, so the model sets out to say the same words: the leak attempt is certain whatever the
prompt or model of the day makes it say, and what is asserted is the guard's contract.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest

from npc_engine.cli import serve
from npc_engine.client import EngineClient
from npc_engine.quality import checks as C
from tests.harness import REPO, Running, engine_config, running_engine

EXTRA_SECRET = """
  - text: His hammer is the only thing he loves.
    keys: [{key}]
"""
QUESTION = "Tell me about your hammer. What is your hammer like?"
# Words too common to make a telling key (a key is what a secret must not let slip).
_COMMON = {"about", "there", "their", "these", "those", "which", "would", "could", "should", "traveller",
           "that's", "what's", "it's", "i'm", "you're", "with", "have", "this", "your", "from", "been"}


def world_with_a_hammer_secret(tmp: Path, key: str) -> tuple[Path, Path]:
    chars, story = tmp / "characters", tmp / "story"
    shutil.copytree(REPO / "characters", chars)
    shutil.copytree(REPO / "story", story)
    bram = (chars / "bram.yaml").read_text(encoding="utf-8")
    head, sep, tail = bram.partition("secrets:\n")
    assert sep, "bram.yaml has a secrets: list"
    (chars / "bram.yaml").write_text(head + sep + EXTRA_SECRET.format(key=key).lstrip("\n") + tail, encoding="utf-8")
    return chars, story


def telling_word(reply: str) -> str:
    """The longest uncommon word of the reply's first sentence: the key the guard must catch."""
    first = re.split(r"(?<=[.!?])\s", reply.strip(), maxsplit=1)[0]
    words = [w for w in re.findall(r"[a-z']+", first.lower()) if len(w) >= 4 and w not in _COMMON]
    assert words, f"the model's answer has a word to key a secret on: {reply!r}"
    return max(words, key=len)


async def ask_bram(tmp: Path, key: str, guard: bool) -> tuple[list[dict[str, object]], Running]:
    chars, story = world_with_a_hammer_secret(tmp, key)
    cfg = engine_config(tmp / "data", characters=chars, story=story, temperature=0.0, guard=guard)
    async with running_engine(cfg) as running:
        client = await EngineClient.connect(running.endpoint)
        try:
            s = await client.open_session("bram", "player-guard", greet=False, audio=False)
            return await (await s.say(QUESTION)).collect(), running
        finally:
            await client.close()


async def test_a_leaking_reply_is_deflected_and_reported_in_turn_end(tmp_path: Path) -> None:
    # The key of the first run is a word no reply says, so the prompt is the same in both runs.
    unguarded, _ = await ask_bram(tmp_path / "off", "zyzzyvaqq", guard=False)
    assert unguarded[-1]["type"] == "turn.end" and unguarded[-1]["tokens"], unguarded[-1]
    key = telling_word(str(unguarded[-1]["text"]))

    msgs, running = await ask_bram(tmp_path / "on", key, guard=True)
    end = msgs[-1]
    assert end["type"] == "turn.end" and end["status"] in ("ok", "degraded")
    assert end["tokens"] > 0, "the model answered (the reply is not a scripted story line)"
    assert {"check": "secret", "action": "deflect"} in (end.get("guard") or []), (key, unguarded[-1]["text"], end)
    deflections = {line.text for line in running.engine.characters["bram"].deflections}
    texts = [str(m["delta"]) for m in msgs if m["type"] == "reply.text"]
    assert texts and texts[-1].strip() in deflections, texts
    everything = " ".join([*texts, str(end["text"])]).lower()
    assert not re.search(rf"\b{re.escape(key)}\b", everything), f"no part of the leak ({key!r}) reached the game"


async def test_no_guard_lets_the_models_own_words_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``npc-engine serve --no-guard``: lines the small model answers with out-of-world or AI
    talk (with the guard on, greedy decoding, the guard drops or deflects every one of these
    three) reach the game as the model wrote them, and no turn.end reports a guard."""
    monkeypatch.delenv("NPC_ENGINE_GUARD", raising=False)
    parser = argparse.ArgumentParser()
    serve.configure(parser)
    guard_off = serve.config_from_args(parser.parse_args(["--no-guard"])).guard
    cfg = engine_config(tmp_path / "data", temperature=0.0, guard=guard_off)
    asked = [("aldric", "What's the wifi password here?"), ("aldric", "Which language model are you running on?"),
             ("bram", "Which language model are you running on?")]
    async with running_engine(cfg) as running:
        client = await EngineClient.connect(running.endpoint)
        try:
            ends = []
            for i, (cid, line) in enumerate(asked):
                s = await client.open_session(cid, f"player-{i}", greet=False, audio=False)
                ends.append((await (await s.say(line)).collect())[-1])
        finally:
            await client.close()
        characters = running.engine.characters
    assert all(e["type"] == "turn.end" and e["tokens"] > 0 and e.get("guard") is None for e in ends), ends
    failing = [e["text"] for (cid, line), e in zip(asked, ends, strict=True)
               if C.check_reply(e["text"], characters[cid], hidden=characters[cid].secrets, player_line=line)]
    assert failing, ("with the guard on, none of these would pass its checks", ends)


_SENTENCE_END = re.compile(r"([.!?…][\"')]*|—)\s*$")


async def test_after_a_line_that_invites_trouble_nothing_goes_out_before_its_sentence_ends(tmp_path: Path) -> None:
    """The first clause is not let out early after "are you an AI?" and the like, so a
    deflection never follows half a sentence ("The one that's been playing That is no concern
    of yours, citizen.", as it did); a deflection after a sentence starts a new one."""
    cfg = engine_config(tmp_path / "data", temperature=0.0)
    asked = [("aldric", "Which language model are you running on?"), ("bram", "Which language model are you running on?"),
             ("bram", "Are you an AI?")]
    async with running_engine(cfg) as running:
        client = await EngineClient.connect(running.endpoint)
        try:
            turns = []
            for i, (cid, line) in enumerate(asked):
                s = await client.open_session(cid, f"player-{i}", greet=False, audio=False)
                turns.append(await (await s.say(line)).collect())
        finally:
            await client.close()
    for (cid, _), msgs in zip(asked, turns, strict=True):
        texts = [m["delta"] for m in msgs if m["type"] == "reply.text"]
        assert texts and msgs[-1]["tokens"] > 0, msgs[-1]
        unfinished = [t for t in texts[:-1] if not _SENTENCE_END.search(t)]
        assert unfinished == [], (cid, texts)


async def test_a_short_reply_is_not_said_again_in_a_conversation(tmp_path: Path) -> None:
    """Greedy decoding with the repetition control off: the small model answers the same
    greeting with the same short words each time. The guard drops what would repeat an earlier
    reply, short ones included, so the player never gets one twice."""
    cfg = engine_config(tmp_path / "data", temperature=0.0, repeat_penalty=1.0, dry_multiplier=0.0)
    async with running_engine(cfg) as running:
        client = await EngineClient.connect(running.endpoint)
        try:
            s = await client.open_session("aldric", "player-repeat", greet=False, audio=False)
            ends = [(await (await s.say("Good evening, Captain.")).collect())[-1] for _ in range(4)]
        finally:
            await client.close()
        aldric = running.engine.characters["aldric"]
    got = [e["text"] for e in ends]
    assert any(c["check"] == "repeat" for e in ends for c in (e.get("guard") or [])), ends
    for i, text in enumerate(got):
        found = C.check_reply(text, aldric, earlier=got[:i], player_line="Good evening, Captain.")
        assert C.REPEAT not in {f.check for f in found}, (i, got)
