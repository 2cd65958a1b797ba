"""End of turn by meaning: Smart Turn v3.2 (ONNX, onnxruntime, one thread) and a text check.

Silence alone cannot tell "I found the amulet… in the old mill" from a finished line: a
player who pauses to think gets cut, and one who has finished waits out the whole silence.
Smart Turn (Daily / pipecat, BSD-2-Clause) is a Whisper-tiny encoder with a classifier head
trained on where people stop talking: it hears the prosody and the words of the turn so far
and says how likely the turn is complete. ``EndOfTurnDetector`` (vad.py) asks it once the
player has been silent ~200 ms: complete, the turn ends (at 600 ms of silence by default, or
at once: docs/stt.md has the trade-off); mid-thought, it waits longer (1200 ms).

The model file ships inside the ``pipecat-ai`` wheel, installed ``--no-deps`` (pipecat is
never imported: it would pull loguru, soxr and the rest) and checked against its sha256.

Input, as pipecat's ``LocalSmartTurnAnalyzerV3`` prepares it: the last 8 s of 16 kHz audio,
zero-padded in front when shorter, turned into Whisper log-mel features (80 bins x 800
frames). ``log_mel`` is a numpy port of ``transformers.WhisperFeatureExtractor`` (Apache-2.0,
Hugging Face) with the settings Smart Turn uses (``chunk_length=8``, ``do_normalize=True``),
the same math as pipecat's vendored ``_whisper_features.py``; we don't depend on transformers.

``ends_mid_thought`` is the second signal: a transcript that ends on a conjunction or a filler
("…and", "um", "so") is not finished, whatever the audio sounds like.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from npc_engine.packages import package_dir
from npc_engine.pipeline.base import STT_SAMPLE_RATE
from npc_engine.pipeline.model_files import Part, PartedModel, default_cache_dir, ensure_verified, stamp_path
from npc_engine.pipeline.stt_common import SttModelNotFoundError, as_int16, to_float32

log = logging.getLogger(__name__)

SECONDS = 8  # the model's window: the last 8 s of the turn
N_SAMPLES = SECONDS * STT_SAMPLE_RATE
N_FFT = 400  # 25 ms windows
HOP = 160  # 10 ms hop
N_MELS = 80
N_FRAMES = N_SAMPLES // HOP  # 800

MODEL = PartedModel(
    what="the Smart Turn v3.2 end-of-turn model",
    sha256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
    parts=(
        Part(
            module="pipecat",
            dist="pipecat-ai",
            version="1.14.0",
            file="audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
            sha256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
        ),
    ),
)
INSTALL_HINT = (
    "install it with `pip install --no-deps --require-hashes -r requirements-models.txt` "
    "(scripts/install.sh does), or run without it: smart_turn=False (NPC_ENGINE_SMART_TURN=0)"
)


# ---------------------------------------------------------------------- features


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default, Whisper's)."""
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    mel[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    hz = 200.0 * mel / 3.0
    log_region = mel >= 15.0
    hz[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel[log_region] - 15.0))
    return hz


