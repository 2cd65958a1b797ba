"""A conversation between one player and one character: its lifecycle and its turns.

The session schedules turns (one at a time: a new one cuts off the one running, whose
``turn.end`` still goes first), composes each turn from the stages in ``npc_engine.turns``,
and keeps the conversation's memory. Everything a turn does is stopped through its
``TurnHandle``. Microphone audio is handled by ``VoiceInput``, which reaches the session only
through the ``VoiceHooks`` protocol it implements.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Literal

from npc_engine import prom
from npc_engine.characters import Character
from npc_engine.engine import Engine
from npc_engine.metrics import TurnClock, turn_log_line
from npc_engine.pipeline.base import ChatMessage, GenOptions
from npc_engine.pipeline.cues import CueParser
from npc_engine.pipeline.prompt import build_messages, example_messages, system_prompt
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.errors import ErrorCode, ProtocolError
from npc_engine.protocol.outgoing import Outgoing, TurnSource
from npc_engine.quality.checks import CheckContext, Checker
from npc_engine.session.memory import Memory
from npc_engine.session.story import lines_by_character, story_message
from npc_engine.session.voice import VoiceInput
from npc_engine.story.lines import Line
from npc_engine.story.state import Scalar, StoryEffect
from npc_engine.tasks import BackgroundTasks
from npc_engine.turns.guard import for_turn as guard_for_turn
from npc_engine.turns.handle import TurnHandle, TurnOutbox
from npc_engine.turns.reply import Guard, LlmCall, ahead, model_reply, pass_through
from npc_engine.turns.speech import Speakable, VoiceOut, from_list, line_cues, speak

log = logging.getLogger(__name__)

Send = Callable[[Outgoing], None]
# Scripted lines a turn's story effects give to *other* characters, by character id; the
# server starts a story turn in that player's session with each of them.
RouteLines = Callable[[str, Mapping[str, list[Speakable]]], None]
Mode = Literal["push_to_talk", "open_mic"]
# Asked before a turn queues work for the model: None to go ahead, else why not (the game
# already has too many turns waiting for the model); the turn then says a fallback line.
ModelAdmission = Callable[[], str | None]


class Session:
    def __init__(
        self,
        engine: Engine,
        session_id: str,
        character: Character,
        player: str,
        send: Send,
        *,
        audio: bool = True,
        mode: Mode = "push_to_talk",
        route_lines: RouteLines | None = None,
        guard: Guard | None = None,
        model_admission: ModelAdmission | None = None,
    ) -> None:
        self.engine = engine
        self.id = session_id
        self.character = character
        self.player = player
        self.mode = mode
        self._send = send
        self._route_lines = route_lines
        self._guard = guard  # None: the real guard, built per turn (_guard_for); pass_through: none
        self.voice_out: VoiceOut = engine.voice_out(character, audio)
        self.memory = Memory(engine.store, player, character.id, engine.cfg.history_turns)
        self.current: TurnHandle | None = None
        self.last_turn: TurnHandle | None = None  # the latest finished turn, for a late cancel
        self._turn_ids = itertools.count(1)
        self._line_rotation = itertools.count()
        self._speculative: set[TurnHandle] = set()
        self._tasks = BackgroundTasks(f"session {session_id}")
        self.closed = False
        self.voice_input: VoiceInput | None = None  # created on the first audio frame
        self._warm: asyncio.Task[None] | None = None
        self._warm_started = threading.Event()  # set on the LLM thread when the warm-up reaches the model
        self._model_admission = model_admission
        self.waiting_for_model = 0  # turns of this session waiting for the model's first words
        self._holds_player = False

    @property
    def audio(self) -> bool:
        return self.voice_out.audio

    # ------------------------------------------------------------------ lifecycle

    async def open(self, vars: Mapping[str, Scalar]) -> msg.SessionOpened:
        """Load memory and story state; returns ``session.opened`` (without the request id)."""
        eng = self.engine
        # The player's story state stays in memory while the session is open (close() lets go,
        # also after a failed open): no other copy of it can be loaded meanwhile.
        if not self._holds_player:
            eng.hold_player(self.player)
            self._holds_player = True
        await self.memory.load()
        async with eng.state_lock(self.player):
            state = await eng.story_state(self.player, vars)
            if vars:  # committed before session.opened goes out: the game's vars survive a restart
                await eng.save_story_state(self.player)
        beat = eng.story.active_beat(state, self.character.id)
        # Evaluate the persona prompt now, off the hot path, so the first reply starts fast.
        self._warm = self._tasks.spawn(self._warm_llm(), "warm-up")
        return msg.SessionOpened(
            session=self.id,
            character=self.character.id,
            name=self.character.name,
            player=self.player,
            resumed=bool(self.memory.history),
            beat=beat.id if beat else None,
            audio=self.audio,
            sample_rate=self.voice_out.voices[0].sample_rate if self.audio else None,
        )

    async def _warm_llm(self) -> None:
        eng = self.engine
        try:
            messages = await self._messages("Hello.")

            def warm() -> None:
                self._warm_started.set()
                # Everything before the player's line: the persona, the example exchanges
                # and any history all stay in the slot's KV cache for the first turn.
                eng.chat.warm_up(messages[:-1], self.id)

            # Background lane: a burst of sessions opening never queues warm-ups ahead of turns.
            await eng.llm_worker.run_background(warm)
        except Exception as exc:  # the first real turn will report it properly
            log.warning("session %s: LLM warm-up failed: %s", self.id, exc)

    async def _warm_settled(self) -> None:
        """Before a turn asks the model: a warm-up evaluating the same prompt right now is
        waited for (two evaluations of one prompt at once would only slow both down); one that
        has not reached the model yet is cancelled, the turn's own call does its work."""
        warm = self._warm
        if warm is None or warm.done():
            return
        if self._warm_started.is_set():
            await asyncio.shield(warm)
        else:
            warm.cancel()

    async def close(self) -> None:
        self.closed = True
        if self._warm is not None and not self._warm_started.is_set():
            self._warm.cancel()  # a closed session's queued warm-up never reaches the model
        if self.voice_input is not None:
            await self.voice_input.close()
        for spec in list(self._speculative):
            self.drop_turn(spec)
        turn = self.current
        if turn is not None:
            turn.cancel()
            await turn.wait()
        await self._tasks.wait()
        if self._holds_player:
            self._holds_player = False
            self.engine.release_player(self.player)

    # ------------------------------------------------------------------ voice in (VoiceHooks)

    def audio_in(self, pcm: bytes) -> None:
        self._voice().push(pcm)

    def audio_end(self) -> None:
        self._voice().end()

    def _voice(self) -> VoiceInput:
        eng = self.engine
        if eng.transcriber is None or eng.vad_model is None:
            raise ProtocolError(
                ErrorCode.BAD_AUDIO, "this engine runs without speech recognition (--stt none); send text instead",
                session=self.id,
            )
        if self.voice_input is None:
            self.voice_input = VoiceInput(
                self, eng.transcriber, eng.vad_model, eng.stt_worker, eng.cfg, push_to_talk=self.mode == "push_to_talk"
            )
        return self.voice_input

    def npc_speaking(self) -> bool:
        turn = self.current
        return turn is not None and not turn.cancelled

    def barge_in(self) -> None:
        turn = self.current
        if turn is not None and not turn.cancelled:
            log.info("session %s: barge-in, the player spoke over turn %s", self.id, turn.id)
            prom.barge_in()
            turn.cancel()

    def transcript(self, text: str, final: bool, utterance: int) -> None:
        self._send(msg.Transcript(session=self.id, text=text, final=final, utterance=utterance))

    def player_turn_ended(self, text: str, clock: TurnClock) -> None:
        self.start_turn("voice", text, clock=clock)

    def report_error(self, code: ErrorCode, message: str) -> None:
        self._send(msg.Error(session=self.id, code=code.value, message=message))

    # ------------------------------------------------------------------ scheduling turns

    def start_turn(
        self,
        source: TurnSource,
        user_text: str | None,
        *,
        clock: TurnClock | None = None,
        request_id: str | int | None = None,
        scripted: Sequence[Speakable] = (),
        speculative: bool = False,
    ) -> TurnHandle:
        """Start a turn now. A real turn cuts off the one running (the player spoke over it);
        a speculative one runs beside it, silently, until ``commit_turn`` or ``drop``."""
        turn_id = None if speculative else next(self._turn_ids)
        turn = TurnHandle(
            source, TurnOutbox(self._send, self.id, turn_id), clock=clock, user_text=user_text, request_id=request_id
        )
        if self.audio and self.engine.tts_degraded:
            turn.clock.degrade("tts", self.engine.tts_degraded)
        previous = None
        if speculative:
            self._speculative.add(turn)
        else:
            previous = self._take_over(turn)
        turn.task = asyncio.get_running_loop().create_task(
            self._run(turn, previous, list(scripted)), name=f"turn {self.id}/{source}"
        )
        return turn

    async def commit_turn(self, turn: TurnHandle, decided_at: float | None = None) -> None:
        """A speculative turn becomes the conversation's next turn: the one running is cut off
        and ends first, then the speculative turn's held messages go out in order.
        ``decided_at`` (perf_counter) restarts its clock at the end-of-turn decision."""
        self._speculative.discard(turn)
        previous = self._take_over(turn)
        if previous is not None:
            await previous.wait()
        if decided_at is not None:
            turn.clock.rebase(decided_at)
        turn.commit(next(self._turn_ids))

    def drop_turn(self, turn: TurnHandle) -> None:
        """Abandon a speculative turn without a trace."""
        self._speculative.discard(turn)
        turn.drop()

    def _take_over(self, turn: TurnHandle) -> TurnHandle | None:
        previous = self.current
        if previous is not None:
            previous.cancel()
        self.current = turn
        return previous

    def cancel(self, turn_id: int | None = None, heard: float | None = None) -> None:
        """Cancel the running turn (or only turn ``turn_id``); its turn.end follows on its own.

        With ``heard`` (seconds of the turn's audio the player heard), memory keeps only those
        words, also for a turn the engine had already finished sending.
        """
        turn = self.current
        if turn is not None and (turn_id is None or turn.id == turn_id):
            turn.cancel(heard=heard)
        elif heard is not None and (last := self.last_turn) is not None and turn_id in (None, last.id):
            self._tasks.spawn(self.memory.trim_heard(last, heard), "trim-heard")

    async def cancel_and_wait(self) -> None:
        turn = self.current
        if turn is not None:
            turn.cancel()
            await turn.wait()

    # ------------------------------------------------------------------ a turn

    async def _run(self, turn: TurnHandle, previous: TurnHandle | None, scripted: list[Speakable]) -> None:
        if previous is not None:
            await previous.wait()  # its turn.end and memory go first
        self.engine.turns.enter()
        try:
            turn.emit(msg.TurnStart(id=turn.request_id, source=turn.source, input=turn.user_text))
            if turn.cancelled:
                return  # superseded before it began: no story effects, no model work
            await speak(turn, ahead(self._speakables(turn, scripted)), self.voice_out)
        except Exception as exc:
            log.exception("session %s turn %s failed", self.id, turn.id)
            turn.status = "error"
            turn.emit(msg.Error.in_turn(ErrorCode.INTERNAL, f"the turn failed: {exc}"))
        finally:
            self.engine.turns.leave()
            await self._finish(turn)

    async def _speakables(self, turn: TurnHandle, scripted: list[Speakable]) -> AsyncGenerator[Speakable, None]:
        """What the turn says, by source: a greeting, story lines, or the answer to the player."""
        if turn.source == "greeting":
            lines = [self._scripted(self._pick(self.character.greetings))]
        elif turn.source == "story":
            lines = scripted
        else:
            assert turn.user_text is not None
            lines = await self._story_for_line(turn, turn.user_text)
            if turn.cancelled:
                return
            if not lines:
                async for item in self._model_reply(turn, turn.user_text):
                    yield item
                return
        async for item in from_list(lines, on_each=lambda s: self._send_text(turn, s.text)):
            yield item

    def _send_text(self, turn: TurnHandle, text: str) -> None:
        if not turn.cancelled:
            turn.delivered.text_sent.append(text)
            turn.emit(msg.ReplyText(delta=text))

    async def _finish(self, turn: TurnHandle) -> None:
        if not await turn.decided():
            return  # a dropped speculative turn: no turn.end, no memory
        if turn.cancelled and turn.status != "error":
            turn.status = "cancelled"
        elif turn.clock.degraded and turn.status == "ok":
            turn.status = "degraded"
        # Recorded in memory, then committed, *before* the game hears turn.end: a turn the game
        # saw end is on disk even if the engine is killed right after. Until turn.end goes out
        # this is still the current turn, so a turn cutting in waits for it (turn.end first), and
        # a cancel landing meanwhile is taken as a cancel of a turn that had ended: it stops
        # nothing, and its `heard` trims the reply remembered.
        entries = self.memory.remember(turn, audio=self.audio)
        interrupted, heard = turn.interrupted, turn.heard
        text = entries[-1].content if entries and entries[-1].role == "assistant" else ""
        try:
            await self.memory.persist(entries)
            if text and turn.heard is not None and turn.heard != heard:
                await self.memory.trim_heard(turn, turn.heard)
                text = self.memory.history[-1].content  # this turn's reply, trimmed or not
        except Exception as exc:  # still ended for the game, which learns it was not saved
            log.exception("session %s turn %s: its history could not be saved", self.id, turn.id)
            turn.status = "error"
            turn.emit(msg.Error.in_turn(ErrorCode.INTERNAL, f"the turn could not be saved: {exc}"))
        turn.interrupted = interrupted
        # The session is done with this turn *before* the game hears turn.end: a cancel (with
        # `heard`) sent right after it must find the turn finished and its reply in memory.
        if self.current is turn:
            self.current = None
        self.last_turn = turn
        turn.clock.mark("total")
        got = turn.delivered
        turn.emit(msg.TurnEnd(
            status=turn.status,
            interrupted=interrupted,
            text=text,
            timings=turn.clock.timings(),
            degraded=turn.clock.degraded or None,
            guard=turn.guard_report or None,
            tokens=got.tokens,
            audio_seconds=round(got.audio_seconds, 3),
        ))
        prom.turn_ended(turn)
        log.info("%s", turn_log_line(self.id, self.character.id, turn))

    # ------------------------------------------------------------------ story

    async def _story_for_line(self, turn: TurnHandle, text: str) -> list[Speakable]:
        """Apply the story to the player's line; return scripted lines this character must say.

        A speculative turn changes nothing: if the line would move the story, it waits to be
        committed before applying it (a dropped turn leaves the story as it was)."""
        eng = self.engine
        if turn.cancelled:
            return []  # dropped or cut off before the story was touched: leave it as it was
        if turn.speculative:
            probe = (await eng.story_state(self.player)).copy()
            if eng.story.on_player_line(probe, self.character.id, text) and not await turn.decided():
                return []
        async with eng.state_lock(self.player):
            state = await eng.story_state(self.player)
            effects = eng.story.on_player_line(state, self.character.id, text)
            if effects:
                await eng.save_story_state(self.player)
        return self.apply_effects(effects, turn)

    def apply_effects(self, effects: Sequence[StoryEffect], turn: TurnHandle) -> list[Speakable]:
        """Send the story's effects in the turn; return the lines this character says in it.
        Lines for other characters go to their sessions."""
        for effect in effects:
            turn.emit(story_message(effect))
        lines = lines_by_character(effects)
        mine = lines.pop(self.character.id, [])
        if lines and self._route_lines is not None:
            self._route_lines(self.player, lines)
        return mine

    # ------------------------------------------------------------------ the model's reply

    async def _messages(self, user_text: str) -> list[ChatMessage]:
        eng = self.engine
        state = await eng.story_state(self.player)
        cid = self.character.id
        revealed = [
            s.text for s in self.character.secrets if s.reveal_when and eng.story.condition_true(s.reveal_when, state, cid)
        ]
        objective = eng.story.objective(state, cid)
        name = state.vars.get("player_name")
        system = system_prompt(self.character, objective, revealed, player_name=str(name) if name else None)
        return build_messages(
            system, self.memory.history, user_text, eng.cfg.history_turns, example_messages(self.character)
        )

    async def _model_reply(self, turn: TurnHandle, user_text: str) -> AsyncGenerator[Speakable, None]:
        """The model's answer; or, when this game already has as many turns waiting for the
        model as it may, a fallback line at once (queueing more would only make every one of
        its players wait longer)."""
        refused = self._model_admission() if self._model_admission is not None else None
        if refused is not None:
            turn.clock.degrade("llm", f"{refused}; fallback line")
            if (line := self._fallback()) is not None:
                self._send_text(turn, line.text)
                yield line
            return
        self.waiting_for_model += 1
        waiting = True
        try:
            async for item in model_reply(
                turn, await self._llm_call(user_text), self._cue_parser(),
                self.character.reply.max_sentences, self._fallback, await self._guard_for(turn, user_text),
            ):
                if waiting:
                    waiting = False
                    self.waiting_for_model -= 1
                yield item
        finally:
            if waiting:
                self.waiting_for_model -= 1

    async def _llm_call(self, user_text: str) -> LlmCall:
        eng = self.engine
        return LlmCall(
            chat=eng.chat,
            worker=eng.llm_worker,
            messages=await self._messages(user_text),
            options=GenOptions(
                max_tokens=self.character.reply.max_tokens,
                temperature=eng.cfg.temperature,
                repeat_penalty=eng.cfg.repeat_penalty,
                repeat_last_n=eng.cfg.repeat_last_n,
                dry_multiplier=eng.cfg.dry_multiplier,
            ),
            affinity=self.id,
            first_token_budget_ms=eng.cfg.budget_llm_first_token_ms,
            first_token_limit_ms=eng.cfg.llm_timeout_ms,
            ready=self._warm_settled,
        )

    def _cue_parser(self) -> CueParser:
        ch = self.character
        return CueParser(ch.emotions, ch.gestures, ch.actions, speaker_names=[ch.name, ch.id])

    def _fallback(self) -> Speakable | None:
        """One of the character's scripted fallback lines, said instead of the model's reply."""
        return self._scripted(self._pick(self.character.fallbacks)) if self.character.fallbacks else None

    async def _guard_for(self, turn: TurnHandle, user_text: str) -> Guard:
        """This turn's guard: the checks in this story state (the secrets not yet tellable),
        against this conversation (earlier replies, the player's line)."""
        if self._guard is not None:
            return self._guard
        eng = self.engine
        if not eng.cfg.guard:
            return pass_through
        ch = self.character
        state = await eng.story_state(self.player)
        hidden = [s for s in ch.secrets if not (s.reveal_when and eng.story.condition_true(s.reveal_when, state, ch.id))]
        name = state.vars.get("player_name")
        ctx = CheckContext.for_character(
            ch,
            other_names=[n for o in eng.characters.values() if o.id != ch.id for n in (o.name, o.id)],
            player_name=str(name) if name else None,
            hidden=hidden,
            earlier=self._earlier_replies(),
            player_line=user_text,
        )
        return guard_for_turn(
            turn, Checker(ctx), deflection=self._deflection, fallback=self._fallback, hold=eng.cfg.guard_hold,
            max_sentences=ch.reply.max_sentences,
        )

    def _earlier_replies(self) -> list[str]:
        return [h.content for h in self.memory.history if h.role == "assistant" and h.content]

    def _deflection(self) -> Speakable | None:
        """One of the character's deflection lines (said instead of a reply the guard stopped),
        preferring one the player has not just heard."""
        lines = self.character.deflections or self.character.fallbacks
        if not lines:
            return None
        recent = set(self._earlier_replies()[-len(lines):])
        for _ in range(len(lines)):
            line = self._scripted(self._pick(lines))
            if line.text not in recent:
                return line
        return line

    def _scripted(self, line: Line) -> Speakable:
        state = self.engine.story_states.get(self.player)
        text = self.engine.story.fill(line.text, state) if state else line.text
        return Speakable(text, line_cues(line.emotion, line.gesture), prerendered=True)

    def _pick(self, lines: list[Line]) -> Line:
        return lines[next(self._line_rotation) % len(lines)]

