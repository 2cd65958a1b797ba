"""Scheduling across sessions (``pipeline/scheduling.py``, ``pipeline/workers.py``).

* A worker takes its queued jobs earliest deadline first, ties first come first served.
* Synthesis: a turn's first chunk (due now) goes ahead of another turn's later chunk (due when
  that turn's audio already sent has played), checked through ``speak`` with ``SilenceSynth``.
* Recognition: frames that may end a turn (a silence) and a push-to-talk release go ahead of
  another session's partial decode, checked through real ``VoiceInput`` sessions on the
  ``ToneTranscriber`` / ``EnergyVad`` doubles.

Every ordering is made deterministic the same way: the worker's only thread is held by a job
waiting on an event while the jobs under test queue up, then released.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from npc_engine.engine import Engine
from npc_engine.pipeline.base import SpeechChunk, Voice
from npc_engine.pipeline.chunker import ChunkerConfig, ClauseChunker
from npc_engine.pipeline.line_cache import LineCache
from npc_engine.pipeline.scheduling import (
    OPENING_LEAD_S,
    native_threads,
    on_lowered_thread,
    playback_deadline,
    played_until,
)
from npc_engine.pipeline.workers import URGENT, WHENEVER, ModelWorker
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.outgoing import Outgoing
from npc_engine.session.session import Mode, Session
from npc_engine.turns import handle, speech
from npc_engine.turns.handle import TurnHandle, TurnOutbox
from npc_engine.turns.speech import Speakable, VoiceOut, chunk_deadline, speak
from tests.doubles import EnergyVad, ScriptedChat, SilenceSynth, ToneTranscriber
from tests.unit.conftest import DEFAULT_REPLY, PLAYER, World, unit_config
from tests.unit.support import eventually

FRAME = 320  # 20 ms of 16 kHz audio, as a game sends it


@contextlib.asynccontextmanager
async def held(worker: ModelWorker) -> AsyncIterator[threading.Event]:
    """Hold the worker's only thread until the block ends (or the event is set): jobs queue."""
    gate = threading.Event()
    task = asyncio.create_task(worker.run(gate.wait))
    try:
        await eventually(lambda: bool(worker.started) and worker.started[-1][1] == "wait", what="the worker held")
        yield gate
    finally:
        gate.set()
        await task


def after_gate(worker: ModelWorker) -> list[tuple[float, str]]:
    """The jobs started after the holding one, in the order they started."""
    names = [name for _, name in worker.started]
    return worker.started[len(names) - names[::-1].index("wait"):]


# --------------------------------------------------------------------------- the worker


async def test_worker_takes_the_earliest_deadline_first_and_ties_in_arrival_order() -> None:
    worker = ModelWorker("test")
    ran: list[str] = []
    try:
        async with held(worker):
            jobs = [asyncio.create_task(worker.run_by(d, ran.append, name))
                    for d, name in [(5.0, "late"), (WHENEVER, "warm-up"), (1.0, "tie-1"), (URGENT, "final"), (1.0, "tie-2")]]
            await eventually(lambda: worker.queued == 5, what="five jobs queued")
        await asyncio.gather(*jobs)
    finally:
        worker.shutdown()
    assert ran == ["final", "tie-1", "tie-2", "late", "warm-up"]


async def test_a_job_given_up_while_queued_never_runs_and_errors_reach_the_caller() -> None:
    worker = ModelWorker("test")
    ran: list[str] = []

    def boom() -> None:
        raise ValueError("boom")

    try:
        async with held(worker):
            gone = asyncio.create_task(worker.run_by(0.0, ran.append, "gone"))
            failing = asyncio.create_task(worker.run_by(1.0, boom))
            kept = asyncio.create_task(worker.run_by(2.0, ran.append, "kept"))
            await eventually(lambda: worker.queued == 3, what="three jobs queued")
            gone.cancel()
            # The caller's cancel reaches the queued job on the loop's next pass; only once it
            # has may the held thread go free (else the job could be started first).
            with contextlib.suppress(asyncio.CancelledError):
                await gone
        await kept
        with pytest.raises(ValueError, match="boom"):
            await failing
    finally:
        worker.shutdown()
    assert ran == ["kept"]
    assert gone.cancelled()


async def test_a_shut_down_worker_cancels_what_waits_and_refuses_new_work() -> None:
    worker = ModelWorker("test")
    gate = threading.Event()
    running = asyncio.create_task(worker.run(gate.wait))
    await eventually(lambda: bool(worker.started), what="the worker busy")
    waiting = asyncio.create_task(worker.run(lambda: "never"))
    await eventually(lambda: worker.queued == 1, what="a job queued")
    worker.shutdown()
    gate.set()
    await running
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(RuntimeError, match="shut down"):
        await worker.run(lambda: "late")


