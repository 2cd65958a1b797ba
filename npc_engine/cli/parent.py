"""``serve --parent-pid PID``: an engine that a game started stops when the game is gone.

A game that spawns its own sidecar stops it on the way out (SIGINT, then waits). A game that
dies (a crash, ``kill -9``, a closed terminal) cannot, and the engine would serve nobody, hold
its port and its models' memory, forever. So it watches: a held task polls every half second
whether the game is still there, and once it is not, stops the server the way SIGINT does
(turns end, state is saved). If the game goes while the models are still loading, the start-up
is abandoned.

"Still there": when PID is this process's parent (the usual case: the game ran us), the parent
changing is the test, since a dead parent's pid can be reused and a dead but unreaped one is
still a pid; otherwise (a launcher in between) whether the pid exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Protocol

log = logging.getLogger("npc_engine")

POLL_S = 0.5


class Stoppable(Protocol):
    def stop(self) -> None: ...


def pid_exists(pid: int) -> bool:
    if sys.platform == "win32":
        import ctypes

        synchronize, wait_timeout = 0x00100000, 0x102
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(synchronize, False, pid)
        if not handle:
            return False
        try:
            return bool(kernel32.WaitForSingleObject(handle, 0) == wait_timeout)
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, and belongs to someone else
    return True


class ParentWatch:
    """Stops the engine once process ``pid`` has exited; ``start`` it in the start-up task."""

    def __init__(self, pid: int, poll_s: float = POLL_S) -> None:
        self.pid = pid
        self.poll_s = poll_s
        # Our own parent: watch for being re-parented (exact, and immune to pid reuse).
        self.direct = sys.platform != "win32" and os.getppid() == pid
        self.gone = False
        self._server: Stoppable | None = None
        self._startup: asyncio.Task[object] | None = None
        self._task: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        return os.getppid() == self.pid if self.direct else pid_exists(self.pid)

    def start(self) -> None:
        """Watch from now; until ``serving``, the parent's exit cancels the calling (start-up) task."""
        self._startup = asyncio.current_task()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="npc-parent-watch")

    def serving(self, server: Stoppable) -> None:
        """From now on the parent's exit stops ``server`` (as SIGINT does)."""
        self._server = server
        if self.gone:
            server.stop()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        # Another process's exit is no event a portable asyncio loop can wait on: poll.
        while self.alive():  # noqa: ASYNC110
            await asyncio.sleep(self.poll_s)
        self.gone = True
        if self._server is not None:
            log.warning("the process that started this engine (pid %d) has exited: stopping", self.pid)
            self._server.stop()
        elif self._startup is not None:
            log.warning("the process that started this engine (pid %d) has exited: not starting", self.pid)
            self._startup.cancel()