def mel_filters(n_fft: int = N_FFT, n_mels: int = N_MELS, sr: int = STT_SAMPLE_RATE) -> npt.NDArray[np.float64]:
    """Triangular mel filters, Slaney area-normalised, shape ``(n_mels, n_fft // 2 + 1)``."""
    fft_hz = np.linspace(0.0, sr // 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sr / 2]))[0], n_mels + 2))
    slopes = edges[None, :] - fft_hz[:, None]  # (bins, n_mels + 2)
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (edges[2:] - edges[:-2])  # each filter has unit area
    return np.ascontiguousarray(filters.T)


_FILTERS = mel_filters()
# Periodic Hann (torch.hann_window's default), not numpy's symmetric one.
_WINDOW = np.hanning(N_FFT + 1)[:-1]


def fit_window(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The last ``SECONDS`` of ``audio``, zero-padded in front when shorter (pipecat's input)."""
    if len(audio) >= N_SAMPLES:
        return audio[-N_SAMPLES:]
    return np.concatenate([np.zeros(N_SAMPLES - len(audio), np.float32), audio])


def log_mel(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Whisper log-mel features of exactly ``N_SAMPLES`` float samples: shape (80, 800).

    As ``WhisperFeatureExtractor(chunk_length=8)(audio, do_normalize=True)``: the waveform is
    normalised to zero mean and unit variance (float32), framed centred with reflect padding,
    |rFFT|² through the mel filters, log10 floored at 1e-10, the last frame dropped, clamped
    to 8 below the maximum, then scaled by (x + 4) / 4.
    """
    if audio.shape != (N_SAMPLES,):
        raise ValueError(f"log_mel takes {N_SAMPLES} samples (use fit_window), got shape {audio.shape}")
    x = audio.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + np.float32(1e-7))
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (801, 400), no copy
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(_FILTERS @ power.T, 1e-10))[:, :-1]  # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


# ---------------------------------------------------------------------- the model


class TurnClassifier(Protocol):
    """Says how likely a turn is complete, from its audio so far (int16, 16 kHz)."""

    def predict(self, pcm: npt.NDArray[np.int16]) -> float: ...


def default_model_path() -> Path:
    """The ONNX file inside the installed pipecat-ai wheel."""
    path = MODEL.parts[0].locate()
    if path is None:
        base = package_dir(MODEL.parts[0].module)
        where = f"{base / MODEL.parts[0].file}" if base is not None else "no pipecat-ai install"
        raise SttModelNotFoundError(f"No Smart Turn model found ({where}): {INSTALL_HINT}.")
    return path


def ensure_model(*, verify: bool = False, cache_dir: Path | None = None) -> Path:
    """The model file, checked against its sha256 (hashed once, then trusted while unchanged).

    Raises ``SttModelNotFoundError`` when it is not installed, ``ModelError`` when it is corrupt.
    """
    path = default_model_path()
    stamp = stamp_path((cache_dir or default_cache_dir()) / f"smart-turn-v3.2-{MODEL.sha256[:16]}.onnx")
    ensure_verified(MODEL, path, stamp, verify=verify)
    return path


class SmartTurn:
    """The Smart Turn v3.2 ONNX session. ``predict`` takes ~0.1 s of one CPU core (140 ms p50 on a 2-core Zen 3, bench/end_of_turn.py).

    Not thread-safe by contract (one STT thread calls it), though onnxruntime would cope.
    """

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(model_path) if model_path else ensure_model()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # The export is QDQ (int8 weights and activations around float ops). Fused into
        # onnxruntime's int8 kernels, its answers depend on the CPU: on AVX2 without VNNI the
        # u8s8 dot products saturate, and finished lines read as 0.03-0.5 complete (9 of the 13
        # fixture lines at >= 0.5 on a Zen 3, against 12 here). Run as the float ops it
        # describes, it answers the same on every x86-64 (~1.3x the fused time).
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in self._session.get_inputs()]
        if names != ["input_features"]:
            raise ValueError(f"{self.path} is not a Smart Turn v3 ONNX model (inputs: {names})")
        self.last_seconds = 0.0  # how long the last predict took (docs, the benchmark)
        log.info("Smart Turn loaded from %s", self.path)

    def predict(self, pcm: npt.NDArray[np.int16]) -> float:
        """Probability that the turn in ``pcm`` (its last 8 s count) is complete."""
        started = time.perf_counter()
        features = log_mel(fit_window(to_float32(as_int16(pcm))))[None]
        out = self._session.run(None, {"input_features": features})[0]
        self.last_seconds = time.perf_counter() - started
        return float(np.asarray(out).reshape(-1)[0])  # the export ends in a sigmoid

    def warm_up(self) -> None:
        """The first run allocates; do it before a player waits on it."""
        self.predict(np.zeros(STT_SAMPLE_RATE, np.int16))


# ---------------------------------------------------------------------- the text check

# Words a finished English line practically never ends on: conjunctions, fillers, articles.
# Kept short on purpose ("for", "that", "then" end real lines: "What for?", "See you then").
# A false "mid-thought" only makes the player wait the longer silence ("I think so"), it
# never cuts anyone off.
TRAILING_WORDS = frozenset(
    ["and", "or", "but", "so", "because", "cause", "um", "uh", "er", "erm", "uhm", "the", "a", "an", "my", "your"]
)
_LAST_WORD = re.compile(r"([a-z']+)[^a-z']*$")


def ends_mid_thought(text: str) -> bool:
    """Does the transcript end on a word that wants another after it ("…and", "um", "so")?

    Punctuation is ignored (Whisper ends almost every fragment with a full stop), except an
    ellipsis or a dash, which the recognizer writes for a trailing-off voice.
    """
    t = text.strip().lower()
    if not t:
        return False
    if t.endswith(("...", "…", "-", "—")):
        return True
    m = _LAST_WORD.search(t)
    return m is not None and m.group(1) in TRAILING_WORDS