async def test_a_lowered_worker_runs_its_jobs_below_the_main_threads_priority() -> None:
    def priority() -> tuple[int, bool]:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), on_lowered_thread()

    worker, plain = ModelWorker("test", nice=3), ModelWorker("test")
    try:
        lowered, plain_one = await worker.run(priority), await plain.run(priority)
    finally:
        worker.shutdown()
        plain.shutdown()
    main = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert lowered == (min(main + 3, 19), True) and plain_one == (main, False)
    assert not on_lowered_thread()


async def test_a_stream_yields_its_items_in_order_through_the_priority_queue() -> None:
    worker = ModelWorker("test")

    def numbers() -> Iterator[int]:
        yield from range(5)

    try:
        got = [n async for n in worker.stream(numbers, threading.Event())]
    finally:
        worker.shutdown()
    assert got == [0, 1, 2, 3, 4]


async def test_a_stream_still_waiting_when_the_worker_shuts_down_ends_instead_of_hanging() -> None:
    worker = ModelWorker("test")
    gate = threading.Event()
    running = asyncio.create_task(worker.run(gate.wait))
    await eventually(lambda: bool(worker.started), what="the worker busy")
    made: list[int] = []

    def numbers() -> Iterator[int]:
        made.append(1)
        yield 1

    async def consume() -> list[int]:
        return [n async for n in worker.stream(numbers, threading.Event())]

    consumer = asyncio.create_task(consume())
    await eventually(lambda: worker.queued == 1, what="the stream queued")
    worker.shutdown()
    gate.set()
    await running
    assert await asyncio.wait_for(consumer, 15) == [] and made == [], "never started, and said so"


# --------------------------------------------------------------------------- deadlines


def test_playback_deadline_is_now_before_any_audio_then_when_the_audio_sent_has_played() -> None:
    assert playback_deadline(None, now=50.0) == 50.0
    assert playback_deadline(12.5, now=50.0) == 12.5, "a turn that ran dry is overdue: earlier than now"
    assert playback_deadline(70.0, now=50.0) == 70.0


def test_audio_plays_as_a_game_plays_it_a_chunk_after_a_silence_starts_when_it_arrives() -> None:
    ack = played_until(None, now=10.0, duration_s=0.5)
    assert ack == 10.5
    # The first words 1.5 s after the ack: 1 s of silence, then they play from their arrival.
    # Counted without the silence (10.0 + 0.5 + 0.6) the turn would look dry 1 s too soon.
    first_words = played_until(ack, now=11.5, duration_s=0.6)
    assert first_words == pytest.approx(12.1)
    assert played_until(first_words, now=11.7, duration_s=2.0) == pytest.approx(14.1), "queued behind the one playing"


def test_a_replys_opening_is_due_before_a_later_sentence_unless_that_one_has_been_dry_longer_than_the_lead() -> None:
    now = 100.0
    nothing_heard = playback_deadline(None, now, opening=True)
    ack_playing = playback_deadline(now + 0.4, now, opening=True)  # an ack of 0.6 s, 0.2 s in
    dry_for_2s = playback_deadline(now - 2.0, now)  # another reply's next sentence, late
    assert nothing_heard < dry_for_2s and ack_playing < dry_for_2s
    dry_too_long = playback_deadline(now - OPENING_LEAD_S - 0.5, now)
    assert dry_too_long < nothing_heard, "a later sentence does not wait without end behind new turns"
    assert playback_deadline(12.5, now=50.0, opening=True) == 12.5 - OPENING_LEAD_S


def test_native_threads_lists_this_thread_on_linux() -> None:
    ids = native_threads()
    assert not ids or threading.get_native_id() in ids


# --------------------------------------------------------------------------- synthesis


def turn_of(session: str, sent: list[Outgoing]) -> TurnHandle:
    return TurnHandle("text", TurnOutbox(sent.append, session, 1), user_text="hello")


async def items_from(queue: asyncio.Queue[Speakable | None]) -> AsyncGenerator[Speakable, None]:
    while (item := await queue.get()) is not None:
        yield item


@dataclass
class Speakers:
    """Turns speaking through one TTS worker: put ``Speakable`` items on a turn's queue."""

    worker: ModelWorker
    turns: dict[str, TurnHandle]
    queues: dict[str, asyncio.Queue[Speakable | None]]
    sent: dict[str, list[Outgoing]]
    later: ModelWorker | None = None


