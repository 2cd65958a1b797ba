"""Play a session's turns against a sidecar over ZeroMQ and time them on the client.

Voice turns push the clip in 20 ms frames at real-time pace (on an absolute schedule, so
the pace does not drift with the event loop), then send ``audio.end`` (push-to-talk
release). Text turns send the line. Either way the client's clock starts when the end of
the player's turn is sent; the engine's ``turn.end`` timings start when it received it.
The client waits for ``turn.end`` before the next line, as a player waits for the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from npc_engine.benchmark.workload import CLIP_RATE, Planned, Utterance
from npc_engine.client import ClientSession, EngineClient

FRAME = 320  # 20 ms at 16 kHz
TURN_TIMEOUT_S = 180.0


@dataclass
class TurnResult:
    index: int
    session: int
    character: str
    kind: str  # voice | text
    said: str  # reference text of the clip, or the typed line
    heard: str | None = None  # the engine's transcript (turn.start input)
    category: str = "content"  # content | scripted | fallback | no_audio | no_turn
    status: str = ""
    ttfa_ms: float | None = None  # client: end of the player's turn sent -> first reply.audio received
    end_ms: float | None = None  # client: -> turn.end received
    timings: dict[str, float] = field(default_factory=dict)
    degraded: list[dict[str, str]] = field(default_factory=list)
    tokens: int = 0
    audio_seconds: float = 0.0
    first_chunk_text: str | None = None
    reply_text: str = ""
    started_at: float = 0.0  # seconds since the benchmark started

    @property
    def transport_ms(self) -> float | None:
        """First reply.audio: received by the client minus handed to the engine's socket."""
        sent = self.timings.get("first_audio_sent")
        return None if self.ttfa_ms is None or sent is None else round(self.ttfa_ms - sent, 2)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "transport_ms": self.transport_ms}


def classify(msgs: list[dict[str, Any]], character: str) -> str:
    """What the first audio of a turn was: the model's reply (content), a story line
    (scripted), a fallback line after the model failed (fallback), or nothing."""
    end = msgs[-1]
    if not any(m["type"] == "reply.audio" for m in msgs):
        return "no_audio"
    if any(m["type"] == "story" and m.get("kind") == "say_line" and m.get("character") == character for m in msgs):
        return "scripted"
    if not end.get("tokens") or "llm_first_token" not in end.get("timings", {}):
        return "fallback"
    return "content"


async def push_clip(session: ClientSession, pcm: Any, realtime: bool = True) -> None:
    start = time.perf_counter()
    for n, i in enumerate(range(0, len(pcm), FRAME)):
        if realtime:
            delay = start + n * FRAME / CLIP_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await session.send_audio(pcm[i : i + FRAME].tobytes())


async def play_turn(
    session: ClientSession, plan: Planned, session_index: int, t_bench: float, realtime: bool = True,
    stop_after_first_audio: bool = False,
) -> TurnResult:
    """Play one turn; with ``stop_after_first_audio`` the turn is cancelled once its first
    chunk arrives (its TTFA is measured; the rest of the reply is not synthesized)."""
    utt: Utterance = plan.utterance
    res = TurnResult(plan.index, session_index, plan.character, utt.kind, utt.text, started_at=round(time.perf_counter() - t_bench, 2))
    try:
        if utt.kind == "voice":
            assert utt.pcm is not None
            await push_clip(session, utt.pcm, realtime)
            t_end = time.perf_counter()
            await session.end_audio()
            turn = await session.next_turn(timeout=60)
        else:
            t_end = time.perf_counter()
            turn = await session.say(utt.text, timeout=TURN_TIMEOUT_S)
    except (asyncio.TimeoutError, TimeoutError):
        res.category, res.status = "no_turn", "no_turn"  # e.g. the recognizer heard nothing
        return res
    msgs: list[dict[str, Any]] = []

    async def read() -> None:
        async for msg in turn:
            if msg["type"] == "reply.audio" and res.ttfa_ms is None:
                res.ttfa_ms = round((time.perf_counter() - t_end) * 1000, 2)
                res.first_chunk_text = msg.get("text")
                if stop_after_first_audio:
                    await turn.cancel()
            msgs.append(msg)
        res.end_ms = round((time.perf_counter() - t_end) * 1000, 2)

    await asyncio.wait_for(read(), TURN_TIMEOUT_S)
    end = msgs[-1]
    start = next((m for m in msgs if m["type"] == "turn.start"), {})
    res.heard = start.get("input")
    res.status = end.get("status", "")
    res.timings = dict(end.get("timings") or {})
    res.degraded = list(end.get("degraded") or [])
    res.tokens = int(end.get("tokens") or 0)
    res.audio_seconds = float(end.get("audio_seconds") or 0.0)
    res.reply_text = end.get("text") or ""
    res.category = classify(msgs, plan.character)
    return res


async def play_session(
    endpoint: str,
    turns: list[Planned],
    session_index: int,
    player: str,
    t_bench: float,
    on_turn: Callable[[TurnResult], None],
    deadline: float | None = None,
    gap_s: float = 0.5,
    between: Callable[[int, TurnResult], Any] | None = None,
    stop_after_first_audio: bool = False,
) -> list[TurnResult]:
    """One player talking to one character: open a session, play ``turns`` in order.

    ``deadline`` (perf_counter seconds): no new turn starts after it. ``between(i, result)``
    is awaited after each turn (the naive baseline runs there, on an idle sidecar). If the
    task is cancelled (a hard time limit), the turn in flight and the session are closed on
    the sidecar too, so they stop using its CPU.
    """
    if not turns:
        return []
    out: list[TurnResult] = []
    client = await EngineClient.connect(endpoint, timeout=30, client_name="npc-engine-bench")
    s: ClientSession | None = None
    try:
        s = await client.open_session(turns[0].character, player, greet=False, audio=True, mode="push_to_talk")
        await asyncio.sleep(1.0)  # a player walks up, then speaks; the persona warm-up runs meanwhile
        for i, plan in enumerate(turns):
            if deadline is not None and time.perf_counter() > deadline:
                break
            res = await play_turn(s, plan, session_index, t_bench, stop_after_first_audio=stop_after_first_audio)
            out.append(res)
            on_turn(res)
            if between is not None:
                await between(i, res)
            await asyncio.sleep(gap_s)
    finally:
        if s is not None:
            # session.close cancels a turn still running; don't wait long for the reply.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(client.request({"type": "session.close", "session": s.id}), 5.0)
        await client.close()
    return out
