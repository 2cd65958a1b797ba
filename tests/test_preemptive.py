"""Preemptive replies over the socket, on the real models (whisper tiny.en, Silero VAD, the
embedded LLM, Kokoro): the reply starts when the player falls silent; released on the same
words it is committed and its first audio is there at once; when the player goes on it is
dropped without a message, a turn id or a line in memory, and the model's cache of the
conversation still serves the turn that counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from npc_engine.client import ClientSession, EngineClient
from npc_engine.metrics import order_violations
from npc_engine.session.voice import VoiceInput
from tests.harness import Running, engine_config, eventually, running_engine
from tests.test_voice_in import clip, stream


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    cfg = engine_config(tmp_path_factory.mktemp("preemptive"), stt="whisper", tts="kokoro")
    async with running_engine(cfg) as running:
        yield running


async def voice_of(client: EngineClient, engine: Running, s: ClientSession) -> VoiceInput:
    """The session's microphone, once every frame sent so far has been recognised."""
    # Messages are handled in arrival order: once the ping is answered every frame has reached
    # the session; drained() then waits for their recognition (the silence's decode included).
    await client.request({"type": "ping"})
    voice = engine.server.sessions[s.id].voice_input
    assert voice is not None
    await voice.drained()
    return voice


def other_messages(s: ClientSession) -> list[dict[str, Any]]:
    out = []
    while not s.other.empty():
        out.append(s.other.get_nowait())
    return out


async def test_a_preemptive_reply_commits_on_release_with_its_first_audio_ready(client: EngineClient, engine: Running) -> None:
    s = await client.open_session("bram", "p-pre-commit", greet=False)
    pcm, _ = clip("kokoro_am_michael_04.wav")  # "Goodbye for now." then ~1 s of silence, the key still down
    await stream(s, pcm, realtime=False)
    voice = await voice_of(client, engine, s)
    spec = voice.preempted
    assert spec is not None and spec.speculative, "the player fell silent: the reply started"
    # The work before the decision: the model's first words and the first chunk's audio.
    await eventually(lambda: spec.delivered.audio_seconds > 0, what="the preemptive reply's first chunk")
    assert s.turns == {}, "nothing of an undecided reply reaches the game"

    await s.end_audio()
    msgs = await (await s.next_turn(timeout=60)).collect(timeout=180)
    start, end = msgs[0], msgs[-1]
    assert start["type"] == "turn.start" and start["turn"] == 1 and start["source"] == "voice" and start["input"]
    assert [m["seq"] for m in msgs] == list(range(len(msgs)))
    assert end["status"] in ("ok", "degraded") and end["preemptive"] is True, end  # degraded: a slow voice on a loaded machine
    audio = [m for m in msgs if m["type"] == "reply.audio" and not m.get("ack")]
    assert audio, "the committed reply speaks"
    t = end["timings"]
    assert t["preemptive_lead"] > 0 and t["first_audio_sent"] == 0, t  # its first audio was ready at the release
    assert order_violations(t) == []
    assert voice.preempt_stats.committed == 1 and voice.preempt_stats.dropped == 0
    history = await engine.engine.store.load_history("p-pre-commit", "bram")
    assert [h.content for h in history] == [start["input"], end["text"]]
    if end.get("prompt_tokens"):  # the persona, evaluated at the session's warm-up, was reused
        assert end["prompt_tokens_evaluated"] < end["prompt_tokens"] / 2, end


async def test_the_player_going_on_drops_the_reply_without_a_trace(client: EngineClient, engine: Running) -> None:
    s = await client.open_session("bram", "p-pre-drop", greet=False, audio=False)
    pcm, _ = clip("pause_mid_sentence.wav")  # "I found the amulet" <350 ms pause> "in the old mill."
    await stream(s, pcm)  # real time: the reply to the first half runs during the pause
    voice = await voice_of(client, engine, s)
    stats = voice.preempt_stats
    assert stats.started >= 2 and stats.dropped >= 1, f"a reply to the first half started and was dropped: {stats}"
    assert voice.preempted is not None, "the final silence started a reply to the whole line"

    await s.end_audio()
    msgs = await (await s.next_turn(timeout=60)).collect(timeout=180)
    start, end = msgs[0], msgs[-1]
    assert start["turn"] == 1, "the dropped reply took no turn id"
    assert len(start["input"].split()) >= 6, f"the whole line, both halves: {start['input']!r}"
    assert {m["turn"] for m in msgs} == {1} and end["preemptive"] is True
    assert stats.committed == 1
    assert {m["type"] for m in other_messages(s)} <= {"transcript"}, "no message of the dropped reply"
    assert s.turns == {}, "no other turn's messages"
    history = await engine.engine.store.load_history("p-pre-drop", "bram")
    assert [h.content for h in history] == [start["input"], end["text"]], "memory has only the real turn"
    # No damage to the KV cache: the dropped request shared the turn's prompt up to the player's
    # line, so the turn that counts evaluates little more than that line.
    if end.get("prompt_tokens"):
        assert end["prompt_tokens_evaluated"] < end["prompt_tokens"] / 2, end


async def test_preemption_off_answers_at_the_release(client: EngineClient, engine: Running) -> None:
    s = await client.open_session("bram", "p-pre-off", greet=False, audio=False, preemptive=False)
    pcm, _ = clip("kokoro_am_michael_04.wav")
    await stream(s, pcm, realtime=False)
    voice = await voice_of(client, engine, s)
    assert voice.preempted is None and voice.preempt_stats.started == 0
    await s.end_audio()
    msgs = await (await s.next_turn(timeout=60)).collect(timeout=180)
    end = msgs[-1]
    assert "preemptive" not in end and "preemptive_lead" not in end["timings"]
    assert end["status"] == "ok" and msgs[0]["input"]
