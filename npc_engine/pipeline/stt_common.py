"""Pieces the speech recognizer backends share: the speculative-final extension,
input checks, and the error a user sees when a model is missing.

The base ``TranscriberStream`` has ``accept`` / ``finalize`` / ``reset``. Every
backend here also implements ``prepare_final``: the session calls it when the
player goes silent (the VAD's ``silence_start``), so the decode runs during the
end-of-turn wait; ``finalize`` then returns that cached text if no audio arrived
since. Callers that hold a plain ``TranscriberStream`` can test for it with
``isinstance(stream, SpeculativeStream)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from npc_engine.pipeline.base import STT_SAMPLE_RATE, TranscriberStream


@runtime_checkable
class SpeculativeStream(TranscriberStream, Protocol):
    """A ``TranscriberStream`` that can decode ahead of ``finalize``."""

    def prepare_final(self) -> str:
        """Decode everything accepted so far and keep the result for ``finalize``.

        Does not reset. If more audio is accepted afterwards the cached text is
        dropped and ``finalize`` decodes again.
        """
        ...


class SttModelNotFoundError(FileNotFoundError):
    """The configured speech model is not on disk (and could not be fetched)."""


def as_int16(pcm: np.ndarray) -> np.ndarray:
    """Check that ``pcm`` is mono int16 (the wire format) and return it flat."""
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        raise TypeError(
            f"speech audio must be int16 PCM at {STT_SAMPLE_RATE} Hz, got dtype {pcm.dtype}; "
            "convert float audio with (x * 32767).astype(np.int16)"
        )
    if pcm.ndim != 1:
        if pcm.ndim == 2 and 1 in pcm.shape:
            return pcm.reshape(-1)
        raise ValueError(f"speech audio must be mono, got an array of shape {pcm.shape}")
    return pcm


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM to float32 in [-1, 1), the form the neural recognizers take."""
    return pcm.astype(np.float32) / 32768.0


def require_dir(path: Path, what: str, how_to_get: str) -> Path:
    """Return ``path`` if it is a directory, else raise a message the user can act on."""
    if not path.is_dir():
        raise SttModelNotFoundError(f"{what} not found at {path}. {how_to_get}")
    return path
