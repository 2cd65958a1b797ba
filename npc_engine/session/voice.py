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
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from npc_engine import prom
from npc_engine.metrics import TurnClock
from npc_engine.pipeline.base import STT_SAMPLE_RATE
from npc_engine.pipeline.stt_turns import TurnRecognizer, TurnUpdate
from npc_engine.pipeline.vad import EndOfTurnDetector, TurnConfig
from npc_engine.protocol import ErrorCode

if TYPE_CHECKING:
    from npc_engine.session import Session

log = logging.getLogger(__name__)
_END = object()
MAX_BATCH = STT_SAMPLE_RATE // 10


class VoiceInput:
    def __init__(self, session: Session) -> None:
        eng = session.engine
        self.session = session
        self.engine = eng
        detector = EndOfTurnDetector(eng.vad_model, TurnConfig(end_of_turn_ms=eng.cfg.end_of_turn_ms))
        self.push_to_talk = session.mode == "push_to_talk"
        self.recognizer = TurnRecognizer(detector, eng.transcriber.open_stream())
        self.detector = detector
        self.max_samples = int(eng.cfg.max_audio_seconds * STT_SAMPLE_RATE)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._samples = 0  # in the current utterance (push-to-talk: since the last audio.end)
        self._utterance = 0
        self._overlong = False
        self._held: list[np.ndarray] | None = None  # push-to-talk frames held during a silence

    # ------------------------------------------------------------------ from the server

    def push(self, pcm: bytes) -> None:
        self._queue.put_nowait(np.frombuffer(pcm, dtype="<i2"))
        self._ensure_task()

    def end(self) -> None:
        self._queue.put_nowait((_END, time.perf_counter()))
        self._ensure_task()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    # ------------------------------------------------------------------ on the STT thread

    async def _drain(self) -> None:
        worker = self.engine.stt_worker
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, tuple):  # audio.end
                update = await worker.run(self._end_turn)
                self._handle(update, ended_at=item[1])
                continue
            # Take what piled up, but at most ~100 ms per recognizer call: barge-in is checked
            # between calls, so a burst of frames cannot delay it.
            frames = [item]
            n = len(item)
            while n < MAX_BATCH and not self._queue.empty() and not isinstance(self._queue._queue[0], tuple):  # type: ignore[attr-defined]
                frames.append(self._queue.get_nowait())
                n += len(frames[-1])
            pcm = frames[0] if len(frames) == 1 else np.concatenate(frames)
            if self._too_long(len(pcm)):
                continue
            try:
                update = await worker.run(self._feed, pcm)
            except Exception as exc:
                log.exception("session %s: speech recognition failed", self.session.id)
                self.session.emit_error(ErrorCode.MODEL_ERROR, f"speech recognition failed: {exc}")
                await worker.run(self.recognizer.reset)
                continue
            self._handle(update, ended_at=None)

    def _feed(self, pcm: np.ndarray) -> TurnUpdate:
        if not self.push_to_talk:
            return self.recognizer.feed(pcm)
        # Push-to-talk: the key says when the turn ends; the VAD watches for barge-in and
        # starts the speculative decode when the player falls silent. Frames after that are
        # held back: fed, they would invalidate the decode and the key release would decode
        # everything again. If the player goes on, the held frames are fed first.
        events = self.detector.feed(pcm)
        update = TurnUpdate(events=events)
        stream = self.recognizer.stream
        kinds = [e.kind for e in events]
        if self._held is None:
            self._accept(stream, pcm, update)
            if kinds and kinds[-1] == "silence_start":
                self._held = []
                prepare = getattr(stream, "prepare_final", None)
                if prepare is not None:
                    prepare()
        else:
            self._held.append(pcm)
            if any(k in ("speech_resume", "speech_start") for k in kinds):
                held, self._held = self._held, None
                self._accept(stream, np.concatenate(held), update)
        return update

    @staticmethod
    def _accept(stream: Any, pcm: np.ndarray, update: TurnUpdate) -> None:
        partial = stream.accept(pcm)
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
            self.session.emit_error(
                ErrorCode.BAD_AUDIO,
                f"utterance longer than {self.engine.cfg.max_audio_seconds:.0f} s; it was dropped. "
                "Send audio.end when the player stops talking",
            )
            self.recognizer.reset()  # safe: the drain loop is the recognizer's only user
        return True

    def _handle(self, update: TurnUpdate, ended_at: float | None) -> None:
        session = self.session
        if session.closed:
            return
        turn = session.current
        if turn is not None and not turn.cancelled and self.detector.is_speech_ongoing(self.engine.cfg.barge_in_ms):
            log.info("session %s: barge-in, the player spoke over turn %d", session.id, turn.id)
            prom.barge_in()
            turn.interrupted = True
            turn.cancel.set()
        if update.partial:
            session.emit("transcript", None, text=update.partial, final=False, utterance=self._utterance)
        if update.final is None:
            return
        eot = next((e for e in update.events if e.kind == "end_of_turn"), None)
        self._samples = 0
        self._overlong = False
        utterance, self._utterance = self._utterance, self._utterance + 1
        text = update.final.strip()
        session.emit("transcript", None, text=text, final=True, utterance=utterance)
        if not text:
            return  # noise or silence: no turn
        # The turn's clock starts at the end-of-turn decision: the VAD's, or the key release.
        now = time.perf_counter()
        t0 = ended_at if ended_at is not None else now - update.finalize_seconds
        clock = TurnClock(t0=t0)
        if eot is not None:
            clock.before["end_of_turn_delay"] = eot.delay_ms
        clock.mark("stt_final")
        session.start_turn("voice", text, clock=clock)
