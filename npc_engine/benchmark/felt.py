"""What a player feels, from what the client received: pure functions, no sockets, no models.

* ``speech_end``: where the player's speech ends in a clip (the manifest says, else an
  energy scan), so a push-to-talk release can come 200-300 ms after it, as a player's does,
  and an open-mic turn can be timed from it rather than from the engine's own decision.
* ``listen``: a turn's messages with their arrival times -> felt TTFA (any audio, an
  acknowledgement such as "Hm." included), content TTFA (the first chunk of the reply's own
  words: ``reply.audio`` with ``ack`` false or absent), and the longest silence the player
  sat through, with the chunks played back to back as a game plays them.
* ``compare``: the new engine against the ``--baseline`` preset, p50 and p95 with ratios.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npc_engine.benchmark.stats import Summary, ratio, summarize

SPEECH_FRAME_S = 0.02  # the energy scan's window
SPEECH_HANG_S = 0.1  # a loud window must be followed by this much quiet to count as the end


def find_speech_end(pcm: np.ndarray, rate: int, rel_db: float = -35.0, floor: float = 300.0) -> float | None:
    """Seconds from the clip's start to the end of its last speech, by energy.

    A window is speech when its RMS is within ``rel_db`` of the loudest window and above
    ``floor`` (int16 units: silence with a little noise stays under it). Returns the end of
    the last speech window, or None for a clip with no speech at all.
    """
    n = max(1, round(rate * SPEECH_FRAME_S))
    samples = np.asarray(pcm, dtype=np.float64).reshape(-1)
    frames = len(samples) // n
    if frames == 0:
        return None
    rms = np.sqrt(np.mean(samples[: frames * n].reshape(frames, n) ** 2, axis=1))
    threshold = max(floor, float(rms.max()) * 10 ** (rel_db / 20))
    loud = np.flatnonzero(rms >= threshold)
    if len(loud) == 0:
        return None
    return round((int(loud[-1]) + 1) * n / rate, 4)


def speech_end(entry: dict[str, Any], pcm: np.ndarray, rate: int) -> float:
    """A clip's end of speech: the manifest's ``speech_end_s`` when it has one (measured when
    the fixture was made), else the energy scan; a clip the scan finds silent ends at its end."""
    given = entry.get("speech_end_s")
    if isinstance(given, int | float) and 0 < given <= len(pcm) / rate:
        return float(given)
    found = find_speech_end(pcm, rate)
    return found if found is not None else len(pcm) / rate


@dataclass(frozen=True)
class Heard:
    """A turn as the player heard it, in ms from the end of the player's turn."""

    felt_ms: float | None  # first reply.audio of any kind
    content_ms: float | None  # first reply.audio with the reply's own words (ack false or absent)
    acks: int  # acknowledgement chunks before the content
    longest_silence_ms: float | None  # the end of the turn -> first audio, and every gap in playback
    gaps_ms: tuple[float, ...] = field(default_factory=tuple)  # silences between chunks, as played


def listen(events: Sequence[tuple[float, dict[str, Any]]], t_end: float) -> Heard:
    """``events``: (arrival time in seconds, message) for a turn's messages, in arrival order;
    ``t_end``: when the player's turn ended, on the same clock.

    Playback is a game's: a chunk starts when it arrives or when the one before finishes,
    whichever is later, so a gap is only silence the player actually heard. A message
    without ``ack`` (an engine from before acknowledgements) is content.
    """
    felt = content = None
    acks = 0
    played_until: float | None = None
    gaps: list[float] = []
    for t, msg in events:
        if msg.get("type") != "reply.audio":
            continue
        if felt is None:
            felt = (t - t_end) * 1000
        elif played_until is not None and t > played_until:
            gaps.append((t - played_until) * 1000)
        if msg.get("ack"):
            if content is None:
                acks += 1
        elif content is None:
            content = (t - t_end) * 1000
        start = t if played_until is None else max(t, played_until)
        played_until = start + float(msg.get("duration") or 0.0)
    silences = ([felt] if felt is not None else []) + gaps
    return Heard(
        felt_ms=None if felt is None else round(felt, 2),
        content_ms=None if content is None else round(content, 2),
        acks=acks,
        longest_silence_ms=round(max(silences), 2) if silences else None,
        gaps_ms=tuple(round(g, 2) for g in gaps),
    )


# ---------------------------------------------------------------------------- new vs baseline


@dataclass(frozen=True)
class Comparison:
    """One metric of one kind of turn, the new engine against the baseline preset."""

    kind: str  # push_to_talk | typed | open_mic | all
    metric: str  # felt | content
    new: Summary | None
    baseline: Summary | None

    @property
    def p50_ratio(self) -> float | None:
        """baseline / new at the median: 2.0 is twice as fast."""
        return _ratio(self.baseline.median if self.baseline else None, self.new.median if self.new else None)

    @property
    def p95_ratio(self) -> float | None:
        return _ratio(self.baseline.p95 if self.baseline else None, self.new.p95 if self.new else None)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric,
                "new": self.new.to_dict() if self.new else None,
                "baseline": self.baseline.to_dict() if self.baseline else None,
                "p50_ratio": self.p50_ratio, "p95_ratio": self.p95_ratio}


def _ratio(a: float | None, b: float | None) -> float | None:
    r = ratio(a, b)
    return None if r is None else round(r, 2)


def compare(kind: str, metric: str, new: Iterable[float | None], baseline: Iterable[float | None]) -> Comparison:
    """The row for ``metric`` of ``kind`` turns from the two sides' samples (ms)."""
    return Comparison(kind, metric, summarize(new), summarize(baseline))
