"""Run a model on one core or on several, whichever has been faster lately.

A model that answers the player (Kokoro's first chunk, Whisper's final) is faster on two
intra-op threads when the other core is free: Kokoro's "Well, traveller," takes 0.39 s on two
threads against 0.68 s on one, even with the LLM decoding beside it at nice 10 (the voice gets
the core first, ``scheduling.py``). But on a machine that other programs also load, two
threads can be slower than one (1.5 s against 0.62 s in one measurement, docs/architecture.md):
every operator waits for the slower of its threads, and one of them keeps losing its core. No
fixed count is right on every machine, so a model keeps one instance per thread count and
``ThreadChoice`` picks, run by run, the one whose recent runs cost least per unit of work
(seconds per second of audio rendered, or per 30 s window decoded), and now and then runs
the other to see whether the machine has changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Weight of the newest run in the running cost: a load that comes or goes shows within a few runs.
ALPHA = 0.3
# Every this many runs, the option not in favour runs once, so a stale cost (measured while
# the machine was busy) cannot exclude it for good. Costs at most one run in this many.
PROBE_EVERY = 8


@dataclass(slots=True)
class _Option(Generic[T]):
    threads: int
    model: T
    cost: float | None = None  # running seconds per unit of work; None: not run yet


class ThreadChoice(Generic[T]):
    """Instances of one model, by intra-op thread count, with the cost of their recent runs."""

    def __init__(self, models: Sequence[tuple[int, T]], *, probe_every: int = PROBE_EVERY) -> None:
        if not models:
            raise ValueError("ThreadChoice needs at least one model")
        # Most threads first: an untried machine starts on the count that wins when it is idle.
        self._options = [_Option(n, m) for n, m in sorted(models, key=lambda nm: -nm[0])]
        self._probe_every = probe_every
        self._runs = 0
        self._probe_due = False
        self._lock = threading.Lock()

    @property
    def models(self) -> list[T]:
        return [o.model for o in self._options]

    def pick(self, urgent: bool = False) -> tuple[int, T]:
        """(thread count, model) for the next run; report it with ``record``. An ``urgent`` run
        (one the player is waiting on: a reply's first words) always takes the favourite; a
        probe that falls due on it waits for the next run that has slack."""
        with self._lock:
            self._runs += 1
            if self._runs % self._probe_every == 0:
                self._probe_due = True
            untried = next((o for o in self._options if o.cost is None), None)
            if untried is not None:
                return untried.threads, untried.model
            ranked = sorted(self._options, key=lambda o: o.cost or 0.0)
            option = ranked[0]
            if len(ranked) > 1 and self._probe_due and not urgent:
                option, self._probe_due = ranked[1], False
            return option.threads, option.model

    def record(self, threads: int, seconds: float, work: float) -> None:
        """A run on ``threads`` threads took ``seconds`` for ``work`` units (> 0)."""
        if work <= 0:
            return
        with self._lock:
            option = next((o for o in self._options if o.threads == threads), None)
            if option is None:
                return
            cost = seconds / work
            option.cost = cost if option.cost is None else (1 - ALPHA) * option.cost + ALPHA * cost

    def run(self, call: Callable[[T], R], work: Callable[[R], float], urgent: bool = False, *, spare: bool = False) -> R:
        """``call`` the instance ``pick`` chooses, timed, and ``record`` it; ``work`` says how
        much the result was worth (seconds of audio rendered, seconds of window decoded).

        ``spare``: the run leaves the other cores to more urgent work (a later sentence on the
        lowered later lane, while the LLM and other players' first words want them): the
        fewest threads, and its time is not recorded, since it measures the machine shared,
        not the choice ``pick`` makes."""
        if spare:
            return call(min(self._options, key=lambda o: o.threads).model)
        threads, model = self.pick(urgent)
        started = time.perf_counter()
        result = call(model)
        self.record(threads, time.perf_counter() - started, work(result))
        return result

    def costs(self) -> dict[int, float | None]:
        """Running cost by thread count (logs, tests)."""
        with self._lock:
            return {o.threads: o.cost for o in self._options}


def thread_counts(most: int) -> list[int]:
    """The counts a model keeps instances for: one thread, and ``most`` when that is more."""
    return [1] if most <= 1 else [1, most]
