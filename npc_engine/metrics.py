"""Per-turn stage timings on one monotonic clock.

A turn's clock starts at the end-of-turn decision (the moment the engine knows the player
has finished: a text line received, ``audio.end``, or the VAD's end of turn). Every mark
is milliseconds since then, so ``turn.end`` timings are directly comparable across turns
and the felt metric, time to first audio, is ``first_audio_sent``.

Not every mark happens in every turn: a text turn has no ``stt_final``, a scripted line
(greeting, story line, fallback) has no LLM marks and no ``first_clause``, a text-only
session has no audio marks. The orders in ``ORDER_CHAINS`` hold between any two marks
that are present (docs/protocol.md, section 11).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol

# Stage marks in pipeline order; `turn.end` reports those that happened.
STAGES: tuple[str, ...] = (
    "stt_final",  # final transcript ready (voice turns)
    "ack_sent",  # an acknowledgement ("Hm.", reply.audio ack: true) went out ahead of the reply
    "llm_first_token",
    "first_clause",  # first speakable fragment handed to TTS
    "tts_first_chunk",  # first audio chunk synthesized
    "first_audio_sent",  # first reply.audio handed to the socket
    "llm_done",
    "total",
)

# Keys measured before the clock starts (they are durations, not marks).
# preemptive_lead: a preemptive reply's head start, from the player falling silent (the
# speculative final) to the decision; marks it reached by then read 0.
BEFORE: tuple[str, ...] = ("end_of_turn_delay", "preemptive_lead")

# The orders that always hold between present marks. `llm_done` is not on the audio chain:
# a short reply is written before its first chunk is spoken, and the chunker may release
# the first clause only when the stream ends (after `llm_done`).
ORDER_CHAINS: tuple[tuple[str, ...], ...] = (
    ("stt_final", "llm_first_token", "first_clause", "tts_first_chunk", "first_audio_sent", "total"),
    ("stt_final", "llm_first_token", "llm_done", "total"),
)

# The path to first audio, stage by stage: each span is the time from the previous present
# mark (or the end of the turn) to this one. Their sum is `first_audio_sent`.
AUDIO_PATH: tuple[str, ...] = ORDER_CHAINS[0][:-1]


@dataclass
class TurnClock:
    t0: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)
    # Measured before t0 (e.g. VAD end-of-turn delay: end of speech -> decision).
    before: dict[str, float] = field(default_factory=dict)
    degraded: list[dict[str, str]] = field(default_factory=list)

    def now_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0

    def mark(self, stage: str) -> None:
        """Record the first time ``stage`` happens in this turn."""
        if stage not in self.marks:
            self.marks[stage] = round(self.now_ms(), 2)

    def rebase(self, t0: float) -> None:
        """Restart the clock at ``t0`` (a speculative turn learns its end-of-turn decision late).
        Marks reached before the decision count as reached at it (0 ms)."""
        shift = (t0 - self.t0) * 1000.0
        self.t0 = t0
        self.marks = {k: max(0.0, round(v - shift, 2)) for k, v in self.marks.items()}

    def degrade(self, stage: str, reason: str) -> None:
        self.degraded.append({"stage": stage, "reason": reason})

    def timings(self) -> dict[str, float]:
        out: dict[str, float] = {k: round(v, 2) for k, v in self.before.items()}
        out.update({k: self.marks[k] for k in STAGES if k in self.marks})
        return out


def order_violations(timings: dict[str, float]) -> list[str]:
    """The ordering rules ``timings`` breaks (empty when consistent), as readable sentences."""
    problems = []
    for key in STAGES:
        if key in timings and timings[key] < 0:
            problems.append(f"{key} is negative ({timings[key]} ms)")
    for chain in ORDER_CHAINS:
        present = [k for k in chain if k in timings]
        for a, b in itertools.pairwise(present):
            if timings[a] > timings[b]:
                problems.append(f"{a} ({timings[a]} ms) comes after {b} ({timings[b]} ms)")
    return problems


def audio_path_spans(timings: dict[str, float]) -> dict[str, float]:
    """Time spent on each stage of the path to first audio (ms), keyed by the mark that ends it.

    A turn without first audio gets no spans. Missing marks (a text turn has no
    ``stt_final``) fold their time into the next present stage.
    """
    if "first_audio_sent" not in timings:
        return {}
    spans, prev = {}, 0.0
    for key in AUDIO_PATH:
        if key in timings:
            spans[key] = round(timings[key] - prev, 2)
            prev = timings[key]
    return spans


class TurnLike(Protocol):
    """What the log line and the metrics hooks read from a finished turn (``TurnHandle``)."""

    @property
    def id(self) -> int | None: ...
    @property
    def source(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def interrupted(self) -> bool: ...
    @property
    def tokens(self) -> int: ...
    @property
    def audio_seconds(self) -> float: ...
    @property
    def clock(self) -> TurnClock: ...


def _ms(timings: dict[str, float], key: str) -> str:
    return f"{timings[key]:.0f}" if key in timings else "-"


def turn_log_line(session_id: str, character: str, turn: TurnLike) -> str:
    """One line per turn for the engine's log: what happened, how fast, and why it degraded."""
    t = turn.clock.timings()
    parts = [f"turn {session_id}/{turn.id} {character} {turn.source} {turn.status}"
             + (" (interrupted)" if turn.interrupted else "") + ":"]
    if "end_of_turn_delay" in t:
        parts.append(f"end-of-turn delay {_ms(t, 'end_of_turn_delay')} ms,")
    stages = [("stt", "stt_final"), ("first token", "llm_first_token"), ("first clause", "first_clause"),
              ("first audio", "first_audio_sent"), ("llm done", "llm_done"), ("total", "total")]
    parts.append(", ".join(f"{name} {_ms(t, key)}" for name, key in stages if key in t or key == "first_audio_sent") + " ms,")
    parts.append(f"{turn.tokens} tokens, {turn.audio_seconds:.1f} s audio")
    line = " ".join(parts)
    if turn.clock.degraded:
        line += "; degraded: " + "; ".join(f"{d['stage']}: {d['reason']}" for d in turn.clock.degraded)
    return line
