"""Silero VAD (ONNX, onnxruntime, one thread) and the end-of-turn detector built on it.

The model file is the one shipped in the ``silero-vad`` wheel (installed
``--no-deps``: the wheel hard-depends on torch, we only need the file), or
failing that the copy inside ``faster-whisper``. It is found on disk without
importing either package.

``EndOfTurnDetector`` takes audio in frames of any size (the wire sends ~20 ms),
runs the model on 512-sample windows (32 ms at 16 kHz) and emits events in
stream time (samples since the detector was created):

* ``speech_start`` once ``min_speech_ms`` of speech has accumulated (a cough or
  a click is shorter, so it never starts a turn). ``sample`` is the onset;
  ``audio`` carries ``preroll_ms`` before the onset up to everything fed so far,
  ready to hand to a recognizer.
* ``silence_start`` after ``silence_start_ms`` without speech: the cue for a
  speculative decode.
* ``speech_resume`` when speech comes back before the turn ended.
* ``end_of_turn`` after ``end_of_turn_ms`` of trailing silence; or, with a turn
  classifier (Smart Turn, smart_turn.py), decided by meaning: at ``smart_turn_ms`` of
  silence the classifier hears the turn so far; complete, the turn ends after
  ``complete_ms`` (None: at once); mid-thought (or a transcript that ends on "and"/"um",
  see ``hear``), after ``incomplete_ms``.

Each event has ``sample`` (what it marks: the onset, or the end of the last
speech) and ``decided_at`` (the end of the window that decided it), so
``decided_at - sample`` is the detector's own delay. docs/stt.md explains how
the defaults were measured.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from npc_engine.pipeline.base import STT_SAMPLE_RATE
from npc_engine.pipeline.smart_turn import N_SAMPLES as CLASSIFIER_SAMPLES
from npc_engine.pipeline.smart_turn import TurnClassifier, ends_mid_thought
from npc_engine.pipeline.stt_common import SttModelNotFoundError, as_int16, to_float32

log = logging.getLogger(__name__)

WINDOW = 512  # samples per model call at 16 kHz (the only size Silero takes there)
CONTEXT = 64  # samples of the previous window the model sees in front of each window
WINDOW_MS = WINDOW * 1000 / STT_SAMPLE_RATE


def default_model_path() -> Path:
    """Silero VAD's ONNX file from the silero-vad wheel, else from faster-whisper's assets."""
    candidates: list[Path] = []
    for package, rel in (("silero_vad", "data/silero_vad.onnx"), ("faster_whisper", "assets/silero_vad_v6.onnx")):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(next(iter(spec.submodule_search_locations))) / rel)
    for path in candidates:
        if path.is_file():
            return path
    raise SttModelNotFoundError(
        "No Silero VAD model found: install it with `pip install --no-deps silero-vad==6.2.3` "
        "(scripts/install.sh does), or pass model_path to an .onnx file. Looked in: "
        + (", ".join(str(p) for p in candidates) or "no silero-vad or faster-whisper install")
    )


@dataclass(slots=True)
class VadState:
    """One audio stream's recurrent state; the model itself is shared."""

    context: np.ndarray = field(default_factory=lambda: np.zeros((1, CONTEXT), np.float32))
    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))


class SileroVad:
    """The Silero VAD ONNX session. ``probability`` is one 512-sample window (~0.1 ms)."""

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(model_path) if model_path else default_model_path()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the exports warn about unused initialisers
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in self._session.get_inputs()}
        # silero-vad's export takes (input, state, sr); faster-whisper's takes (input, h, c).
        self._split_state = {"h", "c"} <= names
        if not self._split_state and not {"input", "state"} <= names:
            raise ValueError(f"{self.path} is not a Silero VAD v5/v6 ONNX model (inputs: {sorted(names)})")
        self._with_sr = "sr" in names
        self._sr = np.array(STT_SAMPLE_RATE, dtype=np.int64)
        log.info("Silero VAD loaded from %s", self.path)

    def probability(self, st: VadState, window: np.ndarray) -> float:
        """Speech probability of one window of 512 float32 samples; updates ``st``."""
        x = np.concatenate([st.context, window.reshape(1, WINDOW)], axis=1)
        if self._split_state:
            out, h, c = self._session.run(None, {"input": x, "h": st.state[:1], "c": st.state[1:]})
            st.state = np.concatenate([h, c], axis=0)
        else:
            feeds = {"input": x, "state": st.state}
            if self._with_sr:
                feeds["sr"] = self._sr
            out, st.state = self._session.run(None, feeds)
        st.context = x[:, -CONTEXT:]
        return float(np.asarray(out).reshape(-1)[-1])


EventKind = Literal["speech_start", "silence_start", "speech_resume", "end_of_turn"]


