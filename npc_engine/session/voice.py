"""A session's microphone stream: frames in, transcripts out, turns started, barge-in.

Frames arrive on the event loop (~20 ms each) and are queued; one task per session drains
the queue on the STT thread, batching whatever piled up, so recognition never blocks the
server loop and frames are handled strictly in order.

* open mic: the VAD decides the end of the turn; the final transcript was decoded
  speculatively when the silence began, so the turn starts at once.
* push-to-talk: ``audio.end`` (key released) ends the turn; the VAD still runs, for
  barge-in and to start the speculative decode when the player falls silent.
* barge-in: player speech of at least ``barge_in_ms`` while the NPC's turn is running
  cancels that turn; a cough is shorter and is ignored.
* preemptive replies (LiveKit Agents' preemptive generation): when the player falls silent
  the speculative final is handed back at once, and the reply to it starts as a speculative
  turn (model, first chunk's synthesis), before the end of the turn is confirmed. At the end
  of the turn it is committed if the final says the same words, else dropped without a trace
  (and a normal turn starts); the player speaking again, a cancel, or closing drops it too.

This module knows nothing of sessions: it talks to its owner through ``VoiceHooks``
(LiveKit Agents' ``RecognitionHooks``), which the session implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from npc_engine.config import EngineConfig
from npc_engine.engine import Engine
from npc_engine.metrics import TurnClock
from npc_engine.pipeline.base import STT_SAMPLE_RATE, Transcriber
from npc_engine.pipeline.smart_turn import TurnClassifier
from npc_engine.pipeline.stt_common import SpeculativeStream
from npc_engine.pipeline.stt_turns import STEP, TurnRecognizer, TurnUpdate
from npc_engine.pipeline.vad import EndOfTurnDetector, SileroVad, TurnConfig
from npc_engine.pipeline.workers import URGENT, ModelWorker
from npc_engine.protocol.errors import ErrorCode, ProtocolError
from npc_engine.turns.handle import TurnHandle

log = logging.getLogger(__name__)
MAX_BATCH = STT_SAMPLE_RATE // 10
Pcm = npt.NDArray[np.int16]


class VoiceHooks(Protocol):
    """What voice input needs from its owner (the session)."""

    @property
    def id(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def npc_speaking(self) -> bool:
        """A turn of the NPC is running and not yet cancelled."""
        ...

    def barge_in(self) -> None:
        """The player has spoken over the NPC long enough: cut its turn."""
        ...

    def transcript(self, text: str, final: bool, utterance: int) -> None: ...

    def player_turn_ended(self, text: str, clock: TurnClock) -> None:
        """The player finished a non-empty utterance; ``clock`` starts at the decision."""
        ...

    def start_preemptive(self, text: str) -> TurnHandle | None:
        """Start a speculative reply to ``text`` (the player fell silent); None if the owner
        will not preempt now."""
        ...

    def commit_preemptive(self, turn: TurnHandle, clock: TurnClock) -> None:
        """The turn ended on the words ``turn`` answers: it becomes the next turn; ``clock``
        starts at the decision."""
        ...

    def drop_preemptive(self, turn: TurnHandle) -> None:
        """Abandon a speculative reply without a trace."""
        ...

    def report_error(self, code: ErrorCode, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _KeyReleased:
    at: float  # perf_counter of the audio.end's arrival: the turn's clock starts there


@dataclass(frozen=True, slots=True)
class _Preempted:
    text: str  # the speculative final it answers
    turn: TurnHandle


def same_words(a: str, b: str) -> bool:
    """Whether two transcripts say the same words: case, punctuation and spacing aside
    (a recognizer may punctuate a decode differently and still have heard the same)."""
    return re.findall(r"\w+", a.casefold()) == re.findall(r"\w+", b.casefold())


@dataclass(slots=True)
class PreemptStats:
    """What this microphone's preemptive replies became (logs and tests read it)."""

    started: int = 0
    committed: int = 0
    dropped: int = 0


