"""Play a session's turns against a sidecar over ZeroMQ and time them on the client, as a player.

Voice turns stream the clip in 20 ms frames at real-time pace (each frame sent when its last
sample would have been captured, on an absolute schedule, so the pace does not drift with
the event loop):

* push-to-talk: the clip up to its end of speech plus the release delay (200-300 ms,
  seeded), then ``audio.end``: the player lets go of the key a moment after the last word.
  The clock starts when ``audio.end`` is sent.
* open mic: the whole clip, then silence until the engine starts the turn (a microphone
  never stops). The clock starts at the END OF SPEECH in the clip, not at the engine's
  end-of-turn decision: the wait for that decision is part of what the player feels.

Typed turns send the line; the clock starts when it is sent. Every message of the turn is
stamped on arrival; ``felt.listen`` turns those stamps into felt TTFA (any audio, an
acknowledgement included), content TTFA (the reply's own words) and the longest silence.
The client waits for ``turn.end`` before the next line, as a player waits for the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from npc_engine.benchmark.felt import listen
from npc_engine.benchmark.workload import CLIP_RATE, Planned, Utterance
from npc_engine.client import ClientSession, EngineClient, Turn

FRAME = 320  # 20 ms at 16 kHz
TURN_TIMEOUT_S = 180.0
OPEN_MIC_SILENCE_S = 10.0  # open mic: silence streamed after the clip while waiting for the engine's turn


@dataclass
class TurnResult:
    index: int
    session: int
    character: str
    kind: str  # voice | text
    said: str  # reference text of the clip, or the typed line
    mode: str = "push_to_talk"  # the session's (a typed line in either is "typed")
    side: str = "new"  # new | baseline (the --baseline preset's sidecar)
    heard: str | None = None  # the engine's transcript (turn.start input)
    answered_by: str | None = None  # turn.start's character: who answered (a scene's routing)
    category: str = "content"  # content | scripted | fallback | no_audio | no_turn
    status: str = ""
    # Client clock, ms from the end of the player's turn (push-to-talk: audio.end sent; typed:
    # the line sent; open mic: the end of speech in the clip).
    ttfa_ms: float | None = None  # first reply.audio of any kind: the felt TTFA
    content_ms: float | None = None  # first reply.audio of the reply's own words (not an ack)
    longest_silence_ms: float | None = None  # the wait for the first audio, or a gap in playback
    gaps_ms: list[float] = field(default_factory=list)
    acks: int = 0
    release_ms: float | None = None  # push-to-talk: end of speech -> audio.end
    end_ms: float | None = None  # -> turn.end received
    stopped: bool = False  # cancelled once enough content had arrived (the rest is not measured)
    timings: dict[str, float] = field(default_factory=dict)
    degraded: list[dict[str, str]] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens_evaluated: int | None = None  # turn.end's: the prompt the model had to read (not cached)
    preemptive: bool | None = None  # turn.end's: a preemptive reply was committed
    audio_seconds: float = 0.0
    first_chunk_text: str | None = None
    reply_text: str = ""
    started_at: float = 0.0  # seconds since the benchmark started

    @property
    def felt_ms(self) -> float | None:
        return self.ttfa_ms

    @property
    def turn_kind(self) -> str:
        """push_to_talk | typed | open_mic: what the player did to end the turn."""
        return "typed" if self.kind == "text" else self.mode

    @property
    def transport_ms(self) -> float | None:
        """The first chunk of content: received by the client minus handed to the engine's
        socket (the engine's ``first_audio_sent`` is the reply's own first chunk; an
        acknowledgement before it is ``ack_sent``). Push-to-talk and typed only: open mic's
        clock starts before the engine's does."""
        sent = self.timings.get("first_audio_sent")
        if self.content_ms is None or sent is None or self.turn_kind == "open_mic":
            return None
        return round(self.content_ms - sent, 2)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "transport_ms": self.transport_ms, "turn_kind": self.turn_kind}


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


def push_to_talk_audio(utt: Utterance, release_s: float) -> np.ndarray:
    """What the microphone captures while the key is held: the clip up to its end of speech
    plus ``release_s`` (its own trailing room tone, padded with silence if it is shorter)."""
    assert utt.pcm is not None
    eos = utt.speech_end_s if utt.speech_end_s is not None else utt.seconds
    n = round((eos + release_s) * CLIP_RATE)
    pcm = utt.pcm[:n]
    if len(pcm) < n:
        pcm = np.concatenate([pcm, np.zeros(n - len(pcm), dtype=pcm.dtype)])
    return pcm


