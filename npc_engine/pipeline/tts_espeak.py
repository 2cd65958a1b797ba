"""espeak-ng fallback voice behind the ``Synthesizer`` interface: robotic, but ~10 ms per reply.

It drives the espeak-ng library (``espeakng-loader``'s bundled copy, else the
system's ``libespeak-ng``) through ctypes rather than the ``espeak-ng`` binary,
because the library reports phoneme and word events with their sample offsets:
the viseme and word tracks then come from what espeak actually said, not a guess.
Audio is resampled from espeak's 22.05 kHz to the engine's 24 kHz.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import threading
import time
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from npc_engine.pipeline.base import ModelError, SpeechChunk, Timed, Voice
from npc_engine.pipeline.g2p import SUFFIX_MARKS, phoneme_visemes

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000

# espeak_ng/speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_END, _EVENT_PHONEME = 0, 1, 5, 7
_RATE = 1
_DEFAULT_WPM = 175


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(slots=True)
class _Capture:
    audio: list[np.ndarray]
    phonemes: list[tuple[int, str]]  # (sample, IPA); "" is a pause
    words: list[tuple[int, int, int]]  # (sample, text position (1-based), length)
    end: int | None


class _Espeak:
    """The process-wide espeak-ng library: global state, so every call holds ``lock``."""

    lock = threading.Lock()
    _instance: _Espeak | None = None

    def __init__(self) -> None:
        lib_path, data_path = _library_paths()
        try:
            self.lib = ctypes.CDLL(lib_path)
        except OSError as error:
            raise ModelError(f"Could not load the espeak-ng library ({lib_path}): {error}. "
                             "Install espeak-ng (`apt-get install espeak-ng`) or `pip install espeakng-loader`.",
                             code="tts_model_missing") from error
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                          ctypes.c_void_p]
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode() if data_path else None,
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA,
        )
        if self.sample_rate <= 0:
            raise ModelError(f"espeak-ng failed to initialise (data path {data_path}).", code="tts_model_missing")
        self._capture: _Capture | None = None
        self._callback = _Callback(self._on_synth)  # keep a reference: ctypes does not
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> _Espeak:
        with cls.lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_synth(
        self, wav: ctypes._Pointer[ctypes.c_short], count: int, events: ctypes._Pointer[_Event]
    ) -> int:
        capture = self._capture
        if capture is None:
            return 0
        if count > 0:
            capture.audio.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                capture.phonemes.append((event.sample, name))
            elif event.type == _EVENT_WORD:
                capture.words.append((event.sample, event.text_position, event.length))
            elif event.type == _EVENT_END:
                capture.end = event.sample
            i += 1
        return 0

    def synth(self, text: str, voice_name: str, wpm: int) -> _Capture:
        with self.lock:
            # Data sets differ in which names they know ("en-gb" is just "en" in some): fall back.
            candidates = dict.fromkeys([voice_name, voice_name.split("+")[0], "en"])
            if not any(self.lib.espeak_SetVoiceByName(name.encode()) == 0 for name in candidates):
                raise ValueError(f"espeak-ng has no voice {voice_name!r}.")
            self.lib.espeak_SetParameter(_RATE, wpm, 0)
            self._capture = _Capture([], [], [], None)
            data = text.encode("utf-8") + b"\0"
            try:
                rc = self.lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
                if rc != 0:
                    raise ModelError(f"espeak-ng synthesis failed (error {rc}).", code="tts_failed")
                return self._capture
            finally:
                self._capture = None


def _library_paths() -> tuple[str, str | None]:
    try:
        import espeakng_loader

        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except ImportError:
        found = ctypes.util.find_library("espeak-ng")
        if not found:
            raise ModelError("No espeak-ng library found: `pip install espeakng-loader` "
                             "or `apt-get install espeak-ng`.", code="tts_model_missing") from None
        return found, None


def espeak_voice_name(voice: Voice) -> str:
    """espeak voice for a Kokoro voice id: accent from the first letter, a female variant for 'xf_*'.

    An id of the form ``espeak:NAME`` is passed through (``espeak:en-gb-scotland``).
    """
    if voice.id.startswith("espeak:"):
        return voice.id.removeprefix("espeak:")
    accent = "en" if voice.id.startswith("b") else "en-us"  # espeak's "en" is British English
    return f"{accent}+f3" if voice.id[1:2] == "f" else accent


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling of a short clip through the FFT (no SciPy here).

    The input is zero-padded so both transform lengths have only small prime
    factors: an FFT of a clip's raw length (often a large prime) is ~10x slower.
    """
    if src_rate == dst_rate or len(pcm) == 0:
        return pcm.astype(np.float32)
    step = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // step, src_rate // step
    blocks = _smooth_at_least(-(-len(pcm) // down))
    n_in, n_out = blocks * down, blocks * up
    spectrum = np.fft.rfft(pcm.astype(np.float32), n_in)
    bins = n_out // 2 + 1
    if bins > len(spectrum):
        spectrum = np.concatenate([spectrum, np.zeros(bins - len(spectrum), spectrum.dtype)])
    out = np.fft.irfft(spectrum[:bins], n_out) * (n_out / n_in)
    return out[: round(len(pcm) * up / down)].astype(np.float32)


def _smooth_at_least(n: int) -> int:
    """The smallest number >= n with no prime factor above 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _ipa_shapes(ipa: str) -> tuple[str, ...]:
    ipa = ipa.replace("dʒ", "ʤ").replace("tʃ", "ʧ")
    return tuple(v for c in ipa for v in phoneme_visemes(c))


class EspeakSynthesizer:
    """The fallback ``Synthesizer``: same ``SpeechChunk`` contract as Kokoro, from espeak-ng."""

    name = "espeak"
    sample_rate = SAMPLE_RATE

    def __init__(self, words_per_minute: int = _DEFAULT_WPM) -> None:
        self.words_per_minute = words_per_minute
        self.model_hash = "espeak-ng"
        self._espeak = _Espeak.get()

    def warm_up(self) -> None:
        started = time.perf_counter()
        self.synthesize("Hello.", Voice("af_heart"))
        log.info("espeak-ng warm-up took %.3f s", time.perf_counter() - started)

    def synthesize(self, text: str, voice: Voice) -> SpeechChunk:
        if not 0.25 <= voice.speed <= 4.0:
            raise ValueError(f"Voice speed must be between 0.25 and 4.0; got {voice.speed}.")
        text = " ".join(text.split())
        if not any(c.isalnum() for c in text):
            return SpeechChunk(text=text, pcm=np.zeros(0, np.int16), sample_rate=SAMPLE_RATE)
        capture = self._espeak.synth(text, espeak_voice_name(voice), round(self.words_per_minute * voice.speed))
        src_rate = self._espeak.sample_rate
        raw = np.concatenate(capture.audio) if capture.audio else np.zeros(0, np.int16)
        audio = resample(raw, src_rate, SAMPLE_RATE)
        pcm = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
        duration = len(pcm) / SAMPLE_RATE
        end_sample = len(raw)
        return SpeechChunk(
            text=text,
            pcm=pcm,
            sample_rate=SAMPLE_RATE,
            visemes=_visemes(capture.phonemes, end_sample, src_rate, duration),
            words=_words(text, capture, end_sample, src_rate),
        )

    def close(self) -> None:
        pass


def _visemes(phonemes: list[tuple[int, str]], end: int, rate: int, duration: float) -> list[Timed]:
    if duration == 0:
        return []
    bounds = [min(s, end) for s, _ in phonemes] + [end]
    shapes = [("sil",) if not ipa else _ipa_shapes(ipa) for _, ipa in phonemes]
    track: list[Timed] = []
    for i, (shape, (a, b)) in enumerate(zip(shapes, pairwise(bounds), strict=True)):
        if b <= a:
            continue
        if not shape:  # "h" and bare marks: borrow from a neighbour
            nxt = next((s for s in shapes[i + 1:] if s), ("sil",))
            prev = track[-1].label if track else nxt[0]
            shape = (prev,) if phonemes[i][1][-1:] in SUFFIX_MARKS else (nxt[0],)
        cuts = np.linspace(a, b, len(shape) + 1) / rate
        for label, start, stop in zip(shape, cuts[:-1], cuts[1:], strict=True):
            if track and track[-1].label == label:
                track[-1] = Timed(label, track[-1].start, float(stop))
            else:
                track.append(Timed(label, float(start), float(stop)))
    if not track:
        return [Timed("sil", 0.0, duration)]
    if track[0].start > 0:
        track.insert(0, Timed("sil", 0.0, track[0].start))
    # The resampled audio may differ from end/rate by a sample: end exactly with it.
    track[-1] = Timed(track[-1].label, track[-1].start, duration)
    return track


def _words(text: str, capture: _Capture, end: int, rate: int) -> list[Timed]:
    pauses = [s for s, ipa in capture.phonemes if not ipa]
    starts = [s for s, _, _ in capture.words]
    words: list[Timed] = []
    for k, (sample, position, length) in enumerate(capture.words):
        stop = min([end, *starts[k + 1:k + 2], *(p for p in pauses if p > sample)])
        label = text[position - 1:position - 1 + length]
        if label and stop > sample:
            words.append(Timed(label, sample / rate, stop / rate))
    return words
