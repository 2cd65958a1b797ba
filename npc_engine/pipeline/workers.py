"""One worker thread (or a few) per model, bridged to asyncio.

Models are CPU-bound and not re-entrant; giving each its own thread keeps the event loop
free and stops two stages from fighting over the same core (design notes, section 6).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from typing_extensions import TypeVarTuple, Unpack

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _Done:
    """The producer finished."""


class ModelWorker:
    """A named thread pool dedicated to one model."""

    def __init__(self, name: str, threads: int = 1) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"npc-{name}")
        self._background: asyncio.Semaphore | None = None

    @property
    def queued(self) -> int:
        """Jobs waiting for a free thread of this worker."""
        return self._pool._work_queue.qsize()

    async def run_background(self, fn: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
        """``run`` for work nobody waits on (a session's warm-up): at most one such job is in
        the thread pool's queue at a time, so a burst of them (many sessions opening at once)
        never piles up ahead of live requests. Cancelled while waiting, it never runs."""
        if self._background is None:
            self._background = asyncio.Semaphore(1)
        async with self._background:
            return await self.run(fn, *args)

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def stream(self, make_iter: Callable[[], Iterator[T]], cancel: threading.Event) -> AsyncGenerator[T, None]:
        """Drive a blocking iterator on this worker, yielding its items on the event loop.

        Items are handed over as soon as they are produced. Setting ``cancel`` (or
        closing the async iterator) makes the producer stop at its next item.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[T | _Done | BaseException] = asyncio.Queue()
        closed = threading.Event()

        def produce() -> None:
            if cancel.is_set() or closed.is_set():
                # Given up on while it waited for a free thread (a turn that fell back at its
                # budget, a closed session): never start the model for it, so the queue drains.
                loop.call_soon_threadsafe(queue.put_nowait, _Done())
                return
            it = make_iter()
            try:
                for item in it:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                    if cancel.is_set() or closed.is_set():
                        break
                loop.call_soon_threadsafe(queue.put_nowait, _Done())
            except BaseException as exc:  # hand the failure to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()  # lets a generator backend stop its model at once

        fut = loop.run_in_executor(self._pool, produce)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Done):
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            closed.set()
            # The producer stops at its next item; don't wait for it on the hot path.
            fut.add_done_callback(lambda f: f.exception())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
