"""Starting and stopping our own sidecar when none is running: ``python -m npc_engine serve``.

The engine logs its start-up ("loading LLM (embedded) ...", "loaded ... in 0.4 s",
"engine ready in 9.1 s"); a reader thread collects those lines so the game can draw a
loading screen from them instead of a frozen window. A game that ships the sidecar
does the same: start the process, show its progress, connect once it says it is ready,
and stop it with SIGINT (Ctrl-C) on exit so it saves state and unloads cleanly.

The engine is told our pid (``--parent-pid``): if the game dies without stopping it (a crash,
``kill -9``), the engine sees its parent go and stops by itself within half a second.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What a default engine loads, in order: characters and story, LLM, TTS, fallback TTS,
# TTS warm-up, STT, STT warm-up, VAD. A guess for the bar; the list shows what really happens.
EXPECTED_STEPS = 8
_LOADING = re.compile(r"loading (.+?) \.\.\.\s*$")
_LOADED = re.compile(r"loaded (.+?) in ([\d.]+) s")
_READY = re.compile(r"(engine ready|npc-engine ready on)")


@dataclass
class LoadStep:
    what: str
    done: bool = False
    seconds: float | None = None


@dataclass
class EngineProcess:
    endpoint: str
    data_dir: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    python: str = sys.executable
    steps: list[LoadStep] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    ready: bool = False
    started_at: float = 0.0
    proc: subprocess.Popen[str] | None = None
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "npc_engine", "serve", "--endpoint", self.endpoint]
        cmd += ["--parent-pid", str(os.getpid())]  # it stops by itself if we die without stopping it
        for flag, sub in (("--characters", "characters"), ("--story", "story")):
            if (REPO / sub).is_dir() and flag not in self.extra_args:
                cmd += [flag, str(REPO / sub)]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        return cmd + self.extra_args

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.steps.clear()
        self.log_tail.clear()
        self.ready = False
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,  # a Ctrl-C in the game's terminal reaches us, and we stop it ourselves
        )
        threading.Thread(target=self._read, args=(self.proc,), name="engine-log", daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line.rstrip("\n"))

    def poll(self) -> list[str]:
        """Take in new log lines (call once a frame); returns them."""
        new: list[str] = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            new.append(line)
            self._parse(line)
        self.log_tail = (self.log_tail + new)[-40:]
        return new

    def _parse(self, line: str) -> None:
        if m := _LOADING.search(line):
            self.steps.append(LoadStep(m.group(1)))
        elif m := _LOADED.search(line):
            what = m.group(1)
            step = next((s for s in reversed(self.steps) if s.what == what and not s.done), None)
            if step is None:
                step = LoadStep(what)
                self.steps.append(step)
            step.done, step.seconds = True, float(m.group(2))
        if _READY.search(line):
            self.ready = True

    @property
    def progress(self) -> float:
        if self.ready:
            return 1.0
        done = sum(s.done for s in self.steps)
        return min(0.97, done / max(EXPECTED_STEPS, len(self.steps) + 1))

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def failure(self) -> str:
        """The engine's own last words, for the error screen."""
        errors = [ln for ln in self.log_tail if "ERROR" in ln or "Error" in ln or "error:" in ln]
        return (errors or self.log_tail or ["(no output)"])[-1]

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (the engine saves and unloads), wait; then SIGTERM, then SIGKILL.

        Interrupted while it waits (a second Ctrl-C: the engine is finishing a model call), the
        engine still has its SIGINT and goes on stopping by itself; we stop waiting for it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                    try:
                        proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        except KeyboardInterrupt:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # at least once, whenever the interruption came
            raise
        return proc.poll()  # the reader thread ends by itself at the pipe's EOF