async def push_clip(session: ClientSession, pcm: np.ndarray, realtime: bool = True, start: float | None = None) -> float:
    """Send ``pcm`` in 20 ms frames, each when its last sample would have been captured;
    returns the perf_counter time the clip's first sample was captured (its time zero)."""
    start = time.perf_counter() if start is None else start
    for n, i in enumerate(range(0, len(pcm), FRAME)):
        if realtime:
            delay = start + (n * FRAME + len(pcm[i : i + FRAME])) / CLIP_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await session.send_audio(pcm[i : i + FRAME].tobytes())
    return start


async def push_silence(session: ClientSession, start: float, seconds: float) -> None:
    """An open microphone after the player stopped talking: silence at real-time pace from
    ``start`` (perf_counter) on, until cancelled or ``seconds`` have been sent."""
    frame = np.zeros(FRAME, dtype="<i2").tobytes()
    for n in range(1, round(seconds * CLIP_RATE / FRAME) + 1):
        delay = start + n * FRAME / CLIP_RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await session.send_audio(frame)


async def _open_mic_turn(session: ClientSession, utt: Utterance, timeout: float) -> tuple[Turn, float]:
    """Stream the clip and then silence until the engine starts a turn; returns the turn
    and the end of speech (perf_counter)."""
    assert utt.pcm is not None
    waiting = asyncio.create_task(session.next_turn(timeout=timeout))
    silence: asyncio.Task[None] | None = None
    try:
        start = await push_clip(session, utt.pcm)
        silence = asyncio.create_task(push_silence(session, start + utt.seconds, OPEN_MIC_SILENCE_S))
        turn = await waiting
    finally:
        for task in (waiting, silence):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    eos = utt.speech_end_s if utt.speech_end_s is not None else utt.seconds
    return turn, start + eos


async def play_turn(
    session: ClientSession, plan: Planned, session_index: int, t_bench: float, realtime: bool = True,
    stop_after_content: int | None = None, side: str = "new",
) -> TurnResult:
    """Play one turn. With ``stop_after_content`` the turn is cancelled once that many chunks
    of the reply's own words arrived (felt and content TTFA and the first gap are measured;
    the rest of the reply is not synthesized)."""
    utt: Utterance = plan.utterance
    res = TurnResult(plan.index, session_index, plan.character, utt.kind, utt.text, mode=plan.mode, side=side,
                     started_at=round(time.perf_counter() - t_bench, 2))
    try:
        if utt.kind == "voice" and plan.mode == "open_mic":
            turn, t_end = await _open_mic_turn(session, utt, OPEN_MIC_SILENCE_S + 20.0)
        elif utt.kind == "voice":
            assert utt.pcm is not None
            pcm = push_to_talk_audio(utt, plan.release_s)
            start = await push_clip(session, pcm, realtime)
            t_end = time.perf_counter()
            await session.end_audio()
            if utt.speech_end_s is not None:
                res.release_ms = round((t_end - start - utt.speech_end_s) * 1000, 1)
            turn = await session.next_turn(timeout=60)
        else:
            t_end = time.perf_counter()
            turn = await session.say(utt.text, timeout=TURN_TIMEOUT_S)
    except (asyncio.TimeoutError, TimeoutError):
        res.category, res.status = "no_turn", "no_turn"  # e.g. the recognizer heard nothing
        return res
    events: list[tuple[float, dict[str, Any]]] = []

    async def read() -> None:
        content = 0
        async for msg in turn:
            now = time.perf_counter()
            events.append((now, msg))
            if msg["type"] != "reply.audio":
                continue
            if res.first_chunk_text is None:
                res.first_chunk_text = msg.get("text")
            if not msg.get("ack"):
                content += 1
                if stop_after_content is not None and content == stop_after_content and not res.stopped:
                    res.stopped = True
                    await turn.cancel()
        res.end_ms = round((time.perf_counter() - t_end) * 1000, 2)

    await asyncio.wait_for(read(), TURN_TIMEOUT_S)
    heard = listen(events, t_end)
    res.ttfa_ms, res.content_ms, res.acks = heard.felt_ms, heard.content_ms, heard.acks
    res.longest_silence_ms, res.gaps_ms = heard.longest_silence_ms, list(heard.gaps_ms)
    msgs = [m for _, m in events]
    end = msgs[-1]
    start_msg = next((m for m in msgs if m["type"] == "turn.start"), {})
    res.heard = start_msg.get("input")
    res.answered_by = start_msg.get("character")
    res.status = end.get("status", "")
    res.timings = dict(end.get("timings") or {})
    res.degraded = list(end.get("degraded") or [])
    res.tokens = int(end.get("tokens") or 0)
    evaluated = end.get("prompt_tokens_evaluated")
    res.prompt_tokens_evaluated = int(evaluated) if evaluated is not None else None
    res.preemptive = end.get("preemptive")
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
    between: Callable[[int, TurnResult], Awaitable[None]] | None = None,
    stop_after_content: int | None = None,
    side: str = "new",
) -> list[TurnResult]:
    """One player talking to one character: open a session, play ``turns`` in order.

    ``side`` "baseline" opens the session with acknowledgements and preemptive replies off
    (the baseline sidecar has them off engine-wide too). ``deadline`` (perf_counter
    seconds): no new turn starts after it. ``between(i, result)`` is awaited after each turn
    (the naive baseline runs there, on an idle sidecar). If the task is cancelled (a hard
    time limit), the turn in flight and the session are closed on the sidecar too, so they
    stop using its CPU.
    """
    if not turns:
        return []
    out: list[TurnResult] = []
    client = await EngineClient.connect(endpoint, timeout=30, client_name="npc-engine-bench")
    s: ClientSession | None = None
    try:
        on = side != "baseline"
        # acks / preemptive: an engine that does not know them ignores them (v1 ignores unknown fields).
        s = await client.open_session(
            turns[0].character, player, greet=False, mode=turns[0].mode, acks=on, preemptive=on
        )
        await asyncio.sleep(1.0)  # a player walks up, then speaks; the persona warm-up runs meanwhile
        for i, plan in enumerate(turns):
            if deadline is not None and time.perf_counter() > deadline:
                break
            res = await play_turn(s, plan, session_index, t_bench, stop_after_content=stop_after_content, side=side)
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


