"""Voice out over the socket: Kokoro audio chunks streamed in order, each with its viseme track."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from npc_engine.client import EngineClient
from npc_engine.pipeline.base import VISEMES
from tests.harness import Running, engine_config, running_engine


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    # These tests are about Kokoro's stream; a generous budget keeps a busy machine from
    # degrading a turn to the espeak fallback half-way (that path is tested elsewhere).
    cfg = engine_config(tmp_path_factory.mktemp("voice"), tts="kokoro", budget_tts_chunk_ms=60_000)
    async with running_engine(cfg) as running:
        yield running



def audio_and_visemes(msgs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    audio = [m for m in msgs if m["type"] == "reply.audio"]
    vis = {m["chunk"]: m for m in msgs if m["type"] == "cue" and m["kind"] == "visemes"}
    return [(a, vis[a["chunk"]]) for a in audio]


async def test_reply_streams_audio_chunks_with_visemes(client: EngineClient) -> None:
    assert client.hello["audio_out"]["rate"] == 24000
    s = await client.open_session("bram", "p-voice", greet=False)
    msgs = await (await s.say("Hello smith, what do you make here?")).collect(timeout=180)
    pairs = audio_and_visemes(msgs)
    assert pairs, "a voiced reply sends reply.audio"
    offset = 0.0
    for i, (audio, vis) in enumerate(pairs):
        assert audio["chunk"] == i and audio["rate"] == 24000 and audio["format"] == "pcm_s16le"
        pcm = np.frombuffer(audio["pcm"], dtype="<i2")
        assert len(pcm) == pytest.approx(audio["duration"] * 24000, abs=2)
        assert np.abs(pcm).max() > 1000, "audible, not silence"
        assert audio["start"] == pytest.approx(offset, abs=1e-3), "chunks tile the turn's timeline"
        offset += audio["duration"]
        track = vis["visemes"]
        assert all(v["viseme"] in VISEMES for v in track)
        starts = [v["start"] for v in track]
        assert starts == sorted(starts) and starts[0] >= 0
        assert all(v["end"] >= v["start"] for v in track)
        assert track[-1]["end"] == pytest.approx(audio["duration"], abs=0.05), "visemes end with the audio"
    # The visemes of a chunk arrive right after its audio, before the next chunk.
    order = [(m["type"], m.get("chunk")) for m in msgs if m["type"] == "reply.audio" or m.get("kind") == "visemes"]
    assert order == [t for i in range(len(pairs)) for t in (("reply.audio", i), ("cue", i))]
    end = msgs[-1]
    assert end["audio_seconds"] == pytest.approx(offset, abs=0.01)
    t = end["timings"]
    assert t["llm_first_token"] <= t["first_clause"] <= t["tts_first_chunk"] <= t["first_audio_sent"] <= t["total"]
    # What was heard is what the turn reports and what history keeps.
    assert end["text"] == " ".join(a["text"].strip() for a, _ in pairs)


async def test_first_chunk_is_a_short_fragment(client: EngineClient) -> None:
    s = await client.open_session("marta", "p-frag", greet=False)
    msgs = await (await s.say("Tell me about the village and the people who live here.")).collect(timeout=180)
    audio = [m for m in msgs if m["type"] == "reply.audio"]
    assert audio
    if len(audio) > 1:
        assert len(audio[0]["text"].split()) <= 8, "the first chunk is a short clause, for fast first audio"


async def test_cancel_stops_audio_at_once(client: EngineClient, engine: Running) -> None:
    s = await client.open_session("aldric", "p-vcancel", greet=False)
    turn = await s.say("Describe the whole history of the village guard, every captain, every battle.")
    heard = []
    async for msg in turn:
        if msg["type"] == "reply.audio":
            heard.append(msg["text"])
            await client.send({"type": "cancel", "session": s.id, "turn": turn.id})
            break
    rest = await turn.collect(timeout=60)
    assert rest[-1]["status"] == "cancelled"
    # At most a chunk already on the wire when the cancel arrived; synthesis stopped.
    assert len([m for m in rest if m["type"] == "reply.audio"]) <= 1
    await asyncio.sleep(0.5)
    assert turn.queue.empty(), "no chunk of a cancelled turn after its turn.end"
    history = await engine.engine.store.load_history("p-vcancel", "aldric")
    assert history[-1].interrupted and history[-1].content == rest[-1]["text"]
    assert history[-1].content.startswith(heard[0].strip())


async def test_greeting_plays_from_the_line_cache(client: EngineClient, engine: Running) -> None:
    cache = engine.engine.line_cache
    s = await client.open_session("bram", "p-greet-1", greet=True)
    first = await (await s.next_turn(timeout=60)).collect(timeout=120)
    text = first[-1]["text"]
    assert any(cache.has(t, v) for t, v in engine.engine.scripted_lines() if t == text)
    # The background pre-rendering renders other lines meanwhile (slowly, on a loaded machine).
    await asyncio.wait_for(engine.engine.prerendered.wait(), timeout=600)
    renders_before = cache.renders
    s2 = await client.open_session("bram", "p-greet-2", greet=True)
    again = await (await s2.next_turn(timeout=60)).collect(timeout=120)
    assert again[-1]["text"] == text
    assert cache.renders == renders_before, "a repeated scripted line is not synthesized again"
    assert [m for m in again if m["type"] == "reply.audio"]


async def test_late_cancel_trims_memory_to_the_words_heard(client: EngineClient, engine: Running) -> None:
    """The engine sends faster than speech plays; the game says how much the player heard."""
    s = await client.open_session("bram", "p-heard", greet=False)
    msgs = await (await s.say("Tell me about your forge and your work.")).collect(timeout=180)
    end = msgs[-1]
    assert end["audio_seconds"] > 1.5
    heard = 1.0
    starts = {m["chunk"]: m["start"] for m in msgs if m["type"] == "reply.audio"}
    expected = [
        w["word"]
        for m in msgs
        if m["type"] == "cue" and m["kind"] == "words"
        for w in m["words"]
        if starts[m["chunk"]] + w["start"] < heard
    ]
    await client.send({"type": "cancel", "session": s.id, "turn": end["turn"], "heard": heard})
    await asyncio.sleep(1.0)
    npc = (await engine.engine.store.load_history("p-heard", "bram"))[-1]
    assert npc.role == "assistant" and npc.interrupted
    assert npc.content == " ".join(expected)
    assert len(npc.content) < len(end["text"])


async def test_kokoro_failing_to_load_falls_back_to_espeak_and_says_so(tmp_path, monkeypatch) -> None:
    # A real fault, not a fake: the model cache is a path where no directory can be made.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("NPC_ENGINE_CACHE_DIR", str(blocker / "cache"))
    async with running_engine(engine_config(tmp_path / "data", tts="kokoro")) as running:
        assert running.engine.synth is running.engine.fallback_synth
        c = await EngineClient.connect(running.endpoint)
        s = await c.open_session("bram", "p-nokokoro", greet=False)
        msgs = await (await s.say("Hello there.")).collect(timeout=120)
        end = msgs[-1]
        assert [m for m in msgs if m["type"] == "reply.audio"], "the game still gets a voice"
        assert end["status"] == "degraded"
        assert any(d["stage"] == "tts" and "espeak" in d["reason"] for d in end["degraded"])
        await c.close()
