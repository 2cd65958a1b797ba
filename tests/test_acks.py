"""Acknowledgements on the real models over the socket: a Kokoro "Aye." as the turn's first
reply.audio (``ack: true``, with its visemes and words) while the embedded LLM is still at work,
the reply going on after it; and a turn whose model misses its first-token budget still ends in
audio (the ack at once, then the fallback line)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npc_engine.client import ClientSession, EngineClient
from npc_engine.pipeline.base import VISEMES, Voice
from tests.harness import Running, engine_config, eventually, running_engine

QUESTION = "Where did the thief go?"


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    # A generous chunk budget: a busy machine must not hand the reply to espeak half-way.
    cfg = engine_config(tmp_path_factory.mktemp("acks"), tts="kokoro", budget_tts_chunk_ms=60_000)
    async with running_engine(cfg) as running:
        yield running


async def acks_ready(running: Running, character: str) -> None:
    """Until the character's acks are in memory (a session pins them when it opens)."""
    eng = running.engine
    ch = eng.characters[character]
    voice = Voice(ch.voice.id, ch.voice.speed)
    cache = eng.line_cache
    assert cache is not None
    await eventually(lambda: all(cache.pinned(a.text, voice) for a in ch.acks), timeout=300, what="acks pinned")


async def open_ready(client: EngineClient, running: Running, character: str, player: str, **kw: Any) -> ClientSession:
    s = await client.open_session(character, player, greet=False, **kw)
    await acks_ready(running, character)
    return s


def audio_of(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == "reply.audio"]


def acks_of(running: Running, character: str, kind: str) -> set[str]:
    return {a.text for a in running.engine.characters[character].acks if kind in a.kinds}


async def test_acks_carry_ack_true_and_visemes(client: EngineClient, engine: Running) -> None:
    s = await open_ready(client, engine, "bram", "p-ack")
    msgs = await (await s.say(QUESTION)).collect(timeout=300)
    end = msgs[-1]
    audio = audio_of(msgs)
    assert len(audio) >= 2, f"an ack and the reply: {[a['text'] for a in audio]}"
    first = audio[0]
    assert first["ack"] is True and first["chunk"] == 0 and first["text"] in acks_of(engine, "bram", "question")
    assert [a["ack"] for a in audio[1:]] == [False] * (len(audio) - 1), "the reply's own chunks are not acks"
    assert [a["chunk"] for a in audio] == list(range(len(audio)))
    pcm = np.frombuffer(first["pcm"], dtype="<i2")
    assert len(pcm) == pytest.approx(first["duration"] * 24000, abs=2) and np.abs(pcm).max() > 1000, "audible"
    assert audio[1]["start"] == pytest.approx(first["duration"], abs=1e-3), "the reply follows the ack"
    # Its own lip and word tracks, right after it.
    i = msgs.index(first)
    vis, words = msgs[i + 1], msgs[i + 2]
    assert (vis["type"], vis["kind"], vis["chunk"]) == ("cue", "visemes", 0)
    assert vis["visemes"] and all(v["viseme"] in VISEMES for v in vis["visemes"])
    assert vis["visemes"][-1]["end"] == pytest.approx(first["duration"], abs=0.05)
    assert (words["kind"], words["chunk"]) == ("words", 0) and words["words"]
    # Said before the model's first word; what the player heard, ack and reply, is the turn's text.
    t = end["timings"]
    assert t["ack_sent"] <= t["llm_first_token"] <= t["first_audio_sent"]
    assert end["text"] == " ".join(a["text"].strip() for a in audio)
    assert end["text"].startswith(first["text"] + " ") and len(end["text"]) > len(first["text"]) + 1
    history = await engine.engine.store.load_history("p-ack", "bram")
    assert [h.content for h in history] == [QUESTION, end["text"]]


async def test_acks_off_sends_the_reply_alone(client: EngineClient, engine: Running) -> None:
    await open_ready(client, engine, "marta", "p-noack-pin")  # her acks ready: off is the session's choice
    s = await client.open_session("marta", "p-noack", greet=False, acks=False)
    msgs = await (await s.say("Good morning! What is the news today?")).collect(timeout=300)
    audio = audio_of(msgs)
    assert audio and not any(a["ack"] for a in audio)
    assert "ack_sent" not in msgs[-1]["timings"]


async def test_a_missed_budget_produces_audio(tmp_path: Path) -> None:
    # No model answers within 1 ms of the player's line: every model turn misses its budget.
    cfg = engine_config(tmp_path, tts="kokoro", budget_llm_first_token_ms=1, budget_tts_chunk_ms=60_000)
    async with running_engine(cfg) as running, await EngineClient.connect(running.endpoint) as c:
        fallbacks = {f.text for f in running.engine.characters["aldric"].fallbacks}
        with_acks = await open_ready(c, running, "aldric", "p-budget")
        without = await c.open_session("aldric", "p-budget-off", greet=False, acks=False)
        for s, acks in ((with_acks, True), (without, False)):
            msgs = await (await s.say("Tell me about the old mill.")).collect(timeout=300)
            end = msgs[-1]
            assert end["status"] == "degraded"
            assert any(d["stage"] == "llm" and "budget" in d["reason"] for d in end["degraded"]), end["degraded"]
            audio = audio_of(msgs)
            if acks:
                assert [a["ack"] for a in audio] == [True, False], "the ack at once, the fallback line at the budget"
                assert audio[0]["text"] in acks_of(running, "aldric", "any")
                assert end["timings"]["ack_sent"] <= end["timings"]["first_audio_sent"]
            else:
                assert [a["ack"] for a in audio] == [False], "the fallback line, as audio"
            assert audio[-1]["text"] in fallbacks
            assert all(np.abs(np.frombuffer(a["pcm"], dtype="<i2")).max() > 1000 for a in audio), "audible"
            visemes = {m["chunk"] for m in msgs if m["type"] == "cue" and m["kind"] == "visemes"}
            assert visemes == {a["chunk"] for a in audio}, "every chunk has its visemes"
            assert end["text"] == " ".join(a["text"] for a in audio)
