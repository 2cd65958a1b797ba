"""Per-turn stage timings on one monotonic clock.

A turn's clock starts at the end-of-turn decision (the moment the engine knows the player
has finished: a text line received, ``audio.end``, or the VAD's end of turn). Every mark
is milliseconds since then, so ``turn.end`` timings are directly comparable across turns
and the felt metric, time to first audio, is ``first_audio_sent``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# Stage marks in pipeline order; `turn.end` reports those that happened.
STAGES: tuple[str, ...] = (
    "stt_final",  # final transcript ready (voice turns)
    "llm_first_token",
    "first_clause",  # first speakable fragment handed to TTS
    "tts_first_chunk",  # first audio chunk synthesized
    "first_audio_sent",  # first reply.audio handed to the socket
    "llm_done",
    "total",
)


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

    def degrade(self, stage: str, reason: str) -> None:
        self.degraded.append({"stage": stage, "reason": reason})

    def timings(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(v, 2) for k, v in self.before.items()}
        out.update({k: self.marks[k] for k in STAGES if k in self.marks})
        return out
