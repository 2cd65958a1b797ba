"""Open-mic turns: the end-of-turn detector and a recognizer stream wired together.

``TurnRecognizer.feed`` takes the player's audio frames as they arrive and
returns what happened: VAD events, a new partial, and at the end of a turn the
final text. It runs on the STT worker thread (every call may decode).

* Audio reaches the recognizer only inside a turn, starting with the
  detector's pre-roll, so a recognizer never decodes the silence between turns.
* At ``silence_start`` the frames are held back instead of fed, and
  ``prepare_final`` decodes what was said (when ``speculative``). If the player
  goes on (``speech_resume``) the held frames are fed and the cache is dropped;
  if the turn ends, ``finalize`` returns the cached text at once. The decoded text
  is handed back (``TurnUpdate.speculative``) so the session can start its reply
  before the end of the turn is confirmed (a preemptive reply).
* A push-to-talk release (``audio.end`` on the wire) is ``end_turn()``; it
  returns what the VAD let through (a push-to-talk session that wants every
  sample can feed its stream directly instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from npc_engine.pipeline.base import TranscriberStream
from npc_engine.pipeline.stt_common import SpeculativeStream, as_int16
from npc_engine.pipeline.vad import WINDOW, EndOfTurnDetector, TurnEvent

STEP = WINDOW  # samples per detector step (one Silero window, 32 ms)


@dataclass(slots=True)
class TurnUpdate:
    events: list[TurnEvent] = field(default_factory=list)
    partial: str | None = None  # new partial text of the current turn
    final: str | None = None  # the turn's text, set on end_of_turn (may be "")
    finalize_seconds: float = 0.0  # time finalize() took (≈0 when the speculative decode hit)
    # The speculative final decoded at a silence_start in this update and still standing at its
    # end (no speech_resume after it): what the turn's text will be if the player stays silent.
    speculative: str | None = None

    def resumed(self) -> bool:
        """The player spoke again in this update: any speculative final before it is void."""
        return any(e.kind in ("speech_resume", "speech_start") for e in self.events)


class TurnRecognizer:
    """One session's open-mic recognizer: VAD turn-taking plus a transcriber stream."""

    def __init__(self, detector: EndOfTurnDetector, stream: TranscriberStream, speculative: bool = True) -> None:
        self.detector = detector
        self.stream = stream
        # The same stream, typed as one that can decode ahead; None when not speculating.
        self._speculative: SpeculativeStream | None = (
            stream if speculative and isinstance(stream, SpeculativeStream) else None
        )
        self.speculative = self._speculative is not None
        self._held: list[np.ndarray] = []
        self._feeding = False  # inside a turn and not in trailing silence

    def feed(self, pcm: np.ndarray) -> TurnUpdate:
        """Feed any amount of audio. It is stepped through one VAD window at a time: a
        ``speech_start`` hands over the audio since the onset from a short history, which
        must not have been overrun by the rest of a large batch."""
        pcm = as_int16(pcm)
        if len(pcm) <= STEP:
            return self._feed_step(pcm)
        update = TurnUpdate()
        for i in range(0, len(pcm), STEP):
            step = self._feed_step(pcm[i : i + STEP])
            update.events += step.events
            update.partial = step.partial if step.partial is not None else update.partial
            if step.resumed():
                update.speculative = None
            if step.speculative is not None:
                update.speculative = step.speculative
            if step.final is not None:  # callers feed ~100 ms at a time: one turn end at most
                update.final, update.finalize_seconds = step.final, step.finalize_seconds
        return update

    def _feed_step(self, pcm: np.ndarray) -> TurnUpdate:
        update = TurnUpdate()
        consumed = False
        for event in self.detector.feed(pcm):
            update.events.append(event)
            if event.kind == "speech_start":
                self.stream.reset()
                self._held.clear()
                self._feeding = True
                consumed = True  # the event's audio runs up to the end of this frame
                assert event.audio is not None
                self._accept(event.audio, update)
            elif event.kind == "silence_start":
                if not consumed:
                    self._accept(pcm, update)
                    consumed = True
                self._feeding = False
                if self._speculative is not None:
                    update.speculative = self._speculative.prepare_final()
                    self.detector.hear(update.speculative)  # the text check: "…and" holds the turn
            elif event.kind == "speech_resume":
                self._feeding = True
                update.speculative = None
                held, self._held = self._held, []
                if not consumed:
                    held.append(pcm)
                    consumed = True
                if held:
                    self._accept(np.concatenate(held), update)
            elif event.kind == "end_of_turn":
                self._finish(update)
                consumed = True
        if not consumed:
            if self._feeding:
                self._accept(pcm, update)
            elif self.detector.in_turn:
                self._held.append(pcm)
        return update

    def end_turn(self) -> TurnUpdate:
        """Push-to-talk release: finish the turn now, whatever the VAD thinks."""
        update = TurnUpdate()
        self._finish(update)
        self.detector.reset()
        return update

    def reset(self) -> None:
        """Drop the turn in progress (e.g. the session was cancelled)."""
        self.stream.reset()
        self.detector.reset()
        self._held.clear()
        self._feeding = False

    def _accept(self, pcm: np.ndarray, update: TurnUpdate) -> None:
        partial = self.stream.accept(pcm)
        if partial is not None:
            update.partial = partial

    def _finish(self, update: TurnUpdate) -> None:
        started = time.perf_counter()
        update.final = self.stream.finalize()
        update.finalize_seconds = time.perf_counter() - started
        self._held.clear()
        self._feeding = False
