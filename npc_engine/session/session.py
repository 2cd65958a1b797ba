"""A conversation between one player and one character: its lifecycle and its turns.

The session schedules turns (one at a time: a new one cuts off the one running, whose
``turn.end`` still goes first), composes each turn from the stages in ``npc_engine.turns``,
and keeps the conversation's memory. Everything a turn does is stopped through its
``TurnHandle``. Microphone audio is handled by ``VoiceInput``, which reaches the session only
through the ``VoiceHooks`` protocol it implements.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Literal

from npc_engine import prom
from npc_engine.characters import Character
from npc_engine.engine import Engine
from npc_engine.facts import extract_told, fact_lines, learned_from_effects, told_name
from npc_engine.metrics import TurnClock, turn_log_line
from npc_engine.pipeline.base import ChatMessage, GenOptions, PromptUsage
from npc_engine.pipeline.cues import CueParser
from npc_engine.pipeline.prompt import build_messages, example_messages, keep_cached_system, persona_prompt
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.errors import ErrorCode
from npc_engine.protocol.outgoing import Outgoing, TurnSource
from npc_engine.quality.checks import CheckContext, Checker
from npc_engine.session.floor import Floor
from npc_engine.session.memory import Memory
from npc_engine.session.story import story_lines, story_message
from npc_engine.session.voice import VoiceInput, microphone
from npc_engine.session.warm import WarmGate, WarmTarget, warm_steps
from npc_engine.store import Fact
from npc_engine.story.lines import Line
from npc_engine.story.state import Scalar, StoryEffect, StoryState
from npc_engine.tasks import BackgroundTasks
from npc_engine.turns.acks import AckPicker
from npc_engine.turns.guard import for_turn as guard_for_turn
from npc_engine.turns.handle import TurnHandle, TurnOutbox
from npc_engine.turns.reply import Guard, LlmCall, ahead, model_reply, pass_through
from npc_engine.turns.speech import Speakable, VoiceOut, from_list, line_cues, say_ack, speak

log = logging.getLogger(__name__)

Send = Callable[[Outgoing], None]
# Scripted lines a turn's story effects give to *other* characters, in order, with who says
# each; the server starts a story turn in the session (or scene) of each of them.
RouteLines = Callable[[str, Sequence[tuple[str, Speakable]]], None]
Mode = Literal["push_to_talk", "open_mic"]
# Asked before a turn queues work for the model: None to go ahead, else why not (the game
# already has too many turns waiting for the model); the turn then says a fallback line.
ModelAdmission = Callable[[], str | None]
# Called when a turn has been remembered, before its turn.end goes out: a scene tells the
# other characters present what was said (so it is on disk before the game sees the end).
TurnEnded = Callable[["Session", TurnHandle, str], Awaitable[None]]
# Who else is there when the player speaks (a scene's characters; None: one-to-one).
Present = Callable[[], Sequence[str]]
# Turns whose "player line" is an instruction to the model, not the player's words.
PROMPTED: frozenset[TurnSource] = frozenset({"reaction", "banter"})


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
        preemptive: bool = True,
        acks: bool = False,
        floor: Floor | None = None,
        affinity: str | None = None,
        on_turn_end: TurnEnded | None = None,
        present: Present | None = None,
    ) -> None:
        """``acks``: say an acknowledgement when a reply is not ready at the end of the player's
        turn (session.open's ``acks``; the server passes the game's choice, on by default).

        A scene's character (``npc_engine.scene``) shares the scene's ``floor`` and id, and has
        its own ``affinity`` (its llama.cpp slot, so each character keeps its KV cache)."""
        self.engine = engine
        self.id = session_id
        self.affinity = affinity or session_id
        self.floor = floor or Floor()
        self._on_turn_end = on_turn_end
        self._present = present
        self.character = character
        self.player = player
        self.mode = mode
        # Voice turns: start the reply when the player falls silent (session.open, engine config).
        self.preemptive = preemptive and engine.cfg.preemptive
        self._send = send
        self._route_lines = route_lines
        self._guard = guard  # None: the real guard, built per turn (_guard_for); pass_through: none
        self.voice_out: VoiceOut = engine.voice_out(character, audio)
        # Acks are audio: a text-only session, or a character without any, has none; the engine's
        # `acks` setting (off in the --baseline preset) overrides the session's choice.
        self.acks = (acks and engine.cfg.acks and self.voice_out.audio and bool(character.acks)
                     and engine.line_cache is not None)
        self._ack_picker = AckPicker(character.acks)
        self._pin_acks: asyncio.Task[None] | None = None
        self.memory = Memory(engine.store, player, character.id, engine.cfg.history_turns, engine.cfg.history_block)
        self._line_rotation = itertools.count()
        self._speculative: set[TurnHandle] = set()
        self._tasks = BackgroundTasks(f"session {session_id}")
        self.closed = False
        self.voice_input: VoiceInput | None = None  # created on the first audio frame
        self._warm: asyncio.Task[None] | None = None
        self._warm_gate = WarmGate()  # the latest warm-up's: has it reached the model?
        self._warm_next: WarmTarget | None = None  # what the running warm-up goes on to warm
        self._prepared_at = -1  # the history's length when prepare() last warmed it
        # The prompt this conversation's KV cache holds (the latest request on its slot, a
        # turn's or a warm-up's): a turn's end warms the next prompt when it no longer starts so.
        self._cached_prompt: list[ChatMessage] = []
        # The warm-ups that reached the model, and their prompt tokens all told (tests and
        # bench/prompt_cache.py read them): the work that a turn after a trim no longer shows
        # in its turn.end.prompt_tokens_evaluated.
        self.warm_ups = 0
        self.warmed = PromptUsage()
        self._model_admission = model_admission
        self.waiting_for_model = 0  # turns of this session waiting for the model's first words
        self._holds_player = False
        self._holds_facts = False
        self._fact_writes: list[asyncio.Task[None]] = []  # facts a turn learned, not yet on disk

    @property
    def audio(self) -> bool:
        return self.voice_out.audio

    @property
    def current(self) -> TurnHandle | None:
        """The running turn on this conversation's floor (in a scene, maybe another character's)."""
        return self.floor.current

    @property
    def last_turn(self) -> TurnHandle | None:
        return self.floor.last_turn

    @property
    def warming(self) -> bool:
        """A warm-up is queued or on the model (a test waits it out, as a player listening would)."""
        return self._warm is not None and not self._warm.done()

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
        if not self._holds_facts:  # what the character knows of the player stays in memory while open
            self._holds_facts = True
            await eng.facts.hold(self.player, self.character.id)
        async with eng.state_lock(self.player):
            state = await eng.story_state(self.player, vars)
            if vars:  # committed before session.opened goes out: the game's vars survive a restart
                await eng.save_story_state(self.player)
        beat = eng.story.active_beat(state, self.character.id)
        # Evaluate the persona prompt now, off the hot path, so the first reply starts fast.
        self._start_warm(only_if_changed=False)
        if self.acks:
            self._pin_acks = self._tasks.spawn(self._pin_ack_audio(), "pin-acks")
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

    def _start_warm(self, *, only_if_changed: bool) -> None:
        """Evaluate the next turn's prompt up to the player's line in the background: at open,
        and at a turn's end if that prompt no longer starts with what the cache holds."""
        self._warm_toward(WarmTarget(only_if_changed=only_if_changed))

    def _warm_toward(self, target: WarmTarget) -> None:
        """Warm ``target``'s prompt: a new warm-up, or the running one's next target, taken up
        after its step on the model (its prompt is the beginning of the new one, so that step
        was not wasted; closing and starting another would have to wait for it anyway)."""
        if self._warm is not None and not self._warm.done() and not self._warm_gate.closed:
            self._warm_next = target
            return
        self._warm_next = None
        self._warm_gate = gate = WarmGate()
        self._warm = self._tasks.spawn(self._warm_llm(gate, target), "warm-up")

    async def _warm_prompt(self, target: WarmTarget) -> list[ChatMessage]:
        # Everything before the player's line: the persona, the example exchanges and the
        # history up to the last reply all stay in the slot's KV cache for the next turn.
        # In a scene, lines it overheard since then come with the player's next line, in
        # the same message: ``overheard`` evaluates them too, the line left empty. With
        # ``line`` (the words heard so far), the line's beginning too.
        if target.line is not None:
            return await self._messages(target.line)
        if target.overheard:
            return await self._messages("")
        return (await self._messages("Hello."))[:-1]

    async def _warm_llm(self, gate: WarmGate, target: WarmTarget) -> None:
        eng = self.engine
        done = PromptUsage()  # tokens: the last prompt warmed; evaluated: over all steps
        try:
            while True:
                messages = await self._warm_prompt(target)
                if target.only_if_changed and not self._cache_lost(messages):
                    messages = []  # the next turn evaluates only the last reply and its line anyway
                cached = self._cached_prompt
                # In steps (warm.py): a turn that comes meanwhile waits for one, not for all.
                steps = warm_steps(messages, cached) if messages else []
                for n, step in enumerate(steps, start=1):
                    if gate.closed:
                        # A turn waits for this task to end (its step was on the model): it
                        # must not wait again behind other sessions' background work.
                        log.debug("session %s: warm-up stopped after %d of %d steps", self.id, n - 1, len(steps))
                        return
                    if self._warm_next is not None:
                        break  # a newer prompt to warm (the player turned to it, is speaking)
                    usage = PromptUsage()

                    def warm(step: list[ChatMessage] = step, usage: PromptUsage = usage) -> bool:
                        if not gate.enter():
                            return False
                        try:
                            # The session's affinity: the turns' slot, so its KV cache is what they reuse.
                            eng.chat.warm_up(step, self.affinity, usage)
                        finally:
                            gate.leave()
                        return True

                    # Background lane: a burst of sessions opening never queues warm-ups ahead
                    # of turns; and between two steps a turn of any session goes first.
                    if not await eng.llm_worker.run_background(warm):
                        log.debug("session %s: warm-up stopped after %d of %d steps", self.id, n - 1, len(steps))
                        return  # a turn (or closing) came: it evaluates the rest itself
                    if self._cached_prompt is cached:  # else a turn's call, queued behind it, holds the slot now
                        self._cached_prompt = cached = step
                    done.tokens = usage.tokens
                    done.evaluated += usage.evaluated
                if self._warm_next is None:
                    return
                target, self._warm_next = self._warm_next, None
        except Exception as exc:  # the first real turn will report it properly
            log.warning("session %s: LLM warm-up failed: %s", self.id, exc)
        finally:
            if gate.started:
                self.warm_ups += 1
                self.warmed.tokens += done.tokens
                self.warmed.evaluated += done.evaluated
                log.debug("session %s: warmed the prompt, %d of %d tokens evaluated", self.id, done.evaluated, done.tokens)

    def _cache_lost(self, upcoming: list[ChatMessage]) -> bool:
        """Whether the next prompt (``upcoming``: up to the player's line) drops part of what
        the KV cache holds: the history lost a block at its front, or the system prompt changed
        (a fact, the objective, a beat). Between trims the cached prompt is the next one's
        beginning but for its last message (the player's line, or an ack the reply went on
        from), which is remembered again with the reply: no loss worth a warm-up."""
        cached = self._cached_prompt
        return not cached or upcoming[: len(cached) - 1] != cached[:-1]

    def prepare(self) -> None:
        """A scene: the player is about to speak to this character (turns to it, or is speaking
        a line that goes to it so far). Have the lines it overheard since it last spoke evaluated
        now, in the background lane (prompt only, no generation), so its answer evaluates just
        the line."""
        history = self.memory.history
        if self.closed or not self.engine.cfg.warm_next_prompt or self._prepared_at == len(history):
            return
        if not history or history[-1].role != "user":
            return  # nothing overheard since it last spoke: its cache already holds everything
        self._prepared_at = len(history)
        self._warm_toward(WarmTarget(overheard=True))

    async def _warm_settled(self) -> None:
        """Before a turn asks the model: a warm-up that has not reached the model yet is
        cancelled (it never will; the turn's own call does its work, no later than without it).
        One on the model now is waited for: llama.cpp cannot stop it mid-prompt and it holds
        the conversation's slot, so the turn's request would queue behind it anyway; it is
        evaluating this turn's prompt up to its line, which the turn then reuses."""
        warm = self._warm
        if warm is None or warm.done():
            return
        if self._warm_gate.close():
            warm.cancel()
        else:
            await asyncio.shield(warm)

    async def _pin_ack_audio(self) -> None:
        """Have this character's acks in memory, so saying one costs no synthesis and no disk
        read (usually loaded from the pre-rendered cache; rendered once if not yet there).
        Until one is in, a turn goes without it."""
        cache = self.engine.line_cache
        if cache is None:
            return
        voice = self.voice_out.voice
        for ack in self.character.acks:
            if cache.pinned(ack.text, voice) is None:
                try:
                    # Rendered before (the usual case): a file read, not a place in the TTS queue.
                    if await asyncio.to_thread(cache.pin_stored, ack.text, voice) is None:
                        await self.engine.tts_worker.run_background(cache.pin, ack.text, voice)
                except Exception as exc:  # that ack is not said; the reply is unaffected
                    log.warning("session %s: ack %r could not be rendered: %s", self.id, ack.text, exc)

    async def close(self) -> None:
        self.closed = True
        if self._pin_acks is not None and not self._pin_acks.done():
            self._pin_acks.cancel()  # waiting behind live synthesis: not needed any more
        lingering: asyncio.Task[None] | None = None
        if self._warm is not None and not self._warm.done():
            if self._warm_gate.close():
                self._warm.cancel()  # a closed session's queued warm-up never reaches the model
            else:
                # On the model already: llama.cpp cannot stop a prompt midway, and behind the
                # voice (nice 10) it can take tens of seconds on a busy machine. The game is not
                # kept waiting for session.closed: the engine holds it until the models unload.
                lingering = self._tasks.disown(self._warm)
                self.engine.lingering.adopt(lingering)
        if self.voice_input is not None:
            await self.voice_input.close()
        for spec in list(self._speculative):
            self.drop_turn(spec)
        turn = self.current
        if turn is not None and self.owns(turn):  # in a scene another character may have the floor
            turn.cancel()
            await turn.wait()
        await self._tasks.wait()
        # Its KV cache (this character's persona, the conversation) may serve the next
        # conversation with the character; once nothing of this one runs on it.
        if lingering is None:
            self.engine.chat.release(self.affinity)
        else:
            lingering.add_done_callback(lambda _: self.engine.chat.release(self.affinity))
        if self._holds_player:
            self._holds_player = False
            self.engine.release_player(self.player)
        if self._holds_facts:
            self._holds_facts = False
            self.engine.facts.release(self.player, self.character.id)

    # ------------------------------------------------------------------ voice in (VoiceHooks)

    def audio_in(self, pcm: bytes) -> None:
        self._voice().push(pcm)

    def audio_end(self) -> None:
        self._voice().end()

    def _voice(self) -> VoiceInput:
        if self.voice_input is None:
            self.voice_input = microphone(
                self.engine, self, push_to_talk=self.mode == "push_to_talk", preemptive=self.preemptive
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
        if not final:
            self.prepare_line(text)

    def prepare_line(self, heard: str) -> None:
        """The player is speaking and ``heard`` is what the recognizer has of the line so far:
        have the prompt up to those words evaluated now, in the background lane (one token
        generated, nothing said), so the reply evaluates only what the player said after them.
        llama.cpp reuses the longest common beginning, so a partial that got a word wrong
        costs only the words after it. Not while the NPC speaks (its turn holds the slot and
        will add its reply); while another warm-up runs, it goes on to the latest words after
        its step on the model."""
        if self.closed or not self.engine.cfg.warm_next_prompt or not heard.strip():
            return
        if self.current is not None or self._speculative:
            return
        self._warm_toward(WarmTarget(line=heard))

    def player_turn_ended(self, text: str, clock: TurnClock) -> None:
        self.start_turn("voice", text, clock=clock)

    def start_preemptive(self, text: str) -> TurnHandle | None:
        if self.closed or (self.current is not None and not self.current.cancelled):
            # The NPC is still speaking (the player spoke too briefly to barge in): its turn has
            # not recorded its memory, so a reply written now would not know it. The end of the
            # player's turn starts the reply then, as without preemption. (A turn already cut
            # off is waited for by the speculative one before it asks the model.)
            return None
        clock = TurnClock()
        clock.mark("stt_final")  # the speculative final is the turn's text: ready before the decision
        turn = self.start_turn("voice", text, clock=clock, speculative=True)
        turn.preemptive = True
        return turn

    def commit_preemptive(self, turn: TurnHandle, clock: TurnClock) -> None:
        # The reply has been running since the player fell silent: turn.end says for how long
        # before the decision (marks it reached by then read 0 once the clock restarts there).
        turn.clock.before.update(clock.before)
        turn.clock.before["preemptive_lead"] = round(max(0.0, clock.t0 - turn.clock.t0) * 1000.0, 2)
        self._tasks.spawn(self._commit_preemptive(turn, clock.t0), "commit")

    async def _commit_preemptive(self, turn: TurnHandle, decided_at: float) -> None:
        if turn.speculative:  # not dropped meanwhile (a cancel, closing)
            await self.commit_turn(turn, decided_at)

    def drop_preemptive(self, turn: TurnHandle) -> None:
        # No harm to the model's cache: the dropped request ran on this conversation's slot
        # with the prompt the next turn will have up to the player's line (persona, examples,
        # history: a dropped turn adds none), so llama.cpp reuses all of that and evaluates only
        # the new line; what the dropped request added after it is simply overwritten.
        self.drop_turn(turn)

    def _drop_speculative(self) -> None:
        """A cancel reaches the replies not yet decided too: the voice turn, if it ends, is
        answered afresh."""
        for spec in list(self._speculative):
            self.drop_turn(spec)

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
        prompt: str | None = None,
    ) -> TurnHandle:
        """Start a turn now. A real turn cuts off the one running (the player spoke over it);
        a speculative one runs beside it, silently, until ``commit_turn`` or ``drop``."""
        turn_id = None if speculative else self.floor.next_id()
        turn = TurnHandle(
            source, TurnOutbox(self._send, self.id, turn_id, self.character.id), clock=clock, user_text=user_text,
            request_id=request_id, prompt=prompt,
        )
        if self.audio and self.engine.tts_degraded:
            turn.clock.degrade("tts", self.engine.tts_degraded)
        previous = None
        if speculative:
            self._speculative.add(turn)
            if self.current is not None and self.current.cancelled:
                previous = self.current  # cut off, winding down: its memory goes into this prompt
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
        turn.commit(self.floor.next_id())

    def drop_turn(self, turn: TurnHandle) -> None:
        """Abandon a speculative turn without a trace."""
        self._speculative.discard(turn)
        turn.drop()

    def _take_over(self, turn: TurnHandle) -> TurnHandle | None:
        return self.floor.take(turn)

    def owns(self, turn: TurnHandle) -> bool:
        """Whether ``turn`` is this character's (a scene's floor holds every character's turns)."""
        return turn.outbox.character == self.character.id

    def cancel(self, turn_id: int | None = None, heard: float | None = None) -> None:
        """Cancel the running turn (or only turn ``turn_id``); its turn.end follows on its own.

        With ``heard`` (seconds of the turn's audio the player heard), memory keeps only those
        words, also for a turn the engine had already finished sending.
        """
        turn = self.current
        if turn_id is None or (turn is not None and turn.id == turn_id):
            self._drop_speculative()
        if turn is not None and (turn_id is None or turn.id == turn_id):
            turn.cancel(heard=heard)
        elif heard is not None and (last := self.last_turn) is not None and turn_id in (None, last.id):
            self._tasks.spawn(self.memory.trim_heard(last, heard), "trim-heard")

    async def cancel_and_wait(self) -> None:
        self._drop_speculative()
        turn = self.current
        if turn is not None:
            turn.cancel()
            await turn.wait()

    # ------------------------------------------------------------------ a turn

    async def _run(self, turn: TurnHandle, previous: TurnHandle | None, scripted: list[Speakable]) -> None:
        if previous is not None:
            await previous.wait()  # its turn.end and memory go first
        self.engine.turns.enter(turn)
        try:
            turn.emit(msg.TurnStart(id=turn.request_id, source=turn.source, input=turn.user_text))
            if turn.cancelled:
                return  # superseded before it began: no story effects, no model work
            await speak(turn, ahead(self._written(turn, scripted)), self.voice_out)
        except Exception as exc:
            log.exception("session %s turn %s failed", self.id, turn.id)
            turn.status = "error"
            turn.emit(msg.Error.in_turn(ErrorCode.INTERNAL, f"the turn failed: {exc}"))
        finally:
            self.engine.turns.leave(turn)
            await self._finish(turn)

    async def _written(self, turn: TurnHandle, scripted: list[Speakable]) -> AsyncGenerator[Speakable, None]:
        """The turn's speakables; ``turn.text_done`` once they are all written."""
        try:
            async for item in self._speakables(turn, scripted):
                yield item
        finally:
            turn.text_done.set()

    async def _speakables(self, turn: TurnHandle, scripted: list[Speakable]) -> AsyncGenerator[Speakable, None]:
        """What the turn says, by source: a greeting, story lines, or the answer to the player."""
        if turn.source == "greeting":
            lines = [self._scripted(self._pick(self.character.greetings))]
        elif turn.source == "story" or scripted:
            lines = scripted
        elif turn.source in PROMPTED:
            assert turn.prompt is not None
            async for item in self._model_reply(turn, turn.prompt):
                yield item
                if turn.speculative:
                    await turn.decided()  # prepared ahead: its first chunk only, until its turn comes
            return
        else:
            assert turn.user_text is not None
            lines = await self._story_for_line(turn, turn.user_text)
            if turn.cancelled:
                return
            if not lines:
                async for item in self._model_reply(turn, turn.user_text):
                    yield item
                    if turn.preemptive and turn.speculative:
                        # Before the decision a preemptive reply synthesizes its first chunk
                        # only (the model writes on): the voice is shared, and it may be dropped.
                        await turn.decided()
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
            if turn.user_text and (told := extract_told(turn.user_text)):  # remembered with the line
                await self.engine.facts.learn(self.player, {self.character.id: told})
            writes, self._fact_writes = self._fact_writes, []
            for write in writes:  # what the story taught in this turn is on disk before turn.end
                await write
            if text and turn.heard is not None and turn.heard != heard:
                await self.memory.trim_heard(turn, turn.heard)
                text = self.memory.history[-1].content  # this turn's reply, trimmed or not
            if self._on_turn_end is not None:  # a scene: the others present heard it (on disk too)
                await self._on_turn_end(self, turn, text)
        except Exception as exc:  # still ended for the game, which learns it was not saved
            log.exception("session %s turn %s: its history could not be saved", self.id, turn.id)
            turn.status = "error"
            turn.emit(msg.Error.in_turn(ErrorCode.INTERNAL, f"the turn could not be saved: {exc}"))
        turn.interrupted = interrupted
        # The session is done with this turn *before* the game hears turn.end: a cancel (with
        # `heard`) sent right after it must find the turn finished and its reply in memory.
        self.floor.release(turn)
        if self.current is None and not self._speculative and not self.closed and self.engine.cfg.warm_next_prompt:
            # Nothing waits for the model: while the player hears (or reads) this reply, have
            # the next prompt evaluated if this turn changed its beginning (a trim, the story).
            # Spawned before turn.end goes out, so the next turn always finds it (_warm_settled).
            self._start_warm(only_if_changed=True)
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
            prompt_tokens=got.prompt.tokens or None,
            prompt_tokens_evaluated=got.prompt.evaluated if got.prompt.tokens else None,
            preemptive=turn.preemptive or None,
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
            if eng.story.on_player_line(probe, self.character.id, text, present=self._present_now()) and not await turn.decided():
                return []
        async with eng.state_lock(self.player):
            state = await eng.story_state(self.player)
            effects = eng.story.on_player_line(state, self.character.id, text, present=self._present_now())
            if effects:
                await eng.save_story_state(self.player)
        if effects:  # this character saw it happen; a tell reaches its character wherever it is
            # In the prompt at once; committed while the model starts, and before turn.end (_finish).
            changed = eng.facts.note(self.player, learned_from_effects(effects, self.character.id))
            if changed:
                self._fact_writes.append(self._tasks.spawn(eng.facts.write(self.player, changed), "facts"))
        return self.apply_effects(effects, turn)

    def _present_now(self) -> Sequence[str] | None:
        return self._present() if self._present is not None else None

    async def reload_memory(self) -> None:
        """After ``state.load``: the conversation as the save has it."""
        await self.memory.load()

    async def hear(self, text: str) -> None:
        """Something said in this character's presence (a scene): remembered as a line of the
        conversation, so its next prompt has it right after what it already holds."""
        await self.memory.hear(text)

    def apply_effects(self, effects: Sequence[StoryEffect], turn: TurnHandle) -> list[Speakable]:
        """Send the story's effects in the turn; return the lines this character says in it.
        Lines for other characters go to their sessions."""
        for effect in effects:
            turn.emit(story_message(effect))
        lines = story_lines(effects)
        me = self.character.id
        if self._present is not None:
            # A scene: this character says its lines up to the first one of another character;
            # the scene plays the rest of the exchange in order, each in its speaker's voice.
            k = next((i for i, (who, _) in enumerate(lines) if who != me), len(lines))
            mine, others = [line for _, line in lines[:k]], lines[k:]
        else:
            mine = [line for who, line in lines if who == me]
            others = [(who, line) for who, line in lines if who != me]
        if others and self._route_lines is not None:
            self._route_lines(self.player, others)
        return mine

    # ------------------------------------------------------------------ the model's reply

    async def _messages(self, user_text: str, reply_start: str = "") -> list[ChatMessage]:
        eng = self.engine
        state = await eng.story_state(self.player)
        known = eng.facts.known(self.player, self.character.id)
        name = self._player_name(state, known)
        # What it knows of the player (facts.py) goes between the persona and the history.
        system = eng.system_prompt(self.character, state, fact_lines(known, name), name)
        return build_messages(
            system, self.memory.prompt_history(), user_text, self.memory.prompt_turns, example_messages(self.character),
            reply_start=reply_start,
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
        # Said now (or at the commit of a speculative turn) if no audio of the reply is ready,
        # and written into the prompt as the start of the reply, so the model goes on after it.
        ack = self._offer_ack(turn, user_text)
        self.waiting_for_model += 1
        waiting = True
        try:
            async for item in model_reply(
                turn, await self._llm_call(user_text, ack), self._cue_parser(),
                self._max_sentences(turn), self._fallback, await self._guard_for(turn, user_text),
                reply_start=ack,
            ):
                if waiting:
                    waiting = False
                    self.waiting_for_model -= 1
                yield item
        finally:
            if waiting:
                self.waiting_for_model -= 1

    def _max_sentences(self, turn: TurnHandle) -> int:
        # A reaction in a scene is a remark after someone else's answer, not a second answer.
        return 1 if turn.source == "reaction" else self.character.reply.max_sentences

    def _offer_ack(self, turn: TurnHandle, user_text: str) -> str:
        """Choose this line's acknowledgement and hand it to the turn (``TurnHandle.offer_ack``);
        returns its text ("" for none: acks off, none fits, or its audio is not in memory yet)."""
        cache = self.engine.line_cache
        if not self.acks or cache is None or turn.source in PROMPTED:  # "Hm." only answers the player
            return ""
        ack = self._ack_picker.pick(user_text)
        speech = cache.pinned(ack.text, self.voice_out.voice) if ack is not None else None
        if ack is None or speech is None:
            return ""
        item = Speakable(ack.text, ack=True, prerendered=True)
        turn.offer_ack(functools.partial(say_ack, turn, item, speech))
        return ack.text

    async def _llm_call(self, user_text: str, reply_start: str = "") -> LlmCall:
        eng = self.engine
        # A system message changed since the cache was filled (the story moved): kept as the
        # cache has it, the change goes last (prompt.py keep_cached_system says why).
        messages = await self._messages(user_text, reply_start)
        if eng.cfg.warm_next_prompt:  # which puts the new system message in the cache after the turn
            messages = keep_cached_system(messages, self._cached_prompt, persona_prompt(self.character))
        self._cached_prompt = messages  # what the slot will hold once the call has run
        return LlmCall(
            chat=eng.chat,
            worker=eng.llm_worker,
            messages=messages,
            options=GenOptions(
                max_tokens=self.character.reply.max_tokens,
                temperature=eng.cfg.temperature,
                repeat_penalty=eng.cfg.repeat_penalty,
                repeat_last_n=eng.cfg.repeat_last_n,
                dry_multiplier=eng.cfg.dry_multiplier,
            ),
            affinity=self.affinity,
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
        ctx = CheckContext.for_character(
            ch,
            other_names=[n for o in eng.characters.values() if o.id != ch.id for n in (o.name, o.id)],
            player_name=self._player_name(state, eng.facts.known(self.player, ch.id)),
            hidden=hidden,
            earlier=self._earlier_replies(),
            player_line=user_text,
        )
        return guard_for_turn(
            turn, Checker(ctx), deflection=self._deflection, fallback=self._fallback, hold=eng.cfg.guard_hold,
            max_sentences=self._max_sentences(turn),
        )

    @staticmethod
    def _player_name(state: StoryState, known: list[Fact]) -> str | None:
        """The name the player told this character, else the one the game gave the story."""
        name = told_name(known) or state.vars.get("player_name")
        return str(name) if name else None

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

    def scripted_line(self, line: Line) -> Speakable:
        """A story or character line as this character says it (templates filled)."""
        return self._scripted(line)

    def _scripted(self, line: Line) -> Speakable:
        state = self.engine.story_states.get(self.player)
        text = self.engine.story.fill(line.text, state) if state else line.text
        return Speakable(text, line_cues(line.emotion, line.gesture), prerendered=True)

    def _pick(self, lines: list[Line]) -> Line:
        return lines[next(self._line_rotation) % len(lines)]

