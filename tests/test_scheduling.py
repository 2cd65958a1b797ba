"""Scheduling across sessions on the real models: the TTS worker takes the chunk whose playback
runs dry first, so two sessions' first chunks (the players hear nothing yet) are synthesized
before a third turn's later chunk (its player still has a long first chunk to listen to).

Real sidecar, real LLM (fast profile) and Kokoro. Turn A is spoken straight through ``speak``
on the engine's own voice and TTS worker, so its first chunk can be long (about 20 s of audio:
its later chunk is not due for that long, however loaded the machine). Sessions B and C are
real sessions over the socket. While B and C think, the TTS worker's thread is held by a job
that waits on an event; once A's later chunk and B's and C's first chunks are all queued it is
released, and the order the worker started them in is read from ``ModelWorker.started``.
Orderings only, no times. (B's second chunk may go ahead of A's later one too: it is due
when B's short first chunk has played, long before A's.)
"""

from __future__ import annotations

import asyncio
import os
import threading
import wave
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from npc_engine.client import ClientSession, EngineClient
from npc_engine.pipeline.workers import URGENT
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.outgoing import Outgoing
from npc_engine.session.session import Session
from npc_engine.turns.handle import TurnHandle, TurnOutbox
from npc_engine.turns.speech import Speakable, chunk_deadline, speak
from tests.harness import Running, engine_config, eventually, running_engine

SPEECH = Path(__file__).resolve().parent / "fixtures" / "speech" / "kokoro_af_heart_01.wav"
FRAME = 320  # 20 ms at 16 kHz

LONG_FIRST = (
    "Listen well, traveller, for I will only tell this once: the road north of the river winds past the "
    "old mill, through the birch wood where the wolves hunt after dark, over the stone bridge that the "
    "miller's grandfather built, and up the long hill to the watchtower, where the captain keeps a lantern "
    "burning every night until the bells of the chapel ring for dawn."
)
# The job names of a chunk rendered through the turn's voice chain: a reply's first chunk
# (head first where the voice can, here whole) and a later one.
SYNTH = ("synthesize_head", "synthesize")


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    # No acks (their renders would join the queue), a generous synthesis budget, so a busy
    # machine does not hand a chunk to the espeak fallback (tested elsewhere), and first chunks
    # rendered whole: turn A's long first chunk must stay one chunk (its first words going
    # first, and the rest of it due when they have played, is tests/tts/test_head_first.py's).
    cfg = engine_config(tmp_path_factory.mktemp("scheduling"), tts="kokoro", acks=False, budget_tts_chunk_ms=120_000,
                        tts_head_s=0.0)
    async with running_engine(cfg) as running:
        yield running


async def items_from(queue: asyncio.Queue[Speakable | None]) -> AsyncGenerator[Speakable, None]:
    while (item := await queue.get()) is not None:
        yield item


async def test_two_sessions_first_chunks_are_synthesized_before_another_turns_later_chunk(
    engine: Running, client: EngineClient
) -> None:
    eng = engine.engine
    worker = eng.tts_worker
    b = await client.open_session("bram", "p-sched-b", greet=False, acks=False)
    c = await client.open_session("marta", "p-sched-c", greet=False, acks=False)
    # One exchange each first: their personas are then in the LLM's cache, so their next first
    # clause comes quickly (well inside turn A's first chunk of audio).
    for s in (b, c):
        await (await s.say("Hello there.", timeout=300)).collect(timeout=300)

    sent: list[Outgoing] = []
    turn_a = TurnHandle("text", TurnOutbox(sent.append, "a", 1), user_text="Which way to the tower?")
    items: asyncio.Queue[Speakable | None] = asyncio.Queue()
    speaker = asyncio.create_task(speak(turn_a, items_from(items), eng.voice_out(eng.characters["aldric"], audio=True)))
    gate = threading.Event()
    holder: asyncio.Task[bool] | None = None
    try:
        items.put_nowait(Speakable(LONG_FIRST))
        await eventually(lambda: turn_a.delivered.chunks == 1, timeout=600, what="turn A's first chunk sent")
        assert turn_a.delivered.audio_seconds > 10, "a long first chunk: A's next one is not due for a while"

        holder = asyncio.create_task(worker.run(gate.wait))
        await eventually(lambda: worker.started[-1][1] == "wait", timeout=600, what="the TTS worker held")
        items.put_nowait(Speakable("Mind the wolves."))
        await eventually(lambda: sum(n in SYNTH for _, n in worker.waiting()) == 1, what="A's later chunk queued")
        a_due = chunk_deadline(turn_a)
        turn_b, turn_c = await b.say("What do you sell?", timeout=300), await c.say("Any news today?", timeout=300)
        await eventually(lambda: sum(n in SYNTH for _, n in worker.waiting()) == 3, timeout=300,
                         what="B's and C's first chunks queued")
        firsts = sorted(d for d, n in worker.waiting() if n in SYNTH and d != a_due)
        gate.set()
        await holder
        replies = [await t.collect(timeout=600) for t in (turn_b, turn_c)]
        items.put_nowait(None)
        await speaker
    finally:
        gate.set()
        if holder is not None:
            await holder
        if not speaker.done():
            speaker.cancel()

    names = [n for _, n in worker.started]
    after = [d for d, n in worker.started[len(names) - names[::-1].index("wait"):] if n in SYNTH]
    assert len(firsts) == 2 and all(d < a_due for d in firsts), "B's and C's first chunks are due before A's later one"
    assert after[:2] == firsts, "both first chunks went first, in the order they came"
    assert a_due in after[2:], "then A's later chunk (after any chunk due sooner: B's or C's second, say)"
    assert all(d <= a_due for d in after[: after.index(a_due)]), "nothing due later went ahead of it"
    for reply in replies:
        audio = [m for m in reply if m["type"] == "reply.audio"]
        assert audio and audio[0]["chunk"] == 0 and reply[-1]["status"] == "ok"
    assert [m.chunk for m in sent if isinstance(m, msg.ReplyAudio)] == [0, 1]