@contextlib.asynccontextmanager
async def speakers(synth: SilenceSynth, names: Sequence[str], later_lane: bool = False) -> AsyncIterator[Speakers]:
    """One ``speak`` per named turn on a one-thread TTS worker (and, ``later_lane``, a lowered
    worker for later sentences while turns are crowded: always, here); at the end of the block
    each turn's items end and every turn is awaited."""
    worker = ModelWorker("tts")
    later = ModelWorker("tts-later", nice=1) if later_lane else None
    out = VoiceOut(voices=[synth], voice=Voice("af_heart"), worker=worker, later=later, crowded=lambda: True)
    sent: dict[str, list[Outgoing]] = {k: [] for k in names}
    turns = {k: turn_of(k, v) for k, v in sent.items()}
    queues: dict[str, asyncio.Queue[Speakable | None]] = {k: asyncio.Queue() for k in sent}
    tasks = [asyncio.create_task(speak(turns[k], items_from(queues[k]), out)) for k in sent]
    try:
        yield Speakers(worker, turns, queues, sent, later)
        for q in queues.values():
            q.put_nowait(None)
        await asyncio.gather(*tasks)
    finally:
        for w in (worker, later):
            if w is not None:
                w.shutdown()


@dataclass
class FakeClock:
    """A test double for ``time`` in turns/speech.py: ``perf_counter`` reads ``now``."""

    now: float

    def perf_counter(self) -> float:
        return self.now


def silence(seconds: float, text: str = "x") -> SpeechChunk:
    return SpeechChunk(text, np.zeros(int(seconds * 24000), dtype=np.int16), 24000)


