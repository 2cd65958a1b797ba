"""Who gets the CPU first, across sessions: the player waiting on audio or on the end of a turn.

Four rules, all measured on a 2-core machine (``bench/first_fragment.py``, docs/architecture.md):

* **Synthesis by playback deadline.** The TTS worker (``workers.ModelWorker``, a priority
  queue) takes the chunk whose playback runs dry first: a turn's first chunk is due *now*
  (the player hears nothing yet), a later one when the audio already sent for its turn has
  played (``playback_deadline``). Ties go first come, first served. A reply's opening words
  (its first chunk, and the rest of the clause a first window began) count as due
  ``OPENING_LEAD_S`` sooner: when sessions together ask for more speech than the CPU
  renders in real time (four long replies on two cores), every later sentence is already
  late, and by plain deadline a reply that has not begun waited behind all of them (5-9 s
  in the bench's N=4 phase) while each of them only lengthened a pause between sentences.
* **Later sentences on a lane of their own.** While another turn is live, a reply's later
  sentence renders on a second TTS thread (``Engine.tts_later``), on one intra-op thread, at
  the LLM's priority (``EngineConfig.tts_later_nice``): the voice's own thread stays free for
  any reply's first words, which no longer wait for a long render under way, and the LLM
  writing them is not outranked by it. One lowered thread renders less speech per second
  than the voice's two, so a later sentence still queued there once its playback has been
  dry for ``OPENING_LEAD_S`` moves to the voice's thread (``speech._render``): without that,
  pauses mid-reply reached 10-13 s in the bench's N=4 phase.
* **Recognition: finals first.** A decode that ends a player's turn (a push-to-talk release,
  the frames of a silence that may end the turn or start its speculative final) goes ahead of
  other sessions' partial decodes (``workers.URGENT``).
* **The LLM yields the CPU to the voice.** llama.cpp decodes ahead on its own thread whatever
  the reader does (a reader that pauses between tokens finds the next ones already made), so
  it cannot be paused between tokens from Python. Its threads instead run at a lower priority
  (``EngineConfig.llm_nice``, ``LLM_NICE`` by default): when a synthesis (or a recognition)
  wants the core, the kernel gives it first, and when nothing else runs the LLM has the whole
  core. Nothing waits on anything, so nothing can deadlock: a contended LLM is only slowed
  (at nice 10 it gets about a tenth of the core while a synthesis wants it), never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)

# How much lower (Linux nice) llama.cpp's threads run than the voice's. Measured with Kokoro
# on 2 intra-op threads while the LLM decodes nonstop: at nice 0 the first fragment
# "Well, traveller," takes 0.91 s (0.38 s idle: the two threads fight the LLM for a core and
# wait on each other); at 10 it takes 0.32 s. With one Kokoro thread it changes nothing
# measurable (one core each). See bench/first_fragment.py and docs/architecture.md.
LLM_NICE = 10

# How much sooner a reply's opening words are due than their playback deadline says. A pause
# between two sentences of an answer under way reads as the speaker pausing; silence after
# the player's line (an ack at most) reads as no answer. The first window is short (about
# half a second of speech), a later sentence whole: taking the opening first costs the later
# one far less wait than it saves. A later sentence dry for longer than this still goes
# first, so none waits without end behind a stream of new turns.
OPENING_LEAD_S = 3.0


def played_until(dry_at: float | None, now: float, duration_s: float) -> float:
    """When a turn's playback runs dry once a chunk of ``duration_s`` sent ``now`` has played:
    a game plays a chunk when it arrives or when the one before it ends, whichever is later
    (docs/protocol.md; the bench's player, ``benchmark.felt.listen``, does the same). A chunk
    sent after a silence (an ack, then the first words 1.5 s later) starts when it arrives."""
    return max(now, dry_at if dry_at is not None else now) + duration_s


def playback_deadline(dry_at: float | None, now: float, *, opening: bool = False) -> float:
    """When a turn's playback runs dry (``time.perf_counter()`` seconds): ``now`` for a turn
    that has sent no audio yet (its first chunk: the player is waiting), else ``dry_at``, when
    the audio sent so far has played (``played_until``; in the past for a turn already dry,
    which is overdue). ``opening`` (the reply's own first words, after an ack or nothing):
    that, less ``OPENING_LEAD_S``."""
    due = now if dry_at is None else dry_at
    return due - OPENING_LEAD_S if opening else due


def native_threads() -> frozenset[int]:
    """The ids of this process's threads (Linux; empty elsewhere): taken before and after a
    library starts its own threads, the difference is those threads."""
    with contextlib.suppress(OSError):
        return frozenset(int(t) for t in os.listdir("/proc/self/task"))
    return frozenset()


_lowered = threading.local()


def lower_this_thread(nice: int) -> None:
    """Run the calling thread ``nice`` lower than the process's main thread from now on, and
    remember it (``on_lowered_thread``). For a worker thread's initializer (a thread inherits
    its creator's nice, which may be another lowered thread: hence from the main thread's). A
    system without per-thread nice leaves it as it was."""
    if nice <= 0:
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice)
    except (OSError, AttributeError) as exc:
        log.debug("could not lower thread %d's priority: %s", tid, exc)
        return
    _lowered.nice = nice


def on_lowered_thread() -> bool:
    """Whether the calling thread runs at a lowered priority (``lower_this_thread``)."""
    return bool(getattr(_lowered, "nice", 0))


def lower_priority(threads: Iterable[int], nice: int = LLM_NICE) -> int:
    """Lower these threads' priority by ``nice`` (Linux: nice is per thread). Returns how many
    were lowered; a thread gone meanwhile, or a system without per-thread nice, is skipped
    (the engine still works, the voice just competes with the LLM as an equal)."""
    lowered = 0
    me = threading.get_native_id()
    for tid in threads:
        if tid == me:
            continue  # the loading thread is not the library's
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
            lowered += 1
        except (OSError, AttributeError) as exc:
            log.debug("could not lower thread %d's priority: %s", tid, exc)
    return lowered
