"""The last stages of a turn: synthesize each speakable and send it with its cues.

``speak`` consumes ``Speakable`` items in order. For each it renders audio (through the turn's
``FallbackSynthesizer``, on the TTS thread) and sends ``reply.audio`` followed by that chunk's
cues, visemes and word timings: the one place a chunk's messages are put together. In a
text-only session (or once no voice is left) only the emotion/gesture/action cues go out.

``say_ack`` sends a pre-rendered acknowledgement ("Hm.") the same way, outside that order: it
is handed to ``TurnHandle.offer_ack`` and goes out when the turn is decided, if no audio of the
reply has gone out yet. Chunk numbers and offsets live in the turn (``Delivered``), so the
reply's chunks simply follow it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from typing_extensions import TypeVarTuple, Unpack

from npc_engine.pipeline.base import SpeechChunk, Synthesizer, Voice
from npc_engine.pipeline.cues import Cue
from npc_engine.pipeline.line_cache import LineCache
from npc_engine.pipeline.scheduling import OPENING_LEAD_S, playback_deadline, played_until
from npc_engine.pipeline.tts_fallback import FallbackSynthesizer, NoVoiceLeft, SynthBudget
from npc_engine.pipeline.workers import ModelWorker
from npc_engine.protocol import outgoing as msg
from npc_engine.turns.handle import TurnHandle

log = logging.getLogger(__name__)
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(slots=True)
class Speakable:
    """A piece of the reply ready for the voice: clean text and the cues that go with it."""

    text: str
    cues: list[Cue] = field(default_factory=list)
    prerendered: bool = False  # a scripted line: from the line cache, no synthesis wait
    ack: bool = False  # an acknowledgement said before the reply (reply.audio ``ack: true``)


def line_cues(emotion: str | None, gesture: str | None) -> list[Cue]:
    cues = [Cue("emotion", emotion)] if emotion else []
    return cues + ([Cue("gesture", gesture)] if gesture else [])


@dataclass
class VoiceOut:
    """Everything a turn needs to speak: its voice chain (empty: text only) and where it runs."""

    voices: Sequence[Synthesizer]
    voice: Voice
    worker: ModelWorker
    # Where a reply's later sentence renders while ``crowded`` (another turn live): a thread
    # of its own at a lower priority (``EngineConfig.tts_later_nice``, scheduling.py).
    later: ModelWorker | None = None
    crowded: Callable[[], bool] = lambda: False
    budget: SynthBudget = field(default_factory=SynthBudget)
    line_cache: LineCache | None = None

    @property
    def audio(self) -> bool:
        return bool(self.voices)

    def for_turn(self) -> FallbackSynthesizer:
        return FallbackSynthesizer(self.voices, self.budget)


def chunk_deadline(turn: TurnHandle, *, opening: bool = False) -> float:
    """When this turn's playback runs dry (``scheduling.playback_deadline``): now if no audio of
    it has gone out, else when the audio sent (an ack's included) has played, silences between
    chunks counted. ``opening``: a chunk of the reply's first words, due sooner (``OPENING_LEAD_S``)."""
    return playback_deadline(turn.delivered.dry_at, time.perf_counter(), opening=opening)


def reply_unheard(turn: TurnHandle) -> bool:
    """No audio of the reply's own has gone out yet (an ack aside): the player waits for it."""
    return "first_audio_sent" not in turn.clock.marks


async def synthesize(turn: TurnHandle, out: VoiceOut, chain: FallbackSynthesizer, item: Speakable) -> SpeechChunk | None:
    """Render one item; None once no voice is left (the turn goes on as text)."""
    if chain.current is None:
        return None
    try:
        # Across sessions, the chunk whose playback runs dry first goes first.
        due = chunk_deadline(turn, opening=reply_unheard(turn))
        if item.prerendered and out.line_cache is not None and chain.on_primary:
            # Rendered before (authored lines are, at start-up): read at once, not after a
            # place in the TTS queue (a fallback line at its budget waited ~1 s there at N=4).
            stored = await asyncio.to_thread(out.line_cache.stored, item.text, out.voice)
            if stored is not None:
                return stored
            return await out.worker.run_by(due, out.line_cache.get_or_render, item.text, out.voice)
        return await out.worker.run_by(due, chain.synthesize, item.text, out.voice)
    except NoVoiceLeft:
        return None
    except Exception as exc:  # the line cache's voice failed: the chain takes over from here
        log.error("turn %s: cached line failed to render: %s", turn.id, exc)
        return await synthesize(turn, out, chain, Speakable(item.text, item.cues))
    finally:
        for reason in chain.take_degradations():
            turn.clock.degrade("tts", reason)


def emit_cues(turn: TurnHandle, cues: Sequence[Cue], chunk: int | None = None) -> None:
    for cue in cues:
        turn.emit(msg.Cue(kind=cue.kind, name=cue.name, chunk=chunk, at=0.0 if chunk is not None else None))


def emit_chunk(turn: TurnHandle, index: int, offset: float, item: Speakable, speech: SpeechChunk) -> None:
    """``reply.audio`` then its cues, visemes and words: the order docs/protocol.md promises."""
    turn.emit(msg.ReplyAudio(
        chunk=index,
        pcm=speech.pcm.astype("<i2", copy=False).tobytes(),
        rate=speech.sample_rate,
        start=round(offset, 4),
        duration=round(speech.duration, 4),
        text=item.text,
        ack=item.ack,
    ))
    # The ack has its own mark: first_audio_sent stays the reply's first audio, after its
    # first token and clause (the order docs/protocol.md section 11 promises).
    turn.clock.mark("ack_sent" if item.ack else "first_audio_sent")
    emit_cues(turn, item.cues, chunk=index)
    if speech.visemes:
        turn.emit(msg.Cue.track("visemes", index, [msg.Span(label=v.label, start=v.start, end=v.end) for v in speech.visemes]))
    if speech.words:
        turn.emit(msg.Cue.track("words", index, [msg.Span(label=w.label, start=w.start, end=w.end) for w in speech.words]))


def deliver(turn: TurnHandle, item: Speakable, speech: SpeechChunk) -> None:
    """Send one chunk as the turn's next and record it as heard (memory, a late cancel's trim)."""
    got = turn.delivered
    emit_chunk(turn, got.chunks, got.audio_seconds, item, speech)
    got.audio_text.append(item.text)
    if speech.words:
        got.heard_marks += [(got.audio_seconds + w.start, w.label) for w in speech.words]
    else:
        got.heard_marks.append((got.audio_seconds, item.text))
    got.audio_seconds += speech.duration
    got.dry_at = played_until(got.dry_at, time.perf_counter(), speech.duration)
    got.chunks += 1


def say_ack(turn: TurnHandle, item: Speakable, speech: SpeechChunk) -> None:
    """An acknowledgement as the turn's first chunk: its ``reply.text`` (ahead of the reply's
    text, which may already be held in a speculative turn), then ``reply.audio`` with
    ``ack: true`` and its visemes and words. Called by ``TurnHandle.offer_ack``."""
    delta = item.text.rstrip() + " "  # the reply's text follows it
    turn.delivered.text_sent.insert(0, delta)
    turn.emit(msg.ReplyText(delta=delta))
    deliver(turn, item, speech)


async def speak(turn: TurnHandle, items: AsyncGenerator[Speakable, None], out: VoiceOut) -> None:
    """Synthesize items in order and send each as soon as it is ready; what was sent is recorded."""
    chain = out.for_turn()
    async with aclosing(items):
        async for item in items:
            if turn.cancelled:
                continue  # drain without speaking: the producer stops on its own
            if not out.audio:
                emit_cues(turn, item.cues)
                continue
            if not item.prerendered and not item.ack:
                # The reply's first words of its own (an ack aside): the player is waiting for them.
                await _speak_head_first(turn, out, chain, item, opens=reply_unheard(turn))
                continue
            speech = await synthesize(turn, out, chain, item)
            if turn.cancelled:
                continue
            if speech is None:  # no voice left for this turn: the text still counts
                _unvoiced(turn, item)
                continue
            turn.clock.mark("tts_first_chunk")
            deliver(turn, item, speech)


async def _speak_head_first(turn: TurnHandle, out: VoiceOut, chain: FallbackSynthesizer, item: Speakable,
                            *, opens: bool) -> None:
    """A chunk of the model's reply, its first words voiced first where the voice can
    (``HeadFirst``: Kokoro renders about half a second of them, then the rest of the clause as
    the next chunk, due when the first has played): always for the reply's first chunk
    (``opens``: the player is waiting), and for a later one only if it would not be ready
    whole by the time the audio before it has played (a long sentence after "Dear!")."""
    if chain.current is None:
        _unvoiced(turn, item)
        return
    due = chunk_deadline(turn)
    later = not opens and out.later is not None and out.crowded()
    head = await _voiced(turn, chain, _render(out, later, chunk_deadline(turn, opening=opens), chain.synthesize_head,
                                              item.text, out.voice, None if opens else due))
    if turn.cancelled:
        return
    if head is None:
        _unvoiced(turn, item)
        return
    turn.clock.mark("tts_first_chunk")
    if head.rest is None:
        deliver(turn, item, head.chunk)
        return
    deliver(turn, Speakable(head.chunk.text, item.cues), head.chunk)
    # The rest of an opening clause is still its opening: a pause mid-clause is the worst kind.
    rest = await _voiced(turn, chain, _render(out, later, chunk_deadline(turn, opening=opens), head.rest))
    if turn.cancelled:
        return
    if rest is None:
        _unvoiced(turn, Speakable(head.rest_text))
        return
    deliver(turn, Speakable(head.rest_text), rest)


async def _render(out: VoiceOut, later: bool, due: float, fn: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
    """``fn(*args)`` on the voice's thread by ``due``; or, ``later``, on the later thread
    (``VoiceOut.later``, below the LLM) while it is queued there until its playback has been
    dry for ``OPENING_LEAD_S``: then on the voice's thread after all, in deadline order (a
    later sentence behind a stream of others' on one low thread would otherwise wait without
    bound: 10-12 s pauses mid-reply at N=4)."""
    if not later or out.later is None:
        return await out.worker.run_by(due, fn, *args)
    job = out.later.submit(due, lambda: fn(*args), getattr(fn, "__name__", None))
    ran = asyncio.wrap_future(job)
    try:
        done, _ = await asyncio.wait([ran], timeout=max(0.0, due + OPENING_LEAD_S - time.perf_counter()))
        if not done and job.cancel():  # still queued: it never runs there
            return await out.worker.run_by(due, fn, *args)
        return await ran
    finally:
        ran.cancel()  # the turn stopped meanwhile: a job still queued never runs (done: no-op)


async def _voiced(turn: TurnHandle, chain: FallbackSynthesizer, job: Awaitable[T]) -> T | None:
    """``job``'s result, None once no voice is left; the chain's fallbacks go into ``turn.end``."""
    try:
        return await job
    except NoVoiceLeft:
        return None
    finally:
        for reason in chain.take_degradations():
            turn.clock.degrade("tts", reason)


def _unvoiced(turn: TurnHandle, item: Speakable) -> None:
    """No voice left for this item: its cues still go out, and its text counts as said."""
    emit_cues(turn, item.cues)
    turn.delivered.audio_text.append(item.text)


async def from_list(items: Sequence[Speakable], on_each: Callable[[Speakable], None] | None = None) -> AsyncGenerator[Speakable, None]:
    """Scripted lines as a stage input (greetings, story lines, fallbacks)."""
    for item in items:
        if on_each is not None:
            on_each(item)
        yield item
