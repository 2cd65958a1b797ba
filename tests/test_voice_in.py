"""Voice turns over the socket: WAV frames in at real-time pace -> transcript -> reply.

Real recognition (whisper tiny.en), real VAD (Silero), real LLM, real TTS where a test
needs audio out. Assertions are about the stream (partials before the final, the turn's
source and timings, barge-in trimming history), not exact words.
"""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npc_engine.client import ClientSession, EngineClient
from npc_engine.pipeline.wer import wer
from tests.harness import Running, engine_config, running_engine

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "speech"
FRAME = 320  # 20 ms at 16 kHz


def clip_info(name: str) -> dict[str, Any]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return next(c for c in manifest["clips"] if c["file"] == name)


def clip(name: str) -> tuple[np.ndarray, str]:
    entry = clip_info(name)
    with wave.open(str(FIXTURES / name)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm, entry["text"]


async def stream(session: ClientSession, pcm: np.ndarray, realtime: bool = True) -> None:
    for i in range(0, len(pcm), FRAME):
        await session.send_audio(pcm[i : i + FRAME].tobytes())
        if realtime:
            await asyncio.sleep(FRAME / 16000)


def transcripts(session: ClientSession) -> list[dict[str, Any]]:
    out = []
    while not session.other.empty():
        msg = session.other.get_nowait()
        if msg["type"] == "transcript":
            out.append(msg)
    return out


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    cfg = engine_config(tmp_path_factory.mktemp("voice-in"), stt="whisper", tts="kokoro")
    async with running_engine(cfg) as running:
        yield running


async def test_open_mic_turn_from_real_time_frames(client: EngineClient) -> None:
    assert client.hello["stt"] is True
    s = await client.open_session("bram", "p-mic", greet=False, mode="open_mic")
    pcm, text = clip("kokoro_am_michael_00.wav")
    await stream(s, pcm)  # the clip ends with ~1 s of silence: the VAD ends the turn
    turn = await s.next_turn(timeout=30)
    msgs = await turn.collect(timeout=180)
    start, end = msgs[0], msgs[-1]
    assert start["source"] == "voice"
    assert wer(text, start["input"]) <= 0.25, f"heard {start['input']!r} for {text!r}"
    heard = transcripts(s)
    finals = [t for t in heard if t["final"]]
    assert len(finals) == 1 and finals[0]["text"] == start["input"]
    assert heard.index(finals[0]) == len(heard) - 1, "partials come before the final"
    assert any(not t["final"] for t in heard), "partial transcripts stream while the player talks"
    t = end["timings"]
    assert "end_of_turn_delay" in t and t["end_of_turn_delay"] > 0
    assert 0 <= t["stt_final"] <= t["llm_first_token"] <= t["first_audio_sent"] <= t["total"]
    assert [m for m in msgs if m["type"] == "reply.audio"], "a full voice turn answers with audio"


async def test_push_to_talk_turn_ends_on_audio_end(client: EngineClient) -> None:
    s = await client.open_session("marta", "p-ptt", greet=False, audio=False)
    pcm, text = clip("kokoro_af_heart_01.wav")
    await stream(s, pcm[: int(len(pcm) * 0.85)], realtime=False)  # key released before the trailing silence
    await s.end_audio()
    turn = await s.next_turn(timeout=30)
    msgs = await turn.collect(timeout=120)
    assert msgs[0]["source"] == "voice" and msgs[0]["input"]
    assert wer(text, msgs[0]["input"]) <= 0.3
    assert "end_of_turn_delay" not in msgs[-1]["timings"], "push-to-talk has no VAD delay"


async def test_mid_sentence_pause_does_not_end_the_turn(client: EngineClient) -> None:
    s = await client.open_session("aldric", "p-pause", greet=False, audio=False, mode="open_mic")
    pcm, _ = clip("pause_mid_sentence.wav")
    await stream(s, pcm, realtime=False)
    turn = await s.next_turn(timeout=30)
    msgs = await turn.collect(timeout=120)
    heard = msgs[0]["input"].split()
    # "I found the amulet" <350 ms pause> "in the old mill": both halves in one turn.
    assert len(heard) >= 6 and "old" in [w.strip(".,").lower() for w in heard], heard
    with pytest.raises(TimeoutError):  # the pause did not split the sentence into two turns
        await s.next_turn(timeout=1.0)


async def test_cough_starts_no_turn(client: EngineClient) -> None:
    s = await client.open_session("bram", "p-cough", greet=False, audio=False, mode="open_mic")
    pcm, _ = clip("cough.wav")
    await stream(s, np.concatenate([pcm, np.zeros(16000, np.int16)]), realtime=False)
    with pytest.raises(TimeoutError):
        await s.next_turn(timeout=1.5)


async def test_barge_in_cancels_the_speaking_turn_and_trims_history(client: EngineClient, engine: Running) -> None:
    s = await client.open_session("marta", "p-barge", greet=False, mode="open_mic")
    turn = await s.say("Tell me the long story of this inn, from the very first day.")
    async for msg in turn:
        if msg["type"] == "reply.audio":
            break  # the NPC is speaking: now the player talks over it
    pcm, _ = clip("kokoro_bf_emma_03.wav")
    onset = int(clip_info("kokoro_bf_emma_03.wav")["speech_start_s"] * 16000)
    # From the speech onset and unpaced, so the interruption lands while chunks are still coming.
    await stream(s, pcm[onset:], realtime=False)
    rest = await turn.collect(timeout=60)
    end = rest[-1]
    assert end["status"] == "cancelled" and end["interrupted"] is True
    history = await engine.engine.store.load_history("p-barge", "marta")
    npc = [h for h in history if h.role == "assistant"][-1]
    assert npc.interrupted and npc.content == end["text"]
    follow = await s.next_turn(timeout=30)  # the player's interruption becomes the next turn
    assert (await follow.collect(timeout=120))[0]["source"] == "voice"


async def test_push_to_talk_release_reuses_the_speculative_decode(client: EngineClient, engine: Running) -> None:
    """The player falls silent, then releases the key: the final is the decode made at the
    silence, not a second one (trailing-silence frames are held back, not fed)."""
    s = await client.open_session("bram", "p-ptt-spec", greet=False, audio=False)
    pcm, _ = clip("kokoro_am_michael_04.wav")  # ~1 s of trailing silence: the VAD sees it begin
    await stream(s, pcm)
    # The engine handles messages in arrival order: once the ping is answered, every frame has
    # reached the session (frames still in the socket would be recognised after `before`).
    await client.request({"type": "ping"})
    voice = engine.server.sessions[s.id].voice_input
    assert voice is not None
    rec_stream = voice.recognizer.stream
    await voice.drained()  # every frame recognised, the silence's speculative decode included
    before = rec_stream.decodes
    await s.end_audio()
    msgs = await (await s.next_turn(timeout=30)).collect(timeout=120)
    assert msgs[0]["input"]
    assert rec_stream.decodes == before, "the key release decoded the utterance a second time"


async def test_a_spoken_line_in_a_scene_goes_to_the_character_it_names(client: EngineClient) -> None:
    scene = await client.open_scene(["marta", "aldric"], "p-scene-voice", audio=False, facing="marta", reactions=False)
    pcm, text = clip("kokoro_bf_emma_03.wav")  # "Tell me about Captain Aldric."
    await stream(scene, pcm[: int(len(pcm) * 0.85)], realtime=False)
    await scene.end_audio()
    turn = await scene.next_turn(timeout=30)
    msgs = await turn.collect(timeout=120)
    assert msgs[0]["source"] == "voice" and wer(text, msgs[0]["input"]) <= 0.3, msgs[0]
    assert {m["character"] for m in msgs} == {"aldric"}, "named, he answers, though the player faces Marta"
    assert [t for t in transcripts(scene) if t["final"]], "the scene's transcripts go to the game too"


async def test_barge_in_cuts_whoever_speaks_in_a_scene(client: EngineClient, engine: Running) -> None:
    scene = await client.open_scene(["marta", "bram"], "p-scene-barge", mode="open_mic", reactions=False)
    turn = await scene.say("Marta, tell me the long story of this inn, from the very first day.")
    async for msg in turn:
        if msg["type"] == "reply.audio":
            break
    pcm, _ = clip("kokoro_bf_emma_03.wav")
    onset = int(clip_info("kokoro_bf_emma_03.wav")["speech_start_s"] * 16000)
    await stream(scene, pcm[onset:], realtime=False)
    end = (await turn.collect(timeout=60))[-1]
    assert end["status"] == "cancelled" and end["interrupted"] is True and end["character"] == "marta"
    follow = await scene.next_turn(timeout=30)
    assert (await follow.collect(timeout=120))[0]["source"] == "voice"


async def test_the_line_heard_so_far_is_evaluated_while_the_player_speaks(client: EngineClient, engine: Running) -> None:
    """A partial transcript has the prompt up to those words evaluated in the background, so
    the reply evaluates only the rest of the line: fewer prompt tokens than the same line typed."""
    s = await client.open_session("bram", "p-ptt-partial", greet=False, audio=False)
    session = engine.server.sessions[s.id]
    if session._warm is not None:
        await session._warm  # the persona's, at open: a partial heard while it runs is not warmed
    pcm, _ = clip("kokoro_bm_george_00.wav")  # 3.6 s of speech: partials while it is spoken
    await stream(s, pcm)
    await client.request({"type": "ping"})  # every frame has reached the session
    voice = session.voice_input
    assert voice is not None
    await voice.drained()
    partials = [t["text"] for t in transcripts(s) if not t["final"]]
    assert partials, "no partial transcript: nothing to evaluate ahead"
    warm = session._warm
    assert warm is not None
    await warm  # the player has not let go yet: the warm-up of the words so far has run
    assert session.warm_ups >= 2  # the persona's at open, and the line's beginning
    await s.end_audio()
    voice_msgs = await (await s.next_turn(timeout=30)).collect(timeout=120)
    heard, voice_end = voice_msgs[0]["input"], voice_msgs[-1]
    # The same line typed, to a fresh player of the same character: nothing of it ahead.
    typed = await client.open_session("bram", "p-ptt-partial-typed", greet=False, audio=False)
    typed_warm = engine.server.sessions[typed.id]._warm
    if typed_warm is not None:
        await typed_warm  # its persona evaluated first, as the voice session's was
    typed_end = (await (await typed.say(heard, timeout=60)).collect(timeout=120))[-1]
    assert voice_end["prompt_tokens_evaluated"] < typed_end["prompt_tokens_evaluated"], (partials, voice_end, typed_end)
