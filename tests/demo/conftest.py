"""The demo game runs headless in tests: SDL's dummy video and audio drivers (no window,
no sound card; the dummy audio device still consumes samples in real time)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

if TYPE_CHECKING:  # pygame is imported by the tests, after the SDL drivers below are set
    from demo_game.app import App

REPO = Path(__file__).resolve().parent.parent.parent
SPEECH = REPO / "tests" / "fixtures" / "speech"


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def endpoint() -> str:
    return free_endpoint()


def step_until(app: App, pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the game's frames until ``pred()`` holds (``timeout`` is a safety net only)."""
    t0 = time.monotonic()
    dt = 0.0
    while not pred():
        assert app.state != "error", f"{what}: {app.error_title}: {app.error_lines}"
        assert time.monotonic() - t0 < timeout, f"{what}: not done after {timeout:.0f} s{_what_happened(app)}"
        app.step(dt)
        dt = app.tick()


def _what_happened(app: App) -> str:
    """The game's recent toasts and its engine's last log lines, for a step that timed out."""
    game = getattr(app, "game", None)
    toasts = [t.text for t in game.toasts] if game is not None else []
    lines = app.proc.log_tail if app.proc is not None else ["(an engine the test did not start)"]
    return "\n--- toasts ---\n" + "\n".join(toasts) + "\n--- engine log (tail) ---\n" + "\n".join(lines)
