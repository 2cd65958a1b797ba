"""Small helpers the STT tests share."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SR = 16_000


def frames(pcm: np.ndarray, size: int = 320) -> Iterator[np.ndarray]:
    """The clip as the wire sends it: ~20 ms frames."""
    for k in range(0, len(pcm), size):
        yield pcm[k : k + size]


def seconds(samples: int) -> float:
    return samples / SR