# --------------------------------------------------------------------------- the LLM yields


def nice_of(tid: int) -> int:
    """A thread's nice value, from /proc (field 19 of stat, after the command in parentheses)."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread priorities are read from Linux /proc")
async def test_llama_cpp_threads_run_below_the_voice(engine: Running) -> None:
    nice = engine.engine.cfg.llm_nice
    assert nice > 0
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    niced = [t for t in tids if nice_of(t) >= nice]
    assert niced, "llama.cpp's threads were lowered"
    assert nice_of(threading.get_native_id()) < nice, "the event loop's thread was not"
    assert len(niced) < len(tids), "nor were the voice's and the server's threads"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread priorities are read from Linux /proc")
async def test_the_later_lane_renders_at_its_lower_priority(engine: Running) -> None:
    later = engine.engine.tts_later
    assert later is not None, "on by default"
    tid = await later.run(threading.get_native_id)
    expected = min(19, nice_of(os.getpid()) + engine.engine.cfg.tts_later_nice)
    assert nice_of(tid) == expected and nice_of(threading.get_native_id()) < expected


# --------------------------------------------------------------------------- recognition


@pytest.fixture(scope="module")
async def ears(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    cfg = engine_config(tmp_path_factory.mktemp("scheduling-stt"), stt="whisper", tts="none", acks=False, preemptive=False)
    async with running_engine(cfg) as running:
        yield running


def speech() -> np.ndarray:
    with wave.open(str(SPEECH)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


async def send(session: ClientSession, pcm: np.ndarray) -> None:
    for i in range(0, len(pcm), FRAME):
        await session.send_audio(pcm[i : i + FRAME].tobytes())


def server_side(running: Running, session: ClientSession) -> Session:
    return next(s for s in running.server.registry if s.id == session.id)


async def test_a_push_to_talk_release_is_recognised_before_another_sessions_partial(ears: Running) -> None:
    client = await EngineClient.connect(ears.endpoint)
    worker = ears.engine.stt_worker
    gate = threading.Event()
    holder: asyncio.Task[bool] | None = None
    try:
        talking = await client.open_session("bram", "p-sched-talk", greet=False, audio=False, mode="push_to_talk")
        releasing = await client.open_session("marta", "p-sched-release", greet=False, audio=False, mode="push_to_talk")
        pcm = speech()
        # The talking player is cut off mid-word (the loudest 20 ms in the clip's middle): its next
        # frame is a partial's, not a silence's that might end its turn.
        frames = pcm[: len(pcm) // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
        loud = len(frames) // 4 + int(np.argmax((frames[len(frames) // 4 : len(frames) * 3 // 5] ** 2).mean(axis=1)))
        sent = {releasing.id: len(pcm) * 3 // 4, talking.id: (loud + 1) * FRAME}
        await send(releasing, pcm[: sent[releasing.id]])
        await send(talking, pcm[: sent[talking.id]])
        for s in (talking, releasing):  # every frame so far recognised (partials decoded)
            side = server_side(ears, s)

            def heard_all(side: Session = side, n: int = sent[s.id]) -> bool:
                return side.voice_input is not None and side.voice_input.detector.stream_samples >= n

            await eventually(heard_all, timeout=300, what="every frame sent recognised")
            assert side.voice_input is not None
            await asyncio.wait_for(side.voice_input.drained(), 300)
        holder = asyncio.create_task(worker.run(gate.wait))
        await eventually(lambda: worker.started[-1][1] == "wait", timeout=300, what="the STT worker held")
        await send(talking, pcm[sent[talking.id] : sent[talking.id] + FRAME])
        await eventually(lambda: worker.queued == 1, what="the partial queued")
        await releasing.end_audio()
        await eventually(lambda: worker.queued == 2, what="the release queued")
        gate.set()
        await holder
        turn = await releasing.next_turn(timeout=300)
        msgs = await turn.collect(timeout=300)
    finally:
        gate.set()
        if holder is not None:
            await holder
        await client.close()
    names = [n for _, n in worker.started]
    after = worker.started[len(names) - names[::-1].index("wait"):]
    assert [n for _, n in after[:2]] == ["_end_turn", "_feed"], after[:2]
    assert after[0][0] == URGENT and after[1][0] != URGENT, "the release went first, the partial waited"
    assert msgs[0]["source"] == "voice" and msgs[0]["input"], "the release ended the turn on what was said"
