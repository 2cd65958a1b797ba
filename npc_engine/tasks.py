"""Background tasks that are always held, and awaited or cancelled (Python 3.10 has no TaskGroup).

A task nobody holds can be garbage-collected mid-flight, and one nobody awaits hides its
exception; everything the server or a session starts on the side goes through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine

log = logging.getLogger(__name__)


class BackgroundTasks:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)

    def adopt(self, task: asyncio.Task[None]) -> None:
        """Hold a task started elsewhere (``disown``): it is awaited or cancelled with these."""
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def disown(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """Stop holding ``task``, for another holder to ``adopt``: ``wait`` no longer waits for it."""
        self._tasks.discard(task)
        task.remove_done_callback(self._done)  # the new holder reports its failure, once
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Until every task running now has finished."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def cancel_all(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
