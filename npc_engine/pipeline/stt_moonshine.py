"""Moonshine tiny (English) behind the ``Transcriber`` interface, with streaming partials.

The model and its runtime come from PyPI ``moonshine-voice==0.0.48``, which
bundles ``tiny-en`` (later versions download models at run time). It is
installed ``--no-deps`` (scripts/install.sh); importing it needs ``requests``,
``tqdm``, ``filelock`` and ``platformdirs`` (its download helper is imported by
the package ``__init__``), which are project dependencies. It never needs torch.

Moonshine's stream keeps its own VAD and splits the audio into "lines"; the
text of a turn is all of its lines joined. ``accept`` asks the library for an
update once per ``partial_interval_ms`` of new audio (the library re-runs the
current line, ~20–130 ms as it grows). ``prepare_final`` stops the stream
(which completes the open line), keeps its text and restarts the stream;
``finalize`` returns that text if no audio came since, else closes the rest the
same way.

The library runs its own onnxruntime build; it exposes no thread setting.
"""

from __future__ import annotations

import ctypes
import logging
import time
import unicodedata
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npc_engine.packages import package_dir
from npc_engine.pipeline.base import STT_SAMPLE_RATE
from npc_engine.pipeline.stt_common import SttModelNotFoundError, as_int16, require_dir, to_float32

log = logging.getLogger(__name__)



def bundled_model_dir() -> Path:
    """The tiny-en model inside the ``moonshine-voice`` package (found without importing it)."""
    base = package_dir("moonshine_voice")
    if base is None:
        raise SttModelNotFoundError(
            "Moonshine is not installed: run `pip install --no-deps moonshine-voice==0.0.48` "
            "(scripts/install.sh does), or choose the whisper recognizer."
        )
    return base / "assets" / "tiny-en"


@dataclass(frozen=True, slots=True)
class MoonshineConfig:
    model_dir: Path | None = None  # None: the bundled tiny-en
    partial_interval_ms: int = 300
    # Options passed to the library (names from libmoonshine). Speaker ids cost
    # ~20% more CPU per decode and a game knows who is talking; but 0.0.48 crashes
    # freeing a transcriber loaded without them, so that one is never freed (it
    # lives as long as the process anyway).
    identify_speakers: bool = False
    vad_threshold: float | None = None  # None: the library's default


class MoonshineTranscriber:
    """Load Moonshine tiny-en once; hand out one ``MoonshineStream`` per session."""

    name = "moonshine"
    sample_rate = STT_SAMPLE_RATE

    def __init__(self, config: MoonshineConfig | None = None) -> None:
        self.config = config or MoonshineConfig()
        model_dir = require_dir(
            Path(self.config.model_dir or bundled_model_dir()), "Moonshine model directory",
            "It should hold encoder_model.ort, decoder_model_merged.ort and tokenizer.bin; "
            "`pip install --no-deps moonshine-voice==0.0.48` bundles tiny-en.",
        )
        try:
            from moonshine_voice.moonshine_api import ModelArch
            from moonshine_voice.transcriber import Transcriber
        except ImportError as e:
            raise ImportError(
                f"Moonshine could not be imported ({e}); it needs requests, tqdm, filelock and "
                "platformdirs: `pip install requests tqdm filelock platformdirs`."
            ) from e
        options: dict[str, Any] = {"identify_speakers": str(self.config.identify_speakers).lower()}
        if self.config.vad_threshold is not None:
            options["vad_threshold"] = self.config.vad_threshold
        cls = Transcriber if self.config.identify_speakers else _transcriber_never_freed(Transcriber)
        started = time.perf_counter()
        log.info("loading Moonshine tiny-en from %s", model_dir)
        self.model = cls(str(model_dir), ModelArch.TINY, update_interval=1e9, options=options)
        self._lib = self.model._lib
        # Freeing the transcriber under live streams crashes the library: close them first.
        self._streams: weakref.WeakSet[MoonshineStream] = weakref.WeakSet()
        log.info("Moonshine loaded in %.2f s", time.perf_counter() - started)

    def open_stream(self, partial_interval_ms: int | None = None) -> MoonshineStream:
        """A new stream; ``partial_interval_ms`` overrides the configured partial cadence."""
        stream = MoonshineStream(self, partial_interval_ms)
        self._streams.add(stream)
        return stream

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        self.transcribe((rng.normal(0, 30, STT_SAMPLE_RATE)).astype(np.int16))

    def transcribe(self, pcm: np.ndarray) -> str:
        """Decode a whole utterance (int16 PCM at 16 kHz) in one call."""
        audio = to_float32(as_int16(pcm))
        transcript = self.model.transcribe_without_streaming(audio.tolist(), STT_SAMPLE_RATE)
        return _join(transcript.lines)

    def close(self) -> None:
        for stream in list(self._streams):
            stream.close()
        self.model.close()


