"""The demo game runs headless in tests: SDL's dummy video and audio drivers (no window,
no sound card; the dummy audio device still consumes samples in real time)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

REPO = Path(__file__).resolve().parent.parent.parent
SPEECH = REPO / "tests" / "fixtures" / "speech"


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def endpoint() -> str:
    return free_endpoint()