def test_after_an_ack_and_a_silence_a_replys_rest_is_due_when_its_first_words_have_played(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock(100.0)
    monkeypatch.setattr(speech, "time", clock)
    a, b = turn_of("a", []), turn_of("b", [])
    speech.say_ack(a, Speakable("Hm.", ack=True), silence(0.5))
    clock.now = 101.5  # A's first words come 1.5 s after its ack: the player heard 1 s of silence
    speech.deliver(a, Speakable("Well now,"), silence(0.6))
    assert chunk_deadline(a) == pytest.approx(102.1), "A's first words play from 101.5 to 102.1"
    # B's player has heard nothing of its reply: its first words go before the rest of A's
    # opening clause, which is not dry yet (counted without the silence, it was due at 101.1,
    # and went first: N=4 players then waited for each other's whole first clauses).
    assert chunk_deadline(b, opening=True) < chunk_deadline(a, opening=True)
    clock.now = 102.5  # A's first words have played and its rest is not out: now A is dry
    assert chunk_deadline(a, opening=True) < chunk_deadline(b, opening=True)


def test_a_speculative_turns_held_audio_plays_from_its_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(100.0)
    monkeypatch.setattr(speech, "time", clock)
    monkeypatch.setattr(handle, "time", clock)
    sent: list[Outgoing] = []
    turn = TurnHandle("voice", TurnOutbox(sent.append, "a", None), user_text="hello")  # speculative
    speech.deliver(turn, Speakable("Well now,"), silence(0.6))  # rendered while the player is silent
    assert sent == [], "held until the commit"
    clock.now = 101.0  # the key is released a second later: the held chunk goes out, and plays, now
    turn.commit(1)
    assert chunk_deadline(turn) == pytest.approx(101.6)


async def test_first_chunks_of_two_turns_are_synthesized_before_another_turns_later_chunk() -> None:
    # Ten seconds of audio per word: turn A's first chunk buys it a minute, however slow the machine.
    synth = SilenceSynth("silence-a", seconds_per_word=10.0)
    async with speakers(synth, "abc") as s:
        s.queues["a"].put_nowait(Speakable("A one, two, three,"))
        await eventually(lambda: len(s.turns["a"].delivered.audio_text) == 1, what="turn A's first chunk sent")
        assert chunk_deadline(s.turns["a"]) > chunk_deadline(s.turns["b"]), "A has audio queued, B none"
        async with held(s.worker):
            s.queues["a"].put_nowait(Speakable("A later sentence."))
            await eventually(lambda: s.worker.queued == 1, what="A's later chunk queued")
            s.queues["b"].put_nowait(Speakable("B first."))
            await eventually(lambda: s.worker.queued == 2, what="B's first chunk queued")
            s.queues["c"].put_nowait(Speakable("C first."))
            await eventually(lambda: s.worker.queued == 3, what="C's first chunk queued")
    assert synth.texts == ["A one, two, three,", "B first.", "C first.", "A later sentence."]
    for sent in s.sent.values():
        audio = [m for m in sent if isinstance(m, msg.ReplyAudio)]
        assert [m.chunk for m in audio] == list(range(len(audio))), "each turn's chunks stay in order"


async def test_a_replys_first_chunk_goes_before_another_turns_later_sentence_that_ran_dry() -> None:
    # A millisecond of audio per word: turn A's first chunk has played out before its next
    # sentence is asked for, so that one is overdue; B's first chunk still goes first.
    synth = SilenceSynth("silence-a", seconds_per_word=0.001)
    async with speakers(synth, "ab") as s:
        s.queues["a"].put_nowait(Speakable("A first."))
        await eventually(lambda: len(s.turns["a"].delivered.audio_text) == 1, what="turn A's first chunk sent")
        async with held(s.worker):
            s.queues["a"].put_nowait(Speakable("A later sentence."))
            await eventually(lambda: s.worker.queued == 1, what="A's later chunk queued")
            assert chunk_deadline(s.turns["a"]) < chunk_deadline(s.turns["b"]), "A ran dry: by plain deadline it is first"
            s.queues["b"].put_nowait(Speakable("B first."))
            await eventually(lambda: s.worker.queued == 2, what="B's first chunk queued")
    assert synth.texts == ["A first.", "B first.", "A later sentence."]


async def test_while_turns_are_crowded_a_later_sentence_renders_on_its_own_lowered_worker() -> None:
    # The later lane's only thread is held: A's next sentence waits there, and B's first words
    # still go out through the TTS worker (before, they waited for whatever render was running).
    synth = SilenceSynth("silence-a", seconds_per_word=10.0)
    async with speakers(synth, "ab", later_lane=True) as s:
        later = s.later
        assert later is not None
        s.queues["a"].put_nowait(Speakable("A one, two, three,"))
        await eventually(lambda: len(s.turns["a"].delivered.audio_text) == 1, what="turn A's first chunk sent")
        async with held(later):
            s.queues["a"].put_nowait(Speakable("A later sentence."))
            await eventually(lambda: later.queued == 1, what="A's later sentence queued on the later lane")
            s.queues["b"].put_nowait(Speakable("B first."))
            await eventually(lambda: s.turns["b"].delivered.audio_text == ["B first."],
                             what="B's first words sent while the later lane is busy")
            assert s.turns["a"].delivered.audio_text == ["A one, two, three,"]
        await eventually(lambda: len(s.turns["a"].delivered.audio_text) == 2, what="A's later sentence sent")
    assert [name for _, name in after_gate(later)] == ["synthesize_head"]
    assert [name for _, name in s.worker.started] == ["synthesize_head"] * 2, "only the two first chunks"


async def test_a_later_sentence_dry_for_longer_than_the_lead_leaves_the_later_lane_for_the_voices_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A millisecond of audio per word: A's first chunk has played out at once, and with no lead
    # its next sentence is overdue on arrival. The later lane is held: it goes to the TTS worker.
    monkeypatch.setattr(speech, "OPENING_LEAD_S", 0.0)
    synth = SilenceSynth("silence-a", seconds_per_word=0.001)
    async with speakers(synth, "a", later_lane=True) as s:
        later = s.later
        assert later is not None
        s.queues["a"].put_nowait(Speakable("A first."))
        await eventually(lambda: len(s.turns["a"].delivered.audio_text) == 1, what="turn A's first chunk sent")
        async with held(later):
            s.queues["a"].put_nowait(Speakable("A later sentence."))
            await eventually(lambda: len(s.turns["a"].delivered.audio_text) == 2,
                             what="A's later sentence sent while the later lane is held")
    assert [name for _, name in after_gate(later)] == [], "never ran on the later lane"
    assert synth.texts == ["A first.", "A later sentence."]


async def test_a_scripted_line_rendered_before_is_sent_without_waiting_for_the_tts_worker(tmp_path: Path) -> None:
    synth = SilenceSynth()
    voice = Voice("af_heart")
    cache = LineCache(tmp_path / "lines", synth)
    cache.get_or_render("Speak plainly.", voice)  # pre-rendered at start-up, as fallback lines are
    worker = ModelWorker("tts")
    out = VoiceOut(voices=[synth], voice=voice, worker=worker, line_cache=cache)
    turn = turn_of("a", [])
    queue: asyncio.Queue[Speakable | None] = asyncio.Queue()
    speaker = asyncio.create_task(speak(turn, items_from(queue), out))
    try:
        async with held(worker):
            queue.put_nowait(Speakable("Speak plainly.", prerendered=True))
            await eventually(lambda: turn.delivered.audio_text == ["Speak plainly."],
                             what="the stored line sent while the worker is busy")
            queue.put_nowait(Speakable("Never said before.", prerendered=True))
            await eventually(lambda: worker.queued == 1, what="a line not rendered yet queued for the worker")
            assert turn.delivered.audio_text == ["Speak plainly."]
        queue.put_nowait(None)
        await speaker
    finally:
        worker.shutdown()
    assert turn.delivered.audio_text == ["Speak plainly.", "Never said before."]
    assert synth.texts == ["Speak plainly.", "Never said before."], "the stored line was not rendered again"


# --------------------------------------------------------------------------- recognition


@contextlib.asynccontextmanager
async def two_microphones(tmp_path: Path, world: World, mode: Mode) -> AsyncIterator[tuple[Engine, ToneTranscriber, Session, Session]]:
    characters, story = world
    ears = ToneTranscriber()
    engine = Engine.assemble(
        unit_config(tmp_path / "engine"), characters, story, ScriptedChat([DEFAULT_REPLY]),
        synth=SilenceSynth(), transcriber=ears, vad_model=EnergyVad(),
    )
    sessions = [Session(engine, f"m{i}", engine.characters["bram"], PLAYER, lambda m: None, mode=mode, preemptive=False)
                for i in (1, 2)]
    try:
        for s in sessions:
            await s.open({})
        yield engine, ears, sessions[0], sessions[1]
    finally:
        for s in sessions:
            await s.close()
        await engine.close()


def push(session: Session, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME * 2):
        session.audio_in(pcm[i : i + FRAME * 2])


async def drained(session: Session) -> None:
    assert session.voice_input is not None
    await session.voice_input.drained()


async def test_frames_of_a_silence_that_may_end_a_turn_go_ahead_of_another_sessions_partial(
    tmp_path: Path, world: World
) -> None:
    async with two_microphones(tmp_path, world, "open_mic") as (engine, ears, talking, pausing):
        # The second player spoke and is now silent (past silence_start, short of the end of turn).
        push(pausing, ears.say("Nice weather", silence_s=0.3).tobytes())
        await drained(pausing)
        push(talking, ears.say("Nice").tobytes())  # the first player is mid-sentence
        await drained(talking)
        worker = engine.stt_worker
        async with held(worker):
            talking.audio_in(ears.say("weather")[:FRAME].tobytes())
            await eventually(lambda: worker.queued == 1, what="the partial queued")
            pausing.audio_in(bytes(FRAME * 2))  # 20 ms more silence
            await eventually(lambda: worker.queued == 2, what="the silence queued")
        await drained(talking)
        await drained(pausing)
        order = after_gate(worker)
    assert [name for _, name in order] == ["_feed", "_feed"]
    assert order[0][0] == URGENT, "the silence went first"
    assert math.isfinite(order[1][0]), "the partial waited its turn"


async def test_a_push_to_talk_release_goes_ahead_of_another_sessions_partial(tmp_path: Path, world: World) -> None:
    async with two_microphones(tmp_path, world, "push_to_talk") as (engine, ears, talking, releasing):
        push(releasing, ears.say("Nice weather").tobytes())
        push(talking, ears.say("Nice").tobytes())
        await drained(releasing)
        await drained(talking)
        worker = engine.stt_worker
        async with held(worker):
            talking.audio_in(ears.say("weather")[:FRAME].tobytes())
            await eventually(lambda: worker.queued == 1, what="the partial queued")
            releasing.audio_end()
            await eventually(lambda: worker.queued == 2, what="the release queued")
        await drained(talking)
        await drained(releasing)
        order = after_gate(worker)
    assert [name for _, name in order][:2] == ["_end_turn", "_feed"]
    assert order[0][0] == URGENT


# --------------------------------------------------------------------------- the first fragment


def chunks_of(text: str) -> list[str]:
    chunker = ClauseChunker()
    return [*chunker.feed(text + " "), *chunker.flush()]


def test_the_first_fragment_is_cut_at_a_clause_once_it_is_long_enough_to_cover_the_next_render() -> None:
    # bench/first_fragment.py: "Well, traveller," (16 characters) is ~1.1 s of audio for ~0.5 s
    # of synthesis; "Hm, yes," (8) would play ~0.6 s, shorter than the next chunk takes to render.
    assert chunks_of("Well, traveller, the gate is shut until dawn.")[0] == "Well, traveller,"
    assert chunks_of("Hm, yes, the gate is shut until dawn.")[0] != "Hm, yes,"
    cfg = ChunkerConfig()
    for text in ("Hm, yes, the gate is shut.", "Oh, you, over there, come here.", "Ah, traveller, welcome."):
        first = chunks_of(text)[0]
        assert len(first) >= cfg.first_min_chars or first == text, first