@dataclass(frozen=True, slots=True)
class TurnEvent:
    kind: EventKind
    sample: int  # what it marks: the speech onset (start/resume) or the end of the last speech
    decided_at: int  # end of the window that decided it
    audio: np.ndarray | None = None  # speech_start only: pre-roll .. everything fed so far (int16)
    # end_of_turn with a classifier: its probability that the turn was complete (None: not
    # asked, the text check held the turn), and whether the transcript's last word held it.
    p_complete: float | None = None
    text_hold: bool = False

    @property
    def delay_ms(self) -> float:
        return (self.decided_at - self.sample) * 1000 / STT_SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class TurnConfig:
    threshold: float = 0.5  # Silero's own default
    neg_threshold: float | None = None  # None: threshold - 0.15 (Silero's hysteresis)
    min_speech_ms: int = 200  # shorter bursts (a cough, a click) never start a turn
    # A candidate onset broken by more silence than this is dropped before it counts.
    max_onset_gap_ms: int = 160
    silence_start_ms: int = 96
    end_of_turn_ms: int = 600  # trailing silence that ends a turn; see docs/stt.md
    preroll_ms: int = 250  # audio kept in front of the onset (Silero fires a little late)
    # With a turn classifier (EndOfTurnDetector's ``classifier``) end_of_turn_ms is unused:
    # at smart_turn_ms of silence the classifier is asked; at least complete_threshold, the
    # turn ends after complete_ms (None: at once); below, or held by the text check, after
    # incomplete_ms. complete_ms=None is ~380 ms faster on finished lines but cuts a pause
    # after a finished clause (the mid-sentence fixture); docs/stt.md has the measured trade.
    smart_turn_ms: int = 200
    complete_ms: int | None = 600
    complete_threshold: float = 0.5
    incomplete_ms: int = 1200


