"""A conversation between one player and one character, and the turns it is made of.

A turn streams through the stages without waiting at any boundary: LLM deltas go to the
cue parser, clean text goes out as ``reply.text`` and into the clause chunker, clauses
queue for the synthesizer, and each synthesized chunk goes out as ``reply.audio`` with its
viseme/word cues while the LLM is still writing the next clause. Cancelling a turn (a
``cancel``, a new line from the player, or barge-in) sets one event that every stage
checks, and the conversation history keeps only what the player actually got.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from npc_engine import prom
from npc_engine.characters import Character
from npc_engine.story.lines import Line
from npc_engine.metrics import TurnClock, turn_log_line
from npc_engine.pipeline.base import GenOptions, ModelError, SpeechChunk, Voice
from npc_engine.pipeline.chunker import ClauseChunker
from npc_engine.pipeline.cues import Cue, CueParser
from npc_engine.pipeline.prompt import build_messages, system_prompt
from npc_engine.protocol import ErrorCode, ProtocolError, error, out
from npc_engine.store import HistoryEntry

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], None]
async def _empty() -> AsyncIterator[str]:
    return
    yield


def effect_message(effect: Any) -> dict[str, Any]:
    """A story effect as the fields of a ``story`` message (``kind`` plus its data; lines come templated)."""
    return {k: v for k, v in effect.to_dict().items() if v is not None}


@dataclass
class Speakable:
    text: str
    cues: list[Cue] = field(default_factory=list)
    prerendered: bool = False  # a scripted line: from the line cache, no synthesis wait


def line_cues(emotion: str | None, gesture: str | None) -> list[Cue]:
    cues = [Cue("emotion", emotion)] if emotion else []
    return cues + ([Cue("gesture", gesture)] if gesture else [])


def scripted_speakable(say_line: dict[str, Any]) -> Speakable:
    """A story ``say_line`` effect (already templated) as something to speak."""
    return Speakable(say_line["text"], line_cues(say_line.get("emotion"), say_line.get("gesture")), prerendered=True)


@dataclass
class Turn:
    id: int
    source: str  # "text" | "voice" | "greeting" | "story"
    clock: TurnClock = field(default_factory=TurnClock)
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    seq: itertools.count[int] = field(default_factory=itertools.count)
    delivered: list[str] = field(default_factory=list)  # text of the audio chunks sent (what was heard)
    text_sent: list[str] = field(default_factory=list)  # reply.text deltas sent (what was read)
    tokens: int = 0
    audio_seconds: float = 0.0
    status: str = "ok"
    interrupted: bool = False
    synth: Any = None
    # Timeline of what was sent, in seconds of the turn's audio: (start, text) per word, or
    # per chunk when a voice has no word timings. Lets a late cancel trim to what was heard.
    heard_marks: list[tuple[float, str]] = field(default_factory=list)
    heard: float | None = None  # set by a cancel that says how much the player heard

    def heard_text(self, seconds: float) -> str:
        return " ".join(text for start, text in self.heard_marks if start < seconds)

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


class Session:
    def __init__(
        self,
        engine: Any,
        session_id: str,
        character: Character,
        player: str,
        send: Send,
        *,
        audio: bool = True,
        mode: str = "push_to_talk",
        speak_elsewhere: Callable[[str, list[dict[str, Any]], str | None], None] | None = None,
    ) -> None:
        self.engine = engine
        self.id = session_id
        self.character = character
        self.player = player
        self.audio = audio and engine.synth is not None
        self.mode = mode
        self._send = send
        # Story lines this session's turns trigger for *other* characters go to their sessions.
        self._speak_elsewhere = speak_elsewhere
        self.voice = Voice(character.voice.id, character.voice.speed)
        self.history: list[HistoryEntry] = []
        self.current: Turn | None = None
        self.last_turn: Turn | None = None  # the latest finished turn, for a late cancel
        self._turn_ids = itertools.count(1)
        self._line_rotation = itertools.count()
        self.closed = False
        self.voice_input: Any = None  # npc_engine.voice_input.VoiceInput, created on first audio
        self._warm: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self, vars: dict[str, Any]) -> dict[str, Any]:
        """Load memory and story state; returns the fields of ``session.opened``."""
        eng = self.engine
        self.history = await eng.store.call("load_history", self.player, self.character.id, 2 * eng.cfg.history_turns)
        state = await eng.story_state(self.player, vars)
        beat = eng.story.active_beat(state, self.character.id)
        # Evaluate the persona prompt now, off the hot path, so the first reply starts fast.
        self._warm = asyncio.get_running_loop().create_task(self._warm_llm())
        return {
            "session": self.id,
            "character": self.character.id,
            "name": self.character.name,
            "player": self.player,
            "resumed": bool(self.history),
            "beat": beat.id if beat else None,
            "audio": self.audio,
            "sample_rate": eng.synth.sample_rate if self.audio else None,
        }

    async def _warm_llm(self) -> None:
        try:
            msgs = await self._messages("Hello.")
            await self.engine.llm_worker.run(self.engine.chat.warm_up, msgs[:1], self.id)
        except Exception as exc:  # the first real turn will report it properly
            log.warning("session %s: LLM warm-up failed: %s", self.id, exc)

    async def close(self) -> None:
        self.closed = True
        if self.voice_input is not None:
            self.voice_input.close()
        await self.cancel_current(interrupted=True)

    # ------------------------------------------------------------------ voice in

    def audio_in(self, pcm: bytes) -> None:
        self._voice().push(pcm)

    def audio_end(self) -> None:
        self._voice().end()

    def _voice(self) -> Any:
        if self.engine.transcriber is None:
            raise ProtocolError(
                ErrorCode.BAD_AUDIO, "this engine runs without speech recognition (--stt none); send text instead",
                session=self.id,
            )
        if self.voice_input is None:
            from npc_engine.voice_input import VoiceInput

            self.voice_input = VoiceInput(self)
        return self.voice_input

    # ------------------------------------------------------------------ messages out

    def emit(self, type_: str, turn: Turn | None = None, **fields: Any) -> None:
        if turn is not None:
            fields["turn"] = turn.id
            fields["seq"] = next(turn.seq)
        self._send(out(type_, session=self.id, **fields))

    def send_text(self, turn: Turn, delta: str) -> None:
        if not turn.cancelled:
            turn.text_sent.append(delta)
            self.emit("reply.text", turn, delta=delta)

    def emit_error(self, code: ErrorCode, message: str, turn: Turn | None = None) -> None:
        if turn is None:
            self._send(error(ProtocolError(code, message, session=self.id)))
        else:  # inside a turn the error is one of its messages, in sequence
            self.emit("error", turn, code=code.value, message=message)

    # ------------------------------------------------------------------ turns

    def start_turn(
        self,
        source: str,
        user_text: str | None,
        clock: TurnClock | None = None,
        request_id: Any = None,
        scripted: list[Speakable] | None = None,
    ) -> Turn:
        """Start a turn now; a turn still running is cut off (the player spoke over it)."""
        previous = self.current
        if previous is not None and not previous.cancelled:
            previous.interrupted = True
            previous.cancel.set()
        turn = Turn(next(self._turn_ids), source, clock=clock or TurnClock())
        turn.synth = self.engine.synth
        if self.audio and self.engine.tts_degraded:
            turn.clock.degrade("tts", self.engine.tts_degraded)
        self.current = turn
        turn.task = asyncio.get_running_loop().create_task(self._run(turn, user_text, previous, request_id, scripted))
        return turn

    def cancel_nowait(self, turn_id: int | None = None, heard: float | None = None) -> None:
        """Cancel the running turn (or only turn ``turn_id``); its turn.end follows on its own.

        With ``heard`` (seconds of the turn's audio the player heard), memory keeps only those
        words, also for a turn the engine had already finished sending.
        """
        turn = self.current
        if turn is not None and (turn_id is None or turn.id == turn_id):
            turn.interrupted = True
            turn.heard = heard
            turn.cancel.set()
        elif heard is not None and self.last_turn is not None and turn_id in (None, self.last_turn.id):
            asyncio.get_running_loop().create_task(self._trim_heard(self.last_turn, heard))

    async def _trim_heard(self, turn: Turn, heard: float) -> None:
        if not turn.heard_marks or turn.audio_seconds <= heard:
            return  # heard it all (or nothing to go by)
        text = turn.heard_text(heard)
        last = self.history[-1] if self.history else None
        if last is None or last.role != "assistant":
            return
        self.history[-1] = HistoryEntry("assistant", text, interrupted=True)
        await self.engine.store.call("trim_last_reply", self.player, self.character.id, text)
        log.info("session %s turn %d: the player heard %.1f of %.1f s; memory trimmed", self.id, turn.id, heard, turn.audio_seconds)

    async def cancel_current(self, turn_id: int | None = None, interrupted: bool = True) -> None:
        turn = self.current
        if turn is None or (turn_id is not None and turn.id != turn_id) or turn.task is None:
            return
        turn.interrupted = interrupted
        turn.cancel.set()
        await asyncio.shield(turn.task)

    async def _run(
        self, turn: Turn, user_text: str | None, previous: Turn | None, request_id: Any, scripted: list[Speakable] | None
    ) -> None:
        if previous is not None and previous.task is not None:
            await asyncio.shield(previous.task)  # its turn.end and history go first
        self.engine.live_turns += 1
        try:
            self.emit("turn.start", turn, id=request_id, source=turn.source, input=user_text)
            if turn.cancelled:
                return  # superseded before it began: no story effects, no model work
            if turn.source == "greeting":
                await self._speak(turn, [self._scripted(self._pick(self.character.greetings))])
            elif turn.source == "story":
                assert scripted is not None
                await self._speak(turn, scripted)
                user_text = None
            else:
                assert user_text is not None
                lines = await self._story_for_line(turn, user_text)
                if lines:
                    await self._speak(turn, lines)
                else:
                    await self._reply(turn, user_text)
        except Exception as exc:
            log.exception("session %s turn %d failed", self.id, turn.id)
            turn.status = "error"
            self.emit_error(ErrorCode.INTERNAL, f"the turn failed: {exc}", turn)
        finally:
            self.engine.live_turns -= 1
            await self._finish(turn, user_text)

    async def _finish(self, turn: Turn, user_text: str | None) -> None:
        if turn.cancelled and turn.status != "error":
            turn.status = "cancelled"
        elif turn.clock.degraded and turn.status == "ok":
            turn.status = "degraded"
        turn.clock.mark("total")
        # History keeps what the player actually got before any cut: heard, or read if text-only.
        got = turn.delivered if self.audio else ["".join(turn.text_sent)]
        spoken = " ".join(t.strip() for t in got if t.strip())
        if turn.heard is not None and turn.heard_marks and turn.heard < turn.audio_seconds:
            spoken = turn.heard_text(turn.heard)
        entries = []
        if user_text:
            entries.append(HistoryEntry("user", user_text))
        if spoken:
            entries.append(HistoryEntry("assistant", spoken, interrupted=turn.interrupted))
        # The session is done with this turn *before* the game hears turn.end: a cancel (with
        # `heard`) sent right after it must find the turn finished and its reply in memory.
        self.history.extend(entries)
        if self.current is turn:
            self.current = None
        self.last_turn = turn
        self.emit(
            "turn.end",
            turn,
            status=turn.status,
            interrupted=turn.interrupted,
            text=spoken,
            timings=turn.clock.timings(),
            degraded=turn.clock.degraded or None,
            tokens=turn.tokens,
            audio_seconds=round(turn.audio_seconds, 3),
        )
        prom.turn_ended(turn)
        log.info("%s", turn_log_line(self.id, self.character.id, turn))
        if entries:
            # Queued on the store's one thread, so a later trim of this reply is written after it.
            await self.engine.store.call("append_history", self.player, self.character.id, entries)

    # ------------------------------------------------------------------ story

    async def _story_for_line(self, turn: Turn, text: str) -> list[Speakable]:
        """Apply the story to the player's line; return scripted lines this character must say."""
        eng = self.engine
        async with eng.state_lock(self.player):
            state = await eng.story_state(self.player)
            effects = eng.story.on_player_line(state, self.character.id, text)
            if effects:
                await eng.save_story_state(self.player)
        return self._apply_effects(effects, turn)

    def _apply_effects(self, effects: Iterable[Any], turn: Turn | None) -> list[Speakable]:
        """Send the story's effects to the game; return the scripted lines this character must say."""
        lines = []
        msgs = [effect_message(eff) for eff in effects]
        for msg in msgs:
            if msg["kind"] == "say_line" and msg.get("character") == self.character.id:
                lines.append(scripted_speakable(msg))
            self.emit("story", turn, **msg)
        if self._speak_elsewhere is not None:
            self._speak_elsewhere(self.player, msgs, self.character.id)
        return lines

    # ------------------------------------------------------------------ the LLM reply

    async def _messages(self, user_text: str) -> list[Any]:
        eng = self.engine
        state = await eng.story_state(self.player)
        cid = self.character.id
        revealed = [
            s.text for s in self.character.secrets if s.reveal_when and eng.story.condition_true(s.reveal_when, state, cid)
        ]
        objective = eng.story.objective(state, cid)
        facts = [f"The player's name is {state.vars['player_name']}."] if state.vars.get("player_name") else []
        system = system_prompt(self.character, objective, revealed, facts)
        return build_messages(system, self.history, user_text, eng.cfg.history_turns)

    async def _reply(self, turn: Turn, user_text: str) -> None:
        eng = self.engine
        ch = self.character
        if self._warm is not None:
            # A reply racing the warm-up would evaluate the same persona prompt twice, on
            # two llama.cpp slots, at the same time.
            await asyncio.shield(self._warm)
        messages = await self._messages(user_text)
        opts = GenOptions(max_tokens=ch.reply.max_tokens, temperature=eng.cfg.temperature)
        parser = CueParser(ch.emotions, ch.gestures, ch.actions, speaker_names=[ch.name, ch.id])
        chunker = ClauseChunker()
        queue: asyncio.Queue[Speakable | None] = asyncio.Queue()
        speaker = asyncio.get_running_loop().create_task(self._speaker(turn, queue))
        pending_cues: list[Cue] = []
        sentences = 0

        def take(parsed: Any, final: bool) -> bool:
            """Route one parsed piece; False once the reply has its sentences (stop the model)."""
            nonlocal sentences
            for bad in parsed.rejected:
                log.info("session %s: dropped cue [%s] not allowed for %s", self.id, bad, ch.id)
            pending_cues.extend(parsed.cues)
            if parsed.text:
                self.send_text(turn, parsed.text)
            clauses = chunker.feed(parsed.text) if parsed.text else []
            if final:
                clauses += chunker.flush()
            for clause in clauses:
                turn.clock.mark("first_clause")
                queue.put_nowait(Speakable(clause, pending_cues.copy()))
                pending_cues.clear()
                sentences += clause.rstrip().endswith((".", "!", "?"))
            return sentences < ch.reply.max_sentences

        stream = eng.llm_worker.stream(lambda: eng.chat.stream(messages, opts, turn.cancel, self.id), turn.cancel)
        try:
            first = await self._first_token(turn, stream)
            if first is None and not turn.cancelled:
                self._fallback(turn, queue)
            elif first is not None:
                turn.clock.mark("llm_first_token")
                turn.tokens += 1
                more = take(parser.feed(first), False)
                async for delta in stream if more else _empty():
                    turn.tokens += 1
                    if not take(parser.feed(delta), False):
                        more = False
                        break  # enough said: small models ramble past the asked length
                turn.clock.mark("llm_done")
                if more and not turn.cancelled:
                    take(parser.flush(), True)  # a reply cut at its sentence limit drops the dangling words
        except ModelError as exc:
            log.error("session %s turn %d: %s", self.id, turn.id, exc)
            turn.clock.degrade("llm", str(exc))
            code = ErrorCode.MODEL_UNAVAILABLE if exc.code == "model_unavailable" else ErrorCode.MODEL_ERROR
            self.emit_error(code, str(exc), turn)
            if not turn.cancelled:
                self._fallback(turn, queue)
        finally:
            await stream.aclose()
            queue.put_nowait(None)
            await speaker

    def _fallback(self, turn: Turn, queue: asyncio.Queue[Speakable | None]) -> None:
        """Say one of the character's scripted fallback lines instead of the model's reply."""
        if self.character.fallbacks:
            line = self._scripted(self._pick(self.character.fallbacks))
            self.send_text(turn, line.text)
            queue.put_nowait(line)

    async def _first_token(self, turn: Turn, stream: Any) -> str | None:
        """Wait for the first delta: past the budget the turn is marked degraded, past the
        hard limit it gives up (the caller speaks a fallback line). None: no reply at all."""
        cfg = self.engine.cfg
        nxt = asyncio.ensure_future(anext(stream))
        try:
            done, _ = await asyncio.wait({nxt}, timeout=cfg.budget_llm_first_token_ms / 1000)
            if not done:
                turn.clock.degrade("llm", f"no first token within the {cfg.budget_llm_first_token_ms} ms budget")
                done, _ = await asyncio.wait({nxt}, timeout=cfg.llm_timeout_ms / 1000)
            if not done:
                turn.clock.degrade("llm", f"gave up after {cfg.llm_timeout_ms} ms; fallback line")
                return None
            return nxt.result()
        except StopAsyncIteration:
            return None
        finally:
            if not nxt.done():
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt  # the stream can only be closed once this anext has let go

    # ------------------------------------------------------------------ speech out

    async def _speak(self, turn: Turn, lines: list[Speakable]) -> None:
        queue: asyncio.Queue[Speakable | None] = asyncio.Queue()
        for line in lines:
            self.send_text(turn, line.text)
            queue.put_nowait(line)
        queue.put_nowait(None)
        await self._speaker(turn, queue)

    def _scripted(self, line: Line) -> Speakable:
        state = self.engine.story_states.get(self.player)
        text = self.engine.story.fill(line.text, state) if state else line.text
        return Speakable(text, line_cues(line.emotion, line.gesture), prerendered=True)

    async def _speaker(self, turn: Turn, queue: asyncio.Queue[Speakable | None]) -> None:
        """Synthesize queued clauses in order and send each as soon as it is ready."""
        chunk_index = 0
        offset = 0.0
        while (item := await queue.get()) is not None:
            if turn.cancelled:
                continue  # drain without speaking
            if not self.audio:
                for cue in item.cues:
                    self.emit("cue", turn, kind=cue.kind, name=cue.name)
                continue
            speech = await self._synthesize(turn, item)
            if turn.cancelled:
                continue
            if speech is None:  # no voice left for this turn: the text still counts
                for cue in item.cues:
                    self.emit("cue", turn, kind=cue.kind, name=cue.name)
                turn.delivered.append(item.text)
                continue
            turn.clock.mark("tts_first_chunk")
            self.emit(
                "reply.audio",
                turn,
                chunk=chunk_index,
                pcm=speech.pcm.astype("<i2", copy=False).tobytes(),
                rate=speech.sample_rate,
                channels=1,
                format="pcm_s16le",
                start=round(offset, 4),
                duration=round(speech.duration, 4),
                text=item.text,
            )
            turn.clock.mark("first_audio_sent")
            for cue in item.cues:
                self.emit("cue", turn, kind=cue.kind, name=cue.name, chunk=chunk_index, at=0.0)
            if speech.visemes:
                self.emit(
                    "cue", turn, kind="visemes", chunk=chunk_index,
                    visemes=[{"viseme": v.label, "start": round(v.start, 4), "end": round(v.end, 4)} for v in speech.visemes],
                )
            if speech.words:
                self.emit(
                    "cue", turn, kind="words", chunk=chunk_index,
                    words=[{"word": w.label, "start": round(w.start, 4), "end": round(w.end, 4)} for w in speech.words],
                )
            turn.delivered.append(item.text)
            if speech.words:
                turn.heard_marks += [(offset + w.start, w.label) for w in speech.words]
            else:
                turn.heard_marks.append((offset, item.text))
            turn.audio_seconds += speech.duration
            offset += speech.duration
            chunk_index += 1

    async def _synthesize(self, turn: Turn, item: Speakable) -> SpeechChunk | None:
        eng = self.engine
        synth = turn.synth
        if synth is None:
            return None
        took: list[float] = []

        def timed_synthesize() -> SpeechChunk:
            t0 = time.perf_counter()  # on the TTS thread: synthesis time, not time queued
            try:
                return synth.synthesize(item.text, self.voice)
            finally:
                took.append((time.perf_counter() - t0) * 1000)

        try:
            if item.prerendered and eng.line_cache is not None and synth is eng.synth:
                return await eng.tts_worker.run(eng.line_cache.get_or_render, item.text, self.voice)
            speech = await eng.tts_worker.run(timed_synthesize)
        except Exception as exc:
            log.error("session %s turn %d: %s failed: %s", self.id, turn.id, getattr(synth, "name", "TTS"), exc)
            fallback = eng.fallback_synth
            if fallback is None or synth is fallback:
                turn.clock.degrade("tts", f"synthesis failed ({exc}); text only for the rest of the turn")
                turn.synth = None
                return None
            turn.clock.degrade("tts", f"{synth.name} failed ({exc}); espeak-ng for the rest of the turn")
            turn.synth = fallback
            return await self._synthesize(turn, item)
        took_ms = took[0] if took else 0.0
        limit_ms = max(eng.cfg.budget_tts_chunk_ms, eng.cfg.tts_max_rtf * speech.duration * 1000)
        if took_ms > limit_ms and eng.fallback_synth is not None and synth is not eng.fallback_synth:
            turn.clock.degrade(
                "tts",
                f"a {speech.duration:.1f} s chunk took {took_ms:.0f} ms to synthesize (limit {limit_ms:.0f} ms): "
                "the voice cannot keep up with playback; espeak-ng for the rest",
            )
            turn.synth = eng.fallback_synth
        return speech

    def _pick(self, lines: list[Line]) -> Line:
        return lines[next(self._line_rotation) % len(lines)]