class VoiceInput:
    def __init__(
        self,
        hooks: VoiceHooks,
        transcriber: Transcriber,
        vad: SileroVad,
        worker: ModelWorker,
        cfg: EngineConfig,
        *,
        push_to_talk: bool,
        preemptive: bool = False,
        turn_model: TurnClassifier | None = None,
    ) -> None:
        self.hooks = hooks
        self.worker = worker
        self.cfg = cfg
        self.push_to_talk = push_to_talk
        self.preemptive = preemptive
        turn_cfg = TurnConfig(
            end_of_turn_ms=cfg.end_of_turn_ms, smart_turn_ms=cfg.smart_turn_ms,
            complete_ms=cfg.smart_turn_complete_ms, incomplete_ms=cfg.smart_turn_incomplete_ms,
        )
        # End of turn by meaning on open mic only: with push-to-talk the key ends the turn.
        classifier = turn_model if cfg.smart_turn and not push_to_talk else None
        self.detector = EndOfTurnDetector(vad, turn_cfg, classifier)
        self.recognizer = TurnRecognizer(self.detector, transcriber.open_stream())
        self.max_samples = int(cfg.max_audio_seconds * STT_SAMPLE_RATE)
        self._pending: deque[Pcm | _KeyReleased] = deque()
        self._task: asyncio.Task[None] | None = None
        self._samples = 0  # in the current utterance (push-to-talk: since the last audio.end)
        self._utterance = 0
        self._overlong = False
        self._held: list[Pcm] | None = None  # push-to-talk frames held during a silence
        # The one speculative reply of this microphone, until the end of the turn decides it.
        self._preempted: _Preempted | None = None
        self.preempt_stats = PreemptStats()

    # ------------------------------------------------------------------ from the server

    def push(self, pcm: bytes) -> None:
        self._pending.append(np.frombuffer(pcm, dtype="<i2"))
        self._ensure_task()

    def end(self) -> None:
        self._pending.append(_KeyReleased(time.perf_counter()))
        self._ensure_task()

    async def close(self) -> None:
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.drop_preemptive()

    async def drained(self) -> None:
        """Until every frame received so far has been recognised (tests wait on this, not on time)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name=f"voice {self.hooks.id}")

    # ------------------------------------------------------------------ on the STT thread

    async def _drain(self) -> None:
        while self._pending:
            item = self._pending.popleft()
            try:
                if isinstance(item, _KeyReleased):
                    update = await self.worker.run_by(URGENT, self._end_turn)  # a final: ahead of partials
                    log.debug("session %s: key released %.0f ms ago, final in %.0f ms", self.hooks.id,
                              (time.perf_counter() - item.at) * 1000, update.finalize_seconds * 1000)
                    self._handle(update, ended_at=item.at)
                    continue
                pcm = self._batch(item)
                if self._too_long(len(pcm)):
                    continue
                update = await self.worker.run_by(self._feed_deadline(), self._feed, pcm)
                self._handle(update, ended_at=None)
            except Exception as exc:  # the player's turn is lost: say so, and listen afresh
                log.exception("session %s: speech recognition failed", self.hooks.id)
                self.drop_preemptive()
                self.hooks.report_error(ErrorCode.MODEL_ERROR, f"speech recognition failed: {exc}")
                await self.worker.run(self._reset)

    def _feed_deadline(self) -> float:
        """Frames that may end the turn or start its speculative final (the player is in a
        silence, or the last window was quiet) go ahead of other sessions' partial decodes;
        other frames are due now (read between this session's jobs: its detector is idle)."""
        det = self.detector
        if det.in_turn and (not det.is_speech_ongoing(0.0) or det.last_probability < det.config.threshold):
            return URGENT
        return time.perf_counter()

    def _batch(self, first: Pcm) -> Pcm:
        """Take what piled up, but at most ~100 ms per recognizer call: barge-in is checked
        between calls, so a burst of frames cannot delay it."""
        frames = [first]
        n = len(first)
        while n < MAX_BATCH and self._pending and not isinstance(self._pending[0], _KeyReleased):
            nxt = self._pending.popleft()
            assert not isinstance(nxt, _KeyReleased)
            frames.append(nxt)
            n += len(nxt)
        return frames[0] if len(frames) == 1 else np.concatenate(frames)

    def _reset(self) -> None:
        self.recognizer.reset()
        self.detector.reset()
        self._held = None

    def _feed(self, pcm: Pcm) -> TurnUpdate:
        if not self.push_to_talk:
            return self.recognizer.feed(pcm)
        # Push-to-talk: the key says when the turn ends; the VAD watches for barge-in and
        # starts the speculative decode when the player falls silent. Frames after that are
        # held back: fed, they would invalidate the decode and the key release would decode
        # everything again. If the player goes on, the held frames are fed first.
        # One VAD window at a time (as TurnRecognizer.feed does): a batch of frames that piled
        # up, or one long frame, can hold a resume and then a new silence, and the frames after
        # that silence must be held too, with a fresh decode, or the release decodes again.
        update = TurnUpdate()
        for i in range(0, len(pcm), STEP):
            self._feed_ptt_step(pcm[i : i + STEP], update)
        return update

    def _feed_ptt_step(self, pcm: Pcm, update: TurnUpdate) -> None:
        events = self.detector.feed(pcm)  # at most one event: pcm is one window or less
        update.events += events
        stream = self.recognizer.stream
        kinds = [e.kind for e in events]
        if self._held is None:
            self._accept(pcm, update)
            if kinds and kinds[-1] == "silence_start":
                self._held = []
                if isinstance(stream, SpeculativeStream):
                    started = time.perf_counter()
                    update.speculative = stream.prepare_final()
                    log.debug("session %s: silence %.0f ms after the speech, speculative final in %.0f ms: %r",
                              self.hooks.id, events[-1].delay_ms, (time.perf_counter() - started) * 1000,
                              update.speculative)
        else:
            self._held.append(pcm)
            if any(k in ("speech_resume", "speech_start") for k in kinds):
                held, self._held = self._held, None
                self._accept(np.concatenate(held), update)
                update.speculative = None  # the player went on: that decode is void

    def _accept(self, pcm: Pcm, update: TurnUpdate) -> None:
        partial = self.recognizer.stream.accept(pcm)
        if partial is not None:
            update.partial = partial

    def _end_turn(self) -> TurnUpdate:
        if self.push_to_talk:
            started = time.perf_counter()
            update = TurnUpdate(final=self.recognizer.stream.finalize())  # the cached decode if silent since
            update.finalize_seconds = time.perf_counter() - started
            self.detector.reset()
            self._held = None
            return update
        return self.recognizer.end_turn()

    # ------------------------------------------------------------------ back on the loop

    def _too_long(self, n: int) -> bool:
        if not (self.push_to_talk or self.detector.in_turn):
            self._samples = 0  # open mic between turns: silence does not count
            return False
        self._samples += n
        if self._samples <= self.max_samples:
            return False
        if not self._overlong:
            self._overlong = True
            self.hooks.report_error(
                ErrorCode.BAD_AUDIO,
                f"utterance longer than {self.cfg.max_audio_seconds:.0f} s; it was dropped. "
                "Send audio.end when the player stops talking",
            )
            self.recognizer.reset()  # safe: the drain loop is the recognizer's only user
            self.drop_preemptive()
        return True

    def _handle(self, update: TurnUpdate, ended_at: float | None) -> None:
        hooks = self.hooks
        if hooks.closed:
            return
        if hooks.npc_speaking() and self.detector.is_speech_ongoing(self.cfg.barge_in_ms):
            hooks.barge_in()
        if update.resumed():
            self.drop_preemptive()  # the player went on (barge-in included): not the turn's text
        if update.partial:
            hooks.transcript(update.partial, final=False, utterance=self._utterance)
        if update.final is None:
            if update.speculative:
                self._preempt(update.speculative)
            return
        eot = next((e for e in update.events if e.kind == "end_of_turn"), None)
        self._samples = 0
        self._overlong = False
        utterance, self._utterance = self._utterance, self._utterance + 1
        text = update.final.strip()
        hooks.transcript(text, final=True, utterance=utterance)
        preempted, self._preempted = self._preempted, None
        if not text:
            if preempted is not None:
                self._drop(preempted)
            return  # noise or silence: no turn
        # The turn's clock starts at the end-of-turn decision: the VAD's, or the key release.
        now = time.perf_counter()
        clock = TurnClock(t0=ended_at if ended_at is not None else now - update.finalize_seconds)
        if eot is not None:
            clock.before["end_of_turn_delay"] = eot.delay_ms
        clock.mark("stt_final")
        if preempted is not None:
            # Dropped meanwhile (a cancel, a state load): the turn is answered afresh.
            if preempted.turn.speculative and same_words(preempted.text, text):
                self.preempt_stats.committed += 1
                hooks.commit_preemptive(preempted.turn, clock)
                return
            self._drop(preempted)
        hooks.player_turn_ended(text, clock)

    # ------------------------------------------------------------------ preemptive replies

    def _preempt(self, text: str) -> None:
        """The player fell silent and ``text`` is what they said, if they stay so: answer it
        now, speculatively. One preemptive reply at a time: a newer decode replaces it."""
        text = text.strip()
        if not (self.preemptive and text):
            return
        self.drop_preemptive()
        if any(isinstance(item, _KeyReleased) for item in self._pending):
            return  # recognition lags and the key is already up: the end of the turn is known
        turn = self.hooks.start_preemptive(text)
        if turn is not None:
            self.preempt_stats.started += 1
            self._preempted = _Preempted(text, turn)

    @property
    def preempted(self) -> TurnHandle | None:
        """The speculative reply waiting for the end of the turn, if any."""
        return self._preempted.turn if self._preempted is not None else None

    def drop_preemptive(self) -> None:
        """Drop the speculative reply, if any (the player went on, a cancel, closing)."""
        preempted, self._preempted = self._preempted, None
        if preempted is not None:
            self._drop(preempted)

    def _drop(self, preempted: _Preempted) -> None:
        self.preempt_stats.dropped += 1
        if preempted.turn.speculative:  # not dropped already by its session
            self.hooks.drop_preemptive(preempted.turn)


def microphone(engine: Engine, hooks: VoiceHooks, *, push_to_talk: bool, preemptive: bool) -> VoiceInput:
    """A conversation's (session's or scene's) voice input on the engine's recognizer, or
    ``bad_audio`` for an engine that runs without one."""
    if engine.transcriber is None or engine.vad_model is None:
        raise ProtocolError(
            ErrorCode.BAD_AUDIO, "this engine runs without speech recognition (--stt none); send text instead",
            session=hooks.id,
        )
    return VoiceInput(
        hooks, engine.transcriber, engine.vad_model, engine.stt_worker, engine.cfg, push_to_talk=push_to_talk,
        preemptive=preemptive, turn_model=engine.turn_model,
    )
