"""One worker thread (or a few) per model, bridged to asyncio.

Models are CPU-bound and not re-entrant; giving each its own thread keeps the event loop
free and stops two stages from fighting over the same core (design notes, section 6).

Jobs wait in a priority queue, not a FIFO: each has a *deadline* (``time.perf_counter()``
seconds; ``run`` uses "now") and a free thread takes the earliest one, ties first come first
served. The TTS worker is given each chunk's playback deadline (``scheduling.py``), so the
chunk whose audio runs dry first is synthesized first across sessions; the STT worker puts
finals ahead of other sessions' partials (``URGENT``); a warm-up waits behind all live work.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from typing_extensions import TypeVarTuple, Unpack

from npc_engine.pipeline.scheduling import lower_this_thread

log = logging.getLogger(__name__)
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


# Deadlines of jobs that go ahead of everything timed (an STT final), and behind it (a warm-up).
URGENT = float("-inf")
WHENEVER = float("inf")


class _Done:
    """The producer finished."""


@dataclass(order=True)
class _Job:
    deadline: float
    seq: int  # ties: first come, first served
    name: str = field(compare=False)
    start: Callable[[], bool] = field(compare=False)  # False: cancelled while it waited
    execute: Callable[[], None] = field(compare=False)  # runs it, result or error to its future
    cancel: Callable[[], bool] = field(compare=False)
    fail: Callable[[BaseException], None] = field(compare=False)
    queued_at: float = field(compare=False, default_factory=time.perf_counter)


class ModelWorker:
    """A named thread pool dedicated to one model, taking its jobs earliest deadline first."""

    def __init__(self, name: str, threads: int = 1, nice: int = 0) -> None:
        """``nice``: its threads run that much lower in priority (Linux), from their start."""
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"npc-{name}",
                                        initializer=lower_this_thread, initargs=(nice,))
        self._background: asyncio.Semaphore | None = None
        # Jobs are handed to the pool only when a thread is free, so the pool's own FIFO never
        # holds more than it can run and the order is decided here, at the last moment.
        self._threads = threads
        self._busy = 0
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        # (deadline, name) of every job in the order it started: tests read the schedule here.
        self.started: list[tuple[float, str]] = []

    @property
    def queued(self) -> int:
        """Jobs waiting for a free thread of this worker."""
        with self._lock:
            return len(self._heap)

    def waiting(self) -> list[tuple[float, str]]:
        """(deadline, name) of the queued jobs, the next to run first (for tests and logs)."""
        with self._lock:
            return [(j.deadline, j.name) for j in sorted(self._heap)]

    def submit(self, deadline: float, fn: Callable[[], T], name: str | None = None) -> Future[T]:
        """Queue ``fn`` (thread-safe). A future cancelled before its turn never runs."""
        fut: Future[T] = Future()

        def execute() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the awaiting caller
                fut.set_exception(exc)

        label = name or str(getattr(fn, "__name__", "job"))
        job = _Job(deadline, next(self._seq), label, fut.set_running_or_notify_cancel, execute, fut.cancel, fut.set_exception)
        with self._lock:
            if self._closed:
                fut.set_exception(RuntimeError(f"worker {self.name} is shut down"))
                return fut
            heapq.heappush(self._heap, job)
        self._dispatch()
        return fut

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if self._busy >= self._threads or not self._heap:
                    return
                job = heapq.heappop(self._heap)
                if not job.start():
                    continue  # its caller gave up while it waited: the thread stays free
                self._busy += 1
                self.started.append((job.deadline, job.name))
                del self.started[:-256]  # a bounded log
            try:
                self._pool.submit(self._execute, job)
            except RuntimeError as exc:  # shut down meanwhile
                with self._lock:
                    self._busy -= 1
                job.fail(exc)

    def _execute(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            job.execute()
        finally:
            if log.isEnabledFor(logging.DEBUG):
                # Who waited for whom, with -v: the order the deadlines gave, and what it cost.
                ended = time.perf_counter()
                due = "" if abs(job.deadline) == float("inf") else f", due {1000 * (job.deadline - started):+.0f} ms"
                log.debug("%s: %s waited %.0f ms, ran %.0f ms%s", self.name, job.name,
                          1000 * (started - job.queued_at), 1000 * (ended - started), due)
            with self._lock:
                self._busy -= 1
            self._dispatch()

    async def run_background(self, fn: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
        """``run`` for work nobody waits on (a session's warm-up): at most one such job is in
        the thread pool's queue at a time, so a burst of them (many sessions opening at once)
        never piles up ahead of live requests. Cancelled while waiting, it never runs."""
        if self._background is None:
            self._background = asyncio.Semaphore(1)
        async with self._background:
            return await self.run_by(WHENEVER, fn, *args)

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
        """Run ``fn(*args)`` on this worker, due now: after jobs already due, first come first served."""
        return await self.run_by(time.perf_counter(), fn, *args)

    async def run_by(self, deadline: float, fn: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
        """Run ``fn(*args)`` on this worker when it is the queued job with the earliest
        ``deadline`` (``time.perf_counter()`` seconds, or ``URGENT`` / ``WHENEVER``)."""
        return await asyncio.wrap_future(self.submit(deadline, lambda: fn(*args), getattr(fn, "__name__", None)))

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

        def never_ran(job: Future[None]) -> None:
            # Cancelled while it waited (the worker shut down): end the stream rather than hang.
            if job.cancelled():
                with contextlib.suppress(RuntimeError):  # the loop is gone too: nobody waits
                    loop.call_soon_threadsafe(queue.put_nowait, _Done())

        job = self.submit(time.perf_counter(), produce)
        job.add_done_callback(never_ran)
        fut = asyncio.wrap_future(job)
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
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            waiting, self._heap = self._heap, []
        for job in waiting:
            job.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