class MoonshineStream:
    """One session's Moonshine stream; reused across turns (stop + start resets it)."""

    def __init__(self, transcriber: MoonshineTranscriber, partial_interval_ms: int | None = None) -> None:
        self._tr = transcriber
        self._lib = transcriber._lib
        self._stream = transcriber.model.create_stream(update_interval=1e9)
        self._stream.start()
        interval_ms = partial_interval_ms if partial_interval_ms is not None else transcriber.config.partial_interval_ms
        self._interval = interval_ms * STT_SAMPLE_RATE // 1000
        self._n = 0
        self._last_update_at = 0
        self._partial = ""
        self._segments: list[str] = []  # text of lines closed by prepare_final
        self._cached: tuple[int, str] | None = None
        self.decodes = 0

    def accept(self, pcm: np.ndarray) -> str | None:
        pcm = as_int16(pcm)
        if not len(pcm):
            return None
        audio = np.ascontiguousarray(to_float32(pcm))
        err = self._lib.moonshine_transcribe_add_audio_to_stream(
            self._tr.model._handle, self._stream._handle,
            audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(audio), STT_SAMPLE_RATE, 0,
        )
        _check(err)
        self._n += len(pcm)
        if self._n - self._last_update_at < self._interval:
            return None
        self._last_update_at = self._n
        current = _join(self._stream.update_transcription(0).lines)
        self.decodes += 1
        text = _join_text([*self._segments, current])
        if text == self._partial:
            return None
        self._partial = text
        return text

    def prepare_final(self) -> str:
        """Close the lines heard so far (stop + start: the same decode ``finalize`` would run).

        Forcing an update of the open line instead costs a full re-run of it and
        can disagree with the stop-time text; closing it makes the speculative
        text the final one. Speech after this becomes a new line.
        """
        if self._cached is not None and self._cached[0] == self._n:
            return self._cached[1]
        self._segments.append(self._restart(transcribe=True))
        text = _join_text(self._segments)
        self._cached = (self._n, text)
        return text

    def finalize(self) -> str:
        if self._cached is not None and self._cached[0] == self._n:
            text = self._cached[1]  # the stream was restarted by prepare_final and is empty
        else:
            text = _join_text([*self._segments, self._restart(transcribe=True)])
        self._reset_state()
        return text

    def reset(self) -> None:
        self._restart(transcribe=False)
        self._reset_state()

    def close(self) -> None:
        if self._stream._handle is not None:
            self._stream.close()

    def _restart(self, transcribe: bool) -> str:
        if transcribe and self._n > self._last_update_at:
            # The library only runs its VAD and decoder inside an update: audio added
            # since the last one would be lost by stop. Cheap when partials kept up.
            self._stream.update_transcription(0)
        _check(self._lib.moonshine_stop_stream(self._tr.model._handle, self._stream._handle))
        text = ""
        if transcribe:
            # After stop the library completes the open line on this update.
            text = _join(self._stream.update_transcription(0).lines)
            self.decodes += 1
        self._stream.start()
        return text

    def _reset_state(self) -> None:
        self._n = 0
        self._last_update_at = 0
        self._partial = ""
        self._segments.clear()
        self._cached = None


def _transcriber_never_freed(base: type[Any]) -> type[Any]:
    """moonshine's Transcriber, minus the free() that segfaults with identify_speakers=false."""

    class _Transcriber(base):
        def close(self) -> None:
            self._handle = None  # deliberately leaked: see MoonshineConfig.identify_speakers

    return _Transcriber


def _join(lines: list[Any]) -> str:
    return " ".join(t for t in (_clean(line.text) for line in lines) if t)


def _join_text(parts: list[str]) -> str:
    return " ".join(p for p in parts if p)


def _clean(text: str) -> str:
    """A line's text, or "" when the library handed back unset memory.

    0.0.48 sometimes returns a just-opened line whose text is a few stray bytes
    (control characters among them, e.g. "$\\x1dV"); real text never has those.
    """
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        return ""
    return text.strip()


def _check(err: int) -> None:
    from moonshine_voice.errors import check_error

    check_error(err)
