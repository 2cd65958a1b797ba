"""Per-stage timings in ``turn.end`` and the Prometheus endpoint, over a real socket.

Real models (whisper tiny.en, Silero, SmolLM2, Kokoro). The assertions are about which
marks a turn reports, their order, and their consistency with what the client saw (a
mark can't be later than the moment its message reached the client) — never their values.
"""

from __future__ import annotations

import logging
import time
import urllib.request
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from npc_engine import prom
from npc_engine.client import ClientSession, EngineClient
from npc_engine.metrics import BEFORE, STAGES, audio_path_spans, order_violations
from tests.harness import Running, engine_config, running_engine

SPEECH = Path(__file__).resolve().parent / "fixtures" / "speech"
FRAME = 320  # 20 ms at 16 kHz
LLM_AUDIO_MARKS = {"llm_first_token", "first_clause", "tts_first_chunk", "first_audio_sent", "llm_done", "total"}


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / name)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


async def send_clip(session: ClientSession, pcm: np.ndarray) -> None:
    for i in range(0, len(pcm), FRAME):
        await session.send_audio(pcm[i : i + FRAME].tobytes())


async def timed(turn: Any, t_end: float) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The turn's messages, and when (ms after ``t_end``, the client's end of the player's
    turn) the first reply.audio of the reply's words (not an ack), the ack and the turn.end reached the client."""
    msgs: list[dict[str, Any]] = []
    seen: dict[str, float] = {}
    async for msg in turn:
        msgs.append(msg)
        key = {"reply.audio": "ack" if msg.get("ack") else "first_audio", "turn.end": "end"}.get(msg["type"])
        if key and key not in seen:
            seen[key] = (time.perf_counter() - t_end) * 1000
    return msgs, seen


def check_consistent(end: dict[str, Any], seen: dict[str, float]) -> dict[str, float]:
    t = end["timings"]
    assert set(t) <= set(STAGES) | set(BEFORE), f"unknown timing keys: {set(t) - set(STAGES) - set(BEFORE)}"
    assert "total" in t
    assert order_violations(t) == [], order_violations(t)
    # The server's clock starts after the client ended the turn, on the same machine clock:
    # no mark can be later than the client receiving the message it marks.
    assert t["total"] <= seen["end"]
    if "ack_sent" in t:  # acks are on by default; whether a turn has one depends on the reply's pace
        assert t["ack_sent"] <= seen["ack"]
    if "first_audio_sent" in t:
        assert t["first_audio_sent"] <= seen["first_audio"]
        assert sum(audio_path_spans(t).values()) == pytest.approx(t["first_audio_sent"], abs=0.1)
    return t


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    cfg = engine_config(tmp_path_factory.mktemp("timings"), stt="whisper", tts="kokoro")
    async with running_engine(cfg) as running:
        yield running


async def test_text_turn_with_tts_has_every_llm_and_audio_mark(client: EngineClient) -> None:
    s = await client.open_session("bram", "p-t-text", greet=False)
    t_end = time.perf_counter()
    msgs, seen = await timed(await s.say("What do you make at your forge?"), t_end)
    end = msgs[-1]
    assert [m for m in msgs if m["type"] == "reply.audio"], "a voiced session answers with audio"
    t = check_consistent(end, seen)
    assert set(t) - {"ack_sent"} == LLM_AUDIO_MARKS, f"a text turn with TTS reports all LLM and audio marks: {sorted(t)}"


async def test_push_to_talk_turn_adds_stt_final_only(client: EngineClient) -> None:
    s = await client.open_session("marta", "p-t-ptt", greet=False)
    await send_clip(s, clip("kokoro_bf_emma_07.wav"))
    await s.end_audio()
    t_end = time.perf_counter()
    msgs, seen = await timed(await s.next_turn(timeout=60), t_end)
    assert msgs[0]["source"] == "voice"
    t = check_consistent(msgs[-1], seen)
    assert set(t) - {"ack_sent"} == LLM_AUDIO_MARKS | {"stt_final"}, sorted(t)
    assert t["stt_final"] <= t["llm_first_token"]


