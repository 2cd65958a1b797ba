"""Start a text-only sidecar as a subprocess from a given source tree (for before/after runs).

Shared by the load scripts in bench/: the tree's own code runs (PYTHONPATH), its log is read
continuously by a held task so its pipe never fills, and ``stop`` ends both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Spawned:
    proc: asyncio.subprocess.Process
    log_reader: asyncio.Task[None]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        self.log_reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.log_reader


async def start_engine(
    root: Path, data: Path, port: int, *extra: str, env: Mapping[str, str] | None = None
) -> Spawned:
    """``npc-engine serve`` (no voice) from ``root`` on ``port``; returns once it is ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "npc_engine", "serve", "--tts", "none", "--stt", "none",
        "--endpoint", f"tcp://127.0.0.1:{port}", "--data-dir", str(data),
        "--characters", str(root / "characters"), "--story", str(root / "story"), *extra,
        cwd=str(root), env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=300)
        if not line:
            raise RuntimeError("the engine exited before it was ready")
        if b"npc-engine ready" in line:
            break
    return Spawned(proc, asyncio.get_running_loop().create_task(_read_log(proc)))


async def _read_log(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass
