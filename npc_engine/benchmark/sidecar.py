"""Spawn ``python -m npc_engine serve`` for a benchmark: free loopback port, temp data dir.

The sidecar is a separate process, as a game would run it, so its event loop and threads
never share a GIL with the benchmark's client. Its log goes to a file (its path is in the
report) instead of interleaving with the benchmark's progress.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = "npc-engine ready on"
PRERENDER_START = "pre-rendering "  # npc_engine.engine logs these two at INFO
PRERENDER_DONE = "pre-rendered "


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    endpoint: str
    data_dir: Path
    log_path: Path
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @classmethod
    def spawn(cls, serve_args: list[str], keep_dir: Path | None = None, share_cache: Path | None = None) -> Sidecar:
        """``share_cache``: another sidecar's cache directory, used as this one's (its
        pre-rendered lines are reused; the cache writes each file atomically)."""
        tmp = None
        if keep_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="npc-bench-")
            base = Path(tmp.name)
        else:
            base = keep_dir
            base.mkdir(parents=True, exist_ok=True)
        data_dir = base / "data"
        log_path = base / "sidecar.log"
        if share_cache is not None:
            share_cache.mkdir(parents=True, exist_ok=True)
            data_dir.mkdir(parents=True, exist_ok=True)
            (data_dir / "cache").symlink_to(share_cache.resolve(), target_is_directory=True)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cmd = [sys.executable, "-m", "npc_engine", "serve", "--endpoint", endpoint, "--data-dir", str(data_dir), *serve_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return cls(proc, endpoint, data_dir, log_path, tmp)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Block until the sidecar prints its ready line; returns the seconds it took."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited (code {self.proc.returncode}) before it was ready; "
                                   f"its log ({self.log_path}) ends:\n{self.log_tail()}")
            if READY in self.log_path.read_text(errors="replace"):
                return time.perf_counter() - t0
            time.sleep(0.2)
        raise RuntimeError(f"the sidecar was not ready within {timeout:.0f} s; its log ({self.log_path}) ends:\n{self.log_tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the sidecar so far (Linux /proc), None where unavailable."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def prerendering(self) -> bool:
        """The engine logged that it started pre-rendering scripted lines and not yet that it
        finished (``Engine._prerender``)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return PRERENDER_START in text and PRERENDER_DONE not in text

    def wait_idle(self, max_wait: float = 300.0, busy_share: float = 0.15, window: float = 1.5) -> float:
        """Wait until the sidecar's background pre-rendering of scripted lines is done (its
        log says so) and it uses less than ``busy_share`` of a core over ``window`` seconds;
        returns the wait. The log matters on a loaded machine, where a sidecar still
        rendering can get less than ``busy_share`` of a core."""
        t0 = time.perf_counter()
        last = self.cpu_seconds()
        while time.perf_counter() - t0 < max_wait:
            time.sleep(window)
            now = self.cpu_seconds()
            idle = now is None or last is None or (now - last) / window < busy_share
            if idle and not self.prerendering():
                break
            last = now
        return time.perf_counter() - t0

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the sidecar saves state and unloads cleanly
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
