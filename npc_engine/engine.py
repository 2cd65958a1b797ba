"""The engine's shared, loaded-once resources: characters, story, models, store.

Sessions borrow these; nothing here is per player. Models load once at start-up (with
progress on the log), each gets its own worker thread, and a warm-up call makes the first
real turn as fast as the later ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from npc_engine.characters import Character
from npc_engine.config import EngineConfig
from npc_engine.facts import FactBook
from npc_engine.pipeline.base import ChatMessage, ChatModel, Synthesizer, Transcriber, Voice
from npc_engine.pipeline.line_cache import LineCache
from npc_engine.pipeline.prompt import example_messages, system_prompt
from npc_engine.pipeline.tts_fallback import SynthBudget
from npc_engine.pipeline.workers import ModelWorker
from npc_engine.players import PlayerStates
from npc_engine.store import AsyncStore
from npc_engine.story import Story, StoryState
from npc_engine.story.state import Scalar
from npc_engine.tasks import BackgroundTasks
from npc_engine.turns.speech import VoiceOut
from npc_engine.world import load_world

if TYPE_CHECKING:  # loaded lazily: onnxruntime is slow to import and absent with --stt none
    from npc_engine.pipeline.smart_turn import TurnClassifier
    from npc_engine.pipeline.vad import SileroVad
    from npc_engine.turns.handle import TurnHandle

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
T = TypeVar("T")


def make_chat_model(cfg: EngineConfig) -> ChatModel:
    if cfg.llm == "ollama":
        from npc_engine.pipeline.llm_ollama import OllamaChat

        return OllamaChat(cfg.ollama_model, host=cfg.ollama_host, keep_alive=cfg.ollama_keep_alive)
    from npc_engine.pipeline.llm_llamacpp import LlamaCppChat

    # At a lower priority than the voice's threads: scheduling.py says why.
    return LlamaCppChat(cfg.llm_model, n_ctx=cfg.llm_ctx, n_parallel=cfg.llm_slots, threads=cfg.llm_threads, nice=cfg.llm_nice)


def make_synthesizer(cfg: EngineConfig) -> Synthesizer | None:
    if cfg.tts == "none":
        return None
    if cfg.tts == "espeak":
        from npc_engine.pipeline.tts_espeak import EspeakSynthesizer

        return EspeakSynthesizer()
    from npc_engine.pipeline.tts_kokoro import KokoroConfig, KokoroSynthesizer

    return KokoroSynthesizer(KokoroConfig(intra_op_threads=cfg.tts_threads, head_s=cfg.tts_head_s))


def make_transcriber(cfg: EngineConfig) -> Transcriber | None:
    if cfg.stt == "none":
        return None
    from npc_engine.pipeline.stt_factory import make_transcriber as factory

    if cfg.stt == "whisper":
        return factory(cfg.stt, cpu_threads=cfg.stt_threads, encoder_window=cfg.stt_final_window)
    if cfg.stt == "vosk" and cfg.vosk_model:
        return factory(cfg.stt, model_dir=Path(cfg.vosk_model))
    return factory(cfg.stt)


class LiveTurns:
    """The turns running: background work waits until none is, and a reply's later sentences
    take the later lane while another is live (``Engine.voice_out``)."""

    def __init__(self) -> None:
        self._live: list[TurnHandle] = []
        # ``awaiting_first_words`` is asked from the TTS thread while the loop adds and removes.
        self._lock = threading.Lock()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return len(self._live)

    def enter(self, turn: TurnHandle) -> None:
        with self._lock:
            self._live.append(turn)
        self._idle.clear()

    def leave(self, turn: TurnHandle) -> None:
        with self._lock:
            self._live.remove(turn)
            empty = not self._live
        if empty:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


class Engine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.characters: dict[str, Character] = {}
        self.story: Story
        self.chat: ChatModel
        self.synth: Synthesizer | None = None
        self.fallback_synth: Synthesizer | None = None
        self.transcriber: Transcriber | None = None
        self.line_cache: LineCache | None = None
        self.vad_model: SileroVad | None = None
        self.turn_model: TurnClassifier | None = None  # Smart Turn: open-mic end of turn by meaning
        self.store: AsyncStore
        self.facts: FactBook  # what each character knows of each player (with the store)
        # One worker per model. The LLM's threads only wait on llama.cpp's own decode
        # loop, so there is one per slot to let sessions decode in the same batch.
        self.llm_worker = ModelWorker("llm", threads=max(1, cfg.llm_slots))
        self.tts_worker = ModelWorker("tts")
        # Later sentences while other turns are live, at a lower priority (scheduling.py).
        self.tts_later = ModelWorker("tts-later", nice=cfg.tts_later_nice) if cfg.tts_later_nice > 0 else None
        self.stt_worker = ModelWorker("stt")
        # The working set of players' story states (the store has them all): bounded, LRU.
        self.story_states = PlayerStates(cfg.max_players_cached)
        self.turns = LiveTurns()  # background work (pre-rendering) yields to live turns
        # Model work of closed sessions that cannot be stopped (a warm-up on the LLM): held
        # here, so a session's close need not wait for it, and awaited before the models unload.
        self.lingering = BackgroundTasks("engine")
        self._closed = False
        self.prerendered = asyncio.Event()  # the background pre-rendering is over (or never ran)
        self._priming = False  # prime_personas is running
        self.primed: tuple[str, ...] = ()  # the characters whose persona prime_personas cached
        self.tts_degraded: str | None = None  # why the configured voice is not the one in use

    # ------------------------------------------------------------------ start-up

    @classmethod
    async def start(cls, cfg: EngineConfig, progress: Progress | None = None) -> Engine:
        eng = cls(cfg)
        await eng._load(progress or (lambda msg: log.info("%s", msg)))
        return eng

    @classmethod
    def assemble(
        cls,
        cfg: EngineConfig,
        characters: Mapping[str, Character],
        story: Story,
        chat: ChatModel,
        *,
        synth: Synthesizer | None = None,
        fallback_synth: Synthesizer | None = None,
        transcriber: Transcriber | None = None,
        vad_model: SileroVad | None = None,
        turn_model: TurnClassifier | None = None,
    ) -> Engine:
        """An engine from parts already made: the unit tests' way in, with named test doubles."""
        eng = cls(cfg)
        eng.characters = dict(characters)
        eng.story = story
        eng.chat = chat
        eng.synth = synth
        eng.fallback_synth = fallback_synth
        eng.transcriber = transcriber
        eng.vad_model = vad_model
        eng.turn_model = turn_model
        eng.store = AsyncStore(cfg.db_path)
        eng.facts = FactBook(eng.store)
        return eng

    async def _load(self, progress: Progress) -> None:
        t_all = time.perf_counter()

        async def step(what: str, fn: Callable[[], T]) -> T:
            progress(f"loading {what} ...")
            t0 = time.perf_counter()
            result = await asyncio.to_thread(fn)
            progress(f"loaded {what} in {time.perf_counter() - t0:.1f} s")
            return result

        # load_world runs every cross-file check `npc-engine check` runs: a broken world refuses to start.
        characters, self.story = await step(
            f"characters from {self.cfg.characters}/ and story from {self.cfg.story}/",
            lambda: load_world(self.cfg.characters, self.cfg.story),
        )
        self.characters = dict(characters)
        self.store = AsyncStore(self.cfg.db_path)
        self.facts = FactBook(self.store)
        self.chat = await step(f"LLM ({self.cfg.llm})", lambda: make_chat_model(self.cfg))
        if self.cfg.tts != "none":
            try:
                self.synth = await step(f"TTS ({self.cfg.tts})", lambda: make_synthesizer(self.cfg))
            except Exception as exc:  # degrade to the robotic voice rather than refuse to start
                log.error("TTS %s failed to load (%s); falling back to espeak-ng", self.cfg.tts, exc)
                self.synth = None
                self.tts_degraded = f"{self.cfg.tts} failed to load ({exc}); espeak-ng voice"
            self.fallback_synth = await step("fallback TTS (espeak-ng)", self._load_espeak)
            if self.synth is None:
                self.synth = self.fallback_synth
            if self.synth is not None:
                # Only authored lines go to disk; lines filled in per player stay in memory.
                self.line_cache = LineCache(self.cfg.cache_dir / "lines", self.synth, keep=self.scripted_lines())
                await step("TTS warm-up", self.synth.warm_up)
        if self.cfg.stt != "none":
            self.transcriber = await step(f"speech recognizer ({self.cfg.stt})", lambda: make_transcriber(self.cfg))
            if self.transcriber is not None:
                await step("speech recognizer warm-up", self.transcriber.warm_up)
            from npc_engine.pipeline.vad import SileroVad

            self.vad_model = await step("voice activity detector (Silero)", SileroVad)
            if self.cfg.smart_turn:
                from npc_engine.pipeline.smart_turn import SmartTurn

                try:
                    smart_turn = await step("end-of-turn model (Smart Turn v3.2)", SmartTurn)
                    await step("end-of-turn model warm-up", smart_turn.warm_up)
                    self.turn_model = smart_turn
                except Exception as exc:  # open-mic turns still end, on silence alone: degrade, don't refuse
                    log.error("Smart Turn unavailable (%s); open-mic turns end after %d ms of silence",
                              exc, self.cfg.end_of_turn_ms)
        progress(f"engine ready in {time.perf_counter() - t_all:.1f} s")

    @staticmethod
    def _load_espeak() -> Synthesizer | None:
        try:
            from npc_engine.pipeline.tts_espeak import EspeakSynthesizer

            return EspeakSynthesizer()
        except Exception as exc:
            log.warning("espeak-ng fallback voice unavailable: %s", exc)
            return None

    # ------------------------------------------------------------------ what sessions borrow

    def voice_out(self, character: Character, audio: bool) -> VoiceOut:
        """How a session of ``character`` speaks: its voice chain (configured voice, then
        espeak-ng), or none at all for a text-only session."""
        voices: list[Synthesizer] = []
        if audio:
            voices = [s for s in (self.synth, self.fallback_synth) if s is not None]
            voices = [s for i, s in enumerate(voices) if s not in voices[:i]]
        return VoiceOut(
            voices=voices,
            voice=Voice(character.voice.id, character.voice.speed),
            worker=self.tts_worker,
            later=self.tts_later,
            crowded=lambda: self.turns.count > 1,
            budget=SynthBudget(self.cfg.budget_tts_chunk_ms, self.cfg.tts_max_rtf),
            line_cache=self.line_cache,
        )

    def scripted_lines(self) -> list[tuple[str, Voice]]:
        """Every scripted line that can be rendered ahead of time (no {templates} in it).
        Acks first: they are said within milliseconds of a turn's end, so they render first."""
        out = [(ack.text, Voice(ch.voice.id, ch.voice.speed)) for ch in self.characters.values() for ack in ch.acks]
        for ch in self.characters.values():
            voice = Voice(ch.voice.id, ch.voice.speed)
            out += [(line.text, voice) for line in ch.lines() if not line.template_vars]
        for speaker, line in self.story.lines():
            who = self.characters.get(speaker)
            if who is not None and not line.template_vars:
                out.append((line.text, Voice(who.voice.id, who.voice.speed)))
        return out

    async def prerender_lines(self) -> None:
        """Render greetings, fallbacks and story lines into the on-disk cache, one at a time,
        so a real turn waits behind at most one of them on the TTS thread."""
        try:
            await self._prerender()
        finally:
            self.prerendered.set()

    async def _prerender(self) -> None:
        if self.line_cache is None:
            return
        todo = [(t, v) for t, v in self.scripted_lines() if not self.line_cache.has(t, v)]
        if not todo:
            return
        log.info("pre-rendering %d scripted lines in the background", len(todo))
        t0 = time.perf_counter()
        for text, voice in todo:
            await self.turns.idle()
            try:
                # Behind every live chunk in the TTS queue, whatever its deadline.
                await self.tts_worker.run_background(self.line_cache.get_or_render, text, voice)
            except Exception as exc:
                log.warning("could not pre-render %r: %s", text, exc)
        log.info("pre-rendered %d lines in %.1f s", len(todo), time.perf_counter() - t0)

    def system_prompt(
        self, character: Character, state: StoryState, facts: Sequence[str] = (), player_name: str | None = None
    ) -> str:
        """``character``'s system prompt for a player in ``state`` (``facts``: what it knows of
        them): its persona, then the secrets it may now tell and the beat's objective."""
        cid = character.id
        revealed = [s.text for s in character.secrets if s.reveal_when and self.story.condition_true(s.reveal_when, state, cid)]
        return system_prompt(character, self.story.objective(state, cid), revealed, facts, player_name=player_name)

    def start_priming(self) -> None:
        """``prime_personas`` in the background; ``close`` waits for the one on the model."""
        self._priming = True  # from now: a ping right after this already says "warming"
        self.lingering.spawn(self.prime_personas(), "prime-personas")

    @property
    def warming(self) -> bool:
        """Start-up work is still running in the background (pre-rendering scripted lines, or
        priming personas): turns are served meanwhile but compete with it for the CPU, so a
        game (or ``npc-engine bench --endpoint``) that wants steady timings waits it out.
        Only a server starts that work; an engine without one never says it is done."""
        return self._priming or not self.prerendered.is_set()

    async def prime_personas(self) -> None:
        """Evaluate each character's opening prompt for a new player (its persona, objective and
        example exchanges) into a cache of its own, in the background lane, before anyone talks:
        a conversation that opens later takes that cache (``ChatModel.prime``), and its first
        line does not wait for the persona (~3 s on one core). As many characters as caches."""
        fresh = self.story.initial_state({})
        # The story's default name for a player ("traveller"), as a session without one has.
        # A game that names its player shares the persona, up to "You are talking to".
        name = fresh.vars.get("player_name")
        primed: list[str] = []
        t_all = time.perf_counter()
        self._priming = True
        try:
            for character in list(self.characters.values())[: self.cfg.llm_slots]:
                if self._closed:
                    return  # shutting down: the model is about to unload
                system = self.system_prompt(character, fresh, player_name=str(name) if name else None)
                messages = [ChatMessage("system", system), *example_messages(character)]
                await self.turns.idle()
                if self._closed or not await self.llm_worker.run_background(self.chat.prime, messages):
                    return
                primed.append(character.id)
        except Exception as exc:  # a conversation's own warm-up does it then
            log.warning("could not prime a persona (%s): conversations warm their own", exc)
        finally:
            self.primed, self._priming = tuple(primed), False
            if primed:
                log.info("primed %d persona(s) in %.1f s (%s): a first line does not wait for them",
                         len(primed), time.perf_counter() - t_all, ", ".join(primed))

    @property
    def closed(self) -> bool:
        """``close`` has begun (it may still be waiting for lingering model work)."""
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.lingering.wait()
        await asyncio.to_thread(self.chat.close)
        await self.store.close()
        for w in (self.llm_worker, self.tts_worker, self.tts_later, self.stt_worker):
            if w is not None:
                w.shutdown()

    # ------------------------------------------------------------------ story state

    def state_lock(self, player: str) -> contextlib.AbstractAsyncContextManager[None]:
        """``async with engine.state_lock(player):`` around a read-change-save of their state.
        The player's state stays in memory while someone is inside or waiting."""
        return self.story_states.lock(player)

    def hold_player(self, player: str) -> None:
        """A session of ``player`` opened: their state stays in memory until ``release_player``."""
        self.story_states.hold(player)

    def release_player(self, player: str) -> None:
        self.story_states.release(player)

    async def story_state(self, player: str, vars: Mapping[str, Scalar] | None = None) -> StoryState:
        """The player's story state: in memory, else from the store, else a fresh one.

        A stored state this engine cannot read (a newer engine's, or one an older bug wrote)
        must not lock the player out for good: it is reported, set aside in the store (kept,
        not deleted) and the player starts the story afresh."""
        state = self.story_states.get(player)
        if state is None:
            loaded: StoryState | None = None
            try:
                saved = await self.store.load_story_state(player)
                loaded = StoryState.from_dict(saved) if saved is not None else None
            except ValueError as exc:  # UnreadableState, or a row that is not JSON
                log.error(
                    "player %s: the saved story state cannot be read (%s); it is set aside and the player "
                    "starts the story afresh", player, exc,
                )
                await self.store.set_aside_story_state(player, str(exc))
            # Another request may have loaded it while this one waited on the store: keep one object.
            state = self.story_states.setdefault(player, loaded or self.story.initial_state(vars or {}))
        if vars:
            state.vars.update(vars)
        return state

    async def save_story_state(self, player: str) -> None:
        state = self.story_states.get(player)
        if state is not None:
            await self.store.save_story_state(player, state.to_dict())

    def forget_player(self, player: str) -> None:
        self.story_states.pop(player, None)
