"""Small audio measurements shared by the TTS tests."""

from __future__ import annotations

import numpy as np


def frame_rms(pcm: np.ndarray, hop: int) -> np.ndarray:
    """RMS of consecutive ``hop``-sample frames of int16 or float audio, on a 0..1 scale."""
    audio = pcm.astype(np.float32) / (32768.0 if pcm.dtype == np.int16 else 1.0)
    n = len(audio) // hop
    return np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1))