async def play_scene_pair(
    endpoint: str,
    turns: list[Planned],
    characters: list[str],
    session_index: int,
    player: str,
    t_bench: float,
    on_turn: Callable[[TurnResult], None],
    deadline: float | None = None,
    gap_s: float = 0.5,
    stop_after_content: int | None = None,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """A scene conversation and its one-to-one control, interleaved turn by turn.

    Player ``player``-scene talks to a scene of ``characters``; player ``player``-solo has a
    one-to-one session with each of them. Each planned line is played on both (the scene:
    addressed as planned; the control: to that character's own session), the order swapped
    every turn (scene first, then one-to-one first, ...), so both meet the same machine load
    and each other's leftover background work alike. Results carry ``side`` "scene" or
    "one_to_one". ``settle`` is awaited once everything is open (the persona warm-ups of
    every character: the spawned sidecar going idle), so neither side's first turn pays for them.
    ``deadline`` (perf_counter seconds): no new pair of turns starts after it.
    """
    if not turns:
        return
    scene_client = await EngineClient.connect(endpoint, timeout=30, client_name="npc-engine-bench")
    solo_client: EngineClient | None = None
    scene: ClientSession | None = None
    solos: dict[str, ClientSession] = {}
    try:
        solo_client = await EngineClient.connect(endpoint, timeout=30, client_name="npc-engine-bench")
        mode = turns[0].mode
        # Reactions off: a reaction is a second turn after the answer, outside the wait measured,
        # and it would start as the bench's next line cuts it off.
        scene = await scene_client.open_scene(
            characters, f"{player}-scene", mode=mode, acks=True, preemptive=True, reactions=False
        )
        for c in characters:
            solos[c] = await solo_client.open_session(c, f"{player}-solo", greet=False, mode=mode, acks=True, preemptive=True)
        await asyncio.sleep(1.0)  # as play_session: the player walks up, then speaks
        if settle is not None:
            await settle()
        facing: str | None = None
        for i, plan in enumerate(turns):
            if deadline is not None and time.perf_counter() > deadline:
                break
            for side in ("scene", "one_to_one") if i % 2 == 0 else ("one_to_one", "scene"):
                if side == "scene":
                    # The clips name nobody here: the game says whom the player faces, before the key is pressed.
                    if plan.utterance.kind == "voice" and facing != plan.character:
                        await scene.update(facing=plan.character)
                        facing = plan.character
                    res = await play_turn(scene, plan, session_index, t_bench, stop_after_content=stop_after_content,
                                          side=side)
                else:
                    res = await play_turn(solos[plan.character], plan, session_index, t_bench,
                                          stop_after_content=stop_after_content, side=side)
                on_turn(res)
                await asyncio.sleep(gap_s)
    finally:
        for client, s in [(scene_client, scene), *((solo_client, x) for x in solos.values())]:
            if client is not None and s is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(client.request({"type": "session.close", "session": s.id}), 5.0)
        await scene_client.close()
        if solo_client is not None:
            await solo_client.close()
