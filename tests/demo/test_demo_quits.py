"""The demo quits on Ctrl-C, and an engine it started never outlives it.

Real processes: the demo runs headless (SDL's dummy drivers) as a subprocess and spawns a real
engine (text only: tts and stt none); signals are real signals. Every wait is on a condition
(a log line, a process exit, a pid's end) and bounded.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from .conftest import REPO, free_endpoint

pytestmark = pytest.mark.slow

ENGINE_START_S = 300.0  # a cold start on a busy 2-core machine; seconds when idle
QUIT_S = 120.0  # the engine finishes what it is doing, saves and unloads
ENGINE_ARGS = ["--tts=none", "--stt=none"]
ENV = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}


class Lines:
    """A process's output, line by line, read on a thread so that waits can time out."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def until(self, pred: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"{what}: not after {timeout:.0f} s; output:\n" + "\n".join(self.seen[-30:])
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"{what}: the process ended; output:\n" + "\n".join(self.seen[-30:])
            self.seen.append(line)
            if pred(line):
                return line


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not our child) has ended within ``timeout`` (a zombie has)."""
    try:
        fd = os.pidfd_open(pid)  # readable once the process has exited: no polling
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # no pidfd (not Linux, or an old kernel): poll /proc
        return _poll_gone(pid, timeout)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def _poll_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def kill_engine(pid: int) -> None:
    """SIGKILL ``pid`` if it is still one of our engines (never a stranger that got its pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"npc_engine" in cmdline and b"serve" in cmdline:
        os.kill(pid, signal.SIGKILL)


@dataclass
class Spawned:
    children: list[subprocess.Popen[str]] = field(default_factory=list)
    engines: list[int] = field(default_factory=list)


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    """Our subprocesses and the engines they started, killed at the end whatever happened: a
    failed test must not leave an engine behind."""
    procs = Spawned()
    yield procs
    for child in procs.children:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdin is not None:
            child.stdin.close()
    for pid in procs.engines:
        kill_engine(pid)


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize(
    ("how", "codes"),
    [
        ("SIGINT", (0, 130)),
        # A script that starts the game with `&` makes it ignore SIGINT; Ctrl-C must still quit it.
        ("SIGINT, launched in the background by a script", (0, 130)),
        # SDL turns SIGTERM into a window-close event that a headless script never read.
        ("SIGTERM", (0, 143)),
    ],
)
def test_a_signal_quits_the_demo_and_stops_its_engine(tmp_path: Path, spawned: Spawned, how: str,
                                                       codes: tuple[int, ...]) -> None:
    script = tmp_path / "wait.txt"
    script.write_text("wait_ready 300\nwait 600\n")
    cmd = [sys.executable, "-m", "demo_game", "--endpoint", free_endpoint(), "--no-mic", "--text-only",
           *(f"--engine-arg={a}" for a in ENGINE_ARGS), "--engine-data-dir", str(tmp_path / "engine"),
           "--save", str(tmp_path / "save.json"), "--headless-script", str(script)]
    if "background" in how:
        cmd = ["sh", "-c", 'trap "" INT; exec "$0" "$@"', *cmd]  # what `cmd &` in a script does
    demo = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    spawned.children.append(demo)
    out = Lines(demo.stdout)
    engine_pid = int(out.until(lambda ln: "engine pid" in ln, 60, "the demo spawns an engine").split()[-1])
    spawned.engines.append(engine_pid)
    out.until(lambda ln: "script:2: wait 600" in ln, ENGINE_START_S, "the engine is up and the script waits")

    demo.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    try:
        code = demo.wait(QUIT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{how}: the demo is still running after {QUIT_S:.0f} s") from None
    assert code in codes, f"{how}: exit code {code}; output:\n" + "\n".join(out.seen[-20:])
    assert wait_gone(engine_pid, QUIT_S), f"{how}: the engine the demo started is still running"


# --------------------------------------------------------------------------- parent watch

PARENT = """
import subprocess
import sys
import time
from pathlib import Path

from demo_game.engine_proc import EngineProcess

endpoint, data_dir, when, log_fd = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if when == "loading":
    # Kokoro loads for seconds. The engine's log goes to a pipe the test reads (with the game's
    # own pipe it would fail writing to it once the game is gone, and stop by accident).
    proc = EngineProcess(endpoint, data_dir, ["--stt=none"])
    child = subprocess.Popen(proc.command(), stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT)
    print("engine", child.pid, flush=True)
else:
    proc = EngineProcess(endpoint, data_dir, {engine_args!r})
    proc.start()
    print("engine", proc.pid, flush=True)
    deadline = time.monotonic() + {start_s}
    while not proc.ready and proc.exit_code is None and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.05)
    print("ready" if proc.ready else "not ready", flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.parametrize("when", ["ready", "loading"])
def test_an_engine_exits_when_the_game_that_started_it_is_killed(tmp_path: Path, spawned: Spawned,
                                                                  when: str) -> None:
    """``kill -9`` of the game: nobody stops the engine, so it must see its parent go, whether it
    is serving or still loading its models."""
    code = PARENT.format(engine_args=ENGINE_ARGS, start_s=ENGINE_START_S)
    log_r, log_w = os.pipe()
    parent = subprocess.Popen(
        [sys.executable, "-c", code, free_endpoint(), str(tmp_path / "engine"), when, str(log_w)],
        cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        pass_fds=(log_w,),
    )
    os.close(log_w)
    spawned.children.append(parent)
    out = Lines(parent.stdout)
    engine_log = Lines(os.fdopen(log_r))
    engine_pid = int(out.until(lambda ln: ln.startswith("engine "), 60, "the parent spawns an engine").split()[1])
    spawned.engines.append(engine_pid)
    if when == "ready":
        out.until(lambda ln: ln == "ready", ENGINE_START_S + 10, "the engine is ready")
    else:
        engine_log.until(lambda ln: "loading TTS" in ln, ENGINE_START_S, "the engine loads its voice")

    parent.kill()
    parent.wait(QUIT_S)
    assert wait_gone(engine_pid, QUIT_S), f"the engine outlived the game that started it ({when})"