async def test_open_mic_turn_reports_the_end_of_turn_delay(client: EngineClient) -> None:
    s = await client.open_session("bram", "p-t-mic", greet=False, mode="open_mic")
    await send_clip(s, clip("kokoro_am_michael_04.wav"))  # trailing silence: the VAD ends the turn
    turn = await s.next_turn(timeout=60)
    msgs = await turn.collect(timeout=240)
    t = msgs[-1]["timings"]
    assert order_violations(t) == []
    # A reply started when the player fell silent and committed at the end of the turn also
    # says how long before the decision it started (preemptive_lead), and only then.
    preemptive = {"preemptive_lead"} if msgs[-1].get("preemptive") else set()
    assert set(t) - {"ack_sent"} == LLM_AUDIO_MARKS | {"stt_final", "end_of_turn_delay"} | preemptive, sorted(t)
    assert t["end_of_turn_delay"] > 0


async def test_scripted_line_has_audio_marks_but_no_model_marks(client: EngineClient) -> None:
    # Aldric's story: asking him to open the gate without a reason gets his scripted refusal.
    s = await client.open_session("aldric", "p-t-script", greet=False)
    t_end = time.perf_counter()
    msgs, seen = await timed(await s.say("Please open the gate and let me through."), t_end)
    assert any(m["type"] == "story" and m.get("kind") == "say_line" for m in msgs), "the story answered with a line"
    t = check_consistent(msgs[-1], seen)
    assert {"tts_first_chunk", "first_audio_sent", "total"} <= set(t)
    assert not {"stt_final", "llm_first_token", "llm_done"} & set(t), sorted(t)


async def test_degraded_turn_says_why_in_turn_end_log_and_metrics(
    client: EngineClient, engine: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="npc_engine.session")
    before = prom.DEGRADATIONS.labels("tts")._value.get()
    cfg = engine.engine.cfg
    budget, rtf = cfg.budget_tts_chunk_ms, cfg.tts_max_rtf
    cfg.budget_tts_chunk_ms, cfg.tts_max_rtf = 1, 0.0  # no real chunk synthesizes in 1 ms
    try:
        s = await client.open_session("marta", "p-t-degrade", greet=False)
        t_end = time.perf_counter()
        msgs, seen = await timed(await s.say("What is on the menu tonight?"), t_end)
    finally:
        cfg.budget_tts_chunk_ms, cfg.tts_max_rtf = budget, rtf
    end = msgs[-1]
    check_consistent(end, seen)
    assert end["status"] == "degraded"
    assert end["degraded"] and all(d["stage"] and d["reason"] for d in end["degraded"])
    lines = [r.getMessage() for r in caplog.records if f"turn {s.id}/" in r.getMessage()]
    assert len(lines) == 1, lines
    assert " text degraded" in lines[0] and "degraded: tts: " in lines[0] and "first audio" in lines[0]
    assert prom.DEGRADATIONS.labels("tts")._value.get() > before


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_endpoint_counts_stages_after_a_turn(client: EngineClient) -> None:
    httpd = prom.start_metrics_server(0)
    assert httpd is not None and httpd.server_address[0] == "127.0.0.1"
    try:
        port = httpd.server_port
        before = scrape(port)
        s = await client.open_session("bram", "p-t-prom", greet=False)
        msgs = await (await s.say("How is business these days?")).collect(timeout=240)
        status = msgs[-1]["status"]
        after = scrape(port)
    finally:
        httpd.shutdown()
        httpd.server_close()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    for stage in msgs[-1]["timings"]:
        assert delta("npc_engine_stage_seconds_count", stage=stage) >= 1, f"no observation for {stage}"
        assert delta("npc_engine_stage_seconds_bucket", stage=stage, le="+Inf") >= 1
    assert delta("npc_engine_turns_total", source="text", status=status) >= 1
    assert delta("npc_engine_time_to_first_audio_seconds_count", source="text") >= 1
    assert after[("npc_engine_active_sessions", ())] >= 1


async def test_errors_are_counted_by_code(client: EngineClient) -> None:
    before = prom.ERRORS.labels("unknown_session")._value.get()
    with pytest.raises(Exception, match="unknown_session"):
        await client.request({"type": "text", "session": "no-such-session", "text": "hello"})
    assert prom.ERRORS.labels("unknown_session")._value.get() == before + 1