class EndOfTurnDetector:
    """Turn-taking for one audio stream; feed it frames, read events. Not thread-safe."""

    def __init__(
        self, vad: SileroVad, config: TurnConfig | None = None, classifier: TurnClassifier | None = None
    ) -> None:
        self.vad = vad
        self.classifier = classifier
        self.config = cfg = config or TurnConfig()
        self._neg = cfg.neg_threshold if cfg.neg_threshold is not None else cfg.threshold - 0.15
        ms = STT_SAMPLE_RATE // 1000
        self._min_speech = cfg.min_speech_ms * ms
        self._onset_gap = cfg.max_onset_gap_ms * ms
        self._silence_start = cfg.silence_start_ms * ms
        self._end_of_turn = cfg.end_of_turn_ms * ms
        self._preroll = cfg.preroll_ms * ms
        self._smart_turn = cfg.smart_turn_ms * ms
        self._complete = max(cfg.complete_ms if cfg.complete_ms is not None else 0, cfg.smart_turn_ms) * ms
        self._incomplete = cfg.incomplete_ms * ms
        # History long enough to hand back pre-roll plus a slow onset, and with a classifier
        # the turn's last 8 s (what it hears) plus what is fed ahead of the deciding window.
        keep = self._preroll + self._min_speech + self._onset_gap + 4 * WINDOW
        if classifier is not None:
            keep = max(keep, CLASSIFIER_SAMPLES + 8 * WINDOW)
        self._history = np.zeros(keep, np.int16)
        self._st = VadState()
        self._pending = np.zeros(0, np.int16)
        self._fed = 0  # samples received
        self._pos = 0  # samples run through the model
        self._state: Literal["idle", "speech", "trailing"] = "idle"
        self._cand_start: int | None = None
        self._cand_speech = 0
        self._cand_gap = 0
        self._last_speech_end = 0
        self._run_speech = 0  # speech in the current run (since the onset or the last resume)
        self._turn_start = 0  # the turn's first sample (pre-roll included): what the classifier hears
        self._asked = False  # the classifier has judged this silence
        self._verdict: float | None = None  # its probability of complete for this silence
        self._text_hold = False  # this silence's transcript ends mid-thought
        self.last_probability = 0.0

    # ------------------------------------------------------------------ queries

    @property
    def in_turn(self) -> bool:
        """True from ``speech_start`` until ``end_of_turn``."""
        return self._state != "idle"

    @property
    def stream_samples(self) -> int:
        return self._fed

    def speech_ms(self) -> float:
        """Speech heard in the current run: the onset candidate, or since the last start/resume."""
        if self._state == "idle":
            return self._cand_speech * 1000 / STT_SAMPLE_RATE
        if self._state == "speech":
            return self._run_speech * 1000 / STT_SAMPLE_RATE
        return 0.0

    def is_speech_ongoing(self, min_ms: float) -> bool:
        """Is the player talking now, for at least ``min_ms``? (barge-in while the NPC speaks)"""
        return self._state != "trailing" and self.speech_ms() >= min_ms

    def hear(self, text: str) -> None:
        """The transcript of the turn so far, decoded during this silence (the speculative
        final): one that ends on "and", "um", "so"… holds the turn to ``incomplete_ms``.
        Only the current silence counts; speech coming back forgets it."""
        if self._state == "trailing":
            self._text_hold = ends_mid_thought(text)

    # ------------------------------------------------------------------ feeding

    def feed(self, pcm: np.ndarray) -> list[TurnEvent]:
        """Take int16 16 kHz samples (any length); return the events they caused, in order."""
        pcm = as_int16(pcm)
        self._remember(pcm)
        self._fed += len(pcm)
        buf = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        events: list[TurnEvent] = []
        n_windows = len(buf) // WINDOW
        for i in range(n_windows):
            window = buf[i * WINDOW : (i + 1) * WINDOW]
            p = self.vad.probability(self._st, to_float32(window))
            self.last_probability = p
            start, self._pos = self._pos, self._pos + WINDOW
            event = self._step(p, start, self._pos)
            if event is not None:
                events.append(event)
        self._pending = buf[n_windows * WINDOW :].copy()
        return events

    def reset(self) -> None:
        """Forget the current turn (keeps the model state: the audio stream goes on)."""
        self._state = "idle"
        self._drop_candidate()
        self._new_silence()

    # ------------------------------------------------------------------ internals

    def _step(self, p: float, start: int, end: int) -> TurnEvent | None:
        speech = p >= self.config.threshold
        # Hysteresis: once in speech, only a clear drop counts as silence.
        speechy = speech or (p >= self._neg and (self._state == "speech" or self._cand_start is not None))
        if self._state == "idle":
            return self._step_idle(speechy, start, end)
        if self._state == "speech":
            if speechy:
                self._last_speech_end = end
                self._run_speech += WINDOW
                return None
            if end - self._last_speech_end >= self._silence_start:
                self._state = "trailing"
                self._new_silence()
                return TurnEvent("silence_start", self._last_speech_end, end)
            return None
        # trailing
        if speech:
            self._state = "speech"
            self._last_speech_end = end
            self._run_speech = WINDOW
            self._new_silence()
            return TurnEvent("speech_resume", start, end)
        if self._turn_ends(end):
            event = TurnEvent(
                "end_of_turn", self._last_speech_end, end, p_complete=self._verdict, text_hold=self._text_hold
            )
            self._state = "idle"
            self._drop_candidate()
            self._new_silence()
            return event
        return None

    def _turn_ends(self, end: int) -> bool:
        """Has the trailing silence up to ``end`` ended the turn?"""
        silence = end - self._last_speech_end
        if self.classifier is None:
            return silence >= self._end_of_turn
        if silence >= self._incomplete:
            return True  # mid-thought, or not sure: the long wait is the ceiling either way
        if silence < self._smart_turn or self._text_hold:
            return False  # the text check needs no model: "…and" is not an end
        if not self._asked:
            # Asked once per silence, on the STT thread that runs this detector (~10-30 ms):
            # more silence mostly makes it surer of "complete", which is what the long wait is for.
            self._asked = True
            self._verdict = self.classifier.predict(self._turn_audio(end))
        complete = self._verdict is not None and self._verdict >= self.config.complete_threshold
        return complete and silence >= self._complete

    def _new_silence(self) -> None:
        self._asked = False
        self._verdict = None
        self._text_hold = False

    def _turn_audio(self, end: int) -> np.ndarray:
        """The turn from its pre-roll up to ``end`` (its last 8 s at most): what the classifier hears."""
        h = self._history
        first = max(self._turn_start, end - CLASSIFIER_SAMPLES, self._fed - len(h))
        return h[len(h) - (self._fed - first) : len(h) - (self._fed - end)].copy()

    def _step_idle(self, speechy: bool, start: int, end: int) -> TurnEvent | None:
        if speechy:
            if self._cand_start is None:
                self._cand_start = start
            self._cand_speech += WINDOW
            self._cand_gap = 0
            if self._cand_speech >= self._min_speech:
                onset = self._cand_start
                self._turn_start = max(onset - self._preroll, 0)
                self._state = "speech"
                self._last_speech_end = end
                self._run_speech = self._cand_speech
                self._drop_candidate()
                return TurnEvent("speech_start", onset, end, audio=self._recent(onset - self._preroll))
        elif self._cand_start is not None:
            self._cand_gap += WINDOW
            if self._cand_gap > self._onset_gap:
                self._drop_candidate()
        return None

    def _drop_candidate(self) -> None:
        self._cand_start = None
        self._cand_speech = 0
        self._cand_gap = 0

    def _remember(self, pcm: np.ndarray) -> None:
        h = self._history
        if len(pcm) >= len(h):
            h[:] = pcm[-len(h) :]
        else:
            h[: -len(pcm)] = h[len(pcm) :]
            h[-len(pcm) :] = pcm

    def _recent(self, from_sample: int) -> np.ndarray:
        """Samples from ``from_sample`` (clamped to what is kept) up to everything fed."""
        available = min(self._fed, len(self._history))
        n = min(available, self._fed - max(from_sample, 0))
        return self._history[len(self._history) - n :].copy()
