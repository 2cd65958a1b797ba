"""Streaming playback of the NPC's voice: chunks play as they arrive, gaplessly, and we know
at every frame which chunk is sounding and how far into it we are (for lips and subtitles).

pygame.mixer plays at 24 kHz mono PCM16 (what the engine sends). One Channel holds the
chunk playing and at most one queued behind it, so chunks join without gaps; we keep the
rest in our own queue. The playback clock is our own: a chunk starts when it is handed
to an idle channel, or exactly when the chunk before it ends if it was queued behind it.
With no audio device at all, the same clock runs silently so the face still talks.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pygame

from demo_game.face import VisemeTrack

log = logging.getLogger(__name__)

OUT_RATE = 24_000
LEVEL_HOP = 0.02  # seconds per loudness value (the fallback when a chunk has no visemes)


@dataclass
class PlayChunk:
    character: str
    turn: int
    index: int
    pcm: bytes
    rate: int
    duration: float
    text: str
    visemes: VisemeTrack = field(default_factory=lambda: VisemeTrack((), (), ()))
    words: list[dict[str, Any]] = field(default_factory=list)
    cues: list[dict[str, Any]] = field(default_factory=list)  # emotion/gesture/action, fired at start
    started_at: float | None = None
    volume: float = 1.0
    _levels: np.ndarray | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.character, self.turn, self.index)

    def level_at(self, t: float) -> float:
        """Loudness 0..1 at ``t`` seconds into the chunk."""
        if self._levels is None:
            samples = np.frombuffer(self.pcm, dtype="<i2").astype(np.float32) / 32768.0
            hop = max(1, int(self.rate * LEVEL_HOP))
            n = len(samples) // hop
            rms = np.sqrt(np.mean(samples[: n * hop].reshape(n, hop) ** 2, axis=1)) if n else np.zeros(1)
            peak = float(rms.max()) if rms.size and rms.max() > 0 else 1.0
            self._levels = rms / peak
        i = int(t / LEVEL_HOP)
        return float(self._levels[i]) if 0 <= i < len(self._levels) else 0.0


def resample(pcm: bytes, rate: int, to_rate: int) -> bytes:
    if rate == to_rate:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    n = round(len(x) * to_rate / rate)
    y = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x) if len(x) else x
    return y.astype("<i2").tobytes()


class AudioOut:
    def __init__(self, enabled: bool = True, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.problem: str | None = None  # a sentence for the status line when there is no sound
        self.rate = OUT_RATE
        self.channel: pygame.mixer.Channel | None = None
        if enabled:
            try:
                if not pygame.mixer.get_init():
                    pygame.mixer.init(frequency=OUT_RATE, size=-16, channels=1, buffer=1024)
                freq, _size, channels = pygame.mixer.get_init()
                self.rate = freq
                if channels != 1:
                    raise pygame.error(f"mixer opened with {channels} channels")
                pygame.mixer.set_num_channels(4)
                self.channel = pygame.mixer.Channel(0)
            except pygame.error as exc:
                self.problem = f"no sound output ({exc}); subtitles and lips still follow the voice"
                log.warning("%s", self.problem)
        self.pending: deque[PlayChunk] = deque()
        self.playing: PlayChunk | None = None
        self.queued: PlayChunk | None = None  # handed to the channel behind `playing`
        self._played: dict[tuple[str, int], float] = {}  # (character, turn) -> seconds finished
        self.track: str | None = None

    # ------------------------------------------------------------------ feeding

    def push(self, chunk: PlayChunk) -> None:
        self.pending.append(chunk)

    def update(self) -> list[PlayChunk]:
        """Advance the clock and feed the channel; returns chunks that started since last call."""
        now = self.clock()
        started: list[PlayChunk] = []
        while self.playing is not None and now >= self._end(self.playing):
            done = self.playing
            self._played[(done.character, done.turn)] = self._played.get((done.character, done.turn), 0.0) + done.duration
            self.playing, self.queued = self.queued, None
            if self.playing is not None:
                started.append(self.playing)
        if self.playing is None and self.pending:
            chunk = self.pending.popleft()
            chunk.started_at = now
            self._play(chunk, queue=False)
            self.playing = chunk
            started.append(chunk)
        if self.playing is not None and self.queued is None and self.pending:
            chunk = self.pending.popleft()
            chunk.started_at = self._end(self.playing)
            self._play(chunk, queue=True)
            self.queued = chunk
        return started

    def _play(self, chunk: PlayChunk, queue: bool) -> None:
        if self.channel is None:
            return
        sound = pygame.mixer.Sound(buffer=resample(chunk.pcm, chunk.rate, self.rate))
        sound.set_volume(chunk.volume)
        if queue and self.channel.get_busy():
            self.channel.queue(sound)
        else:
            self.channel.play(sound)

    @staticmethod
    def _end(chunk: PlayChunk) -> float:
        assert chunk.started_at is not None
        return chunk.started_at + chunk.duration

    # ------------------------------------------------------------------ queries

    def current(self) -> tuple[PlayChunk, float] | None:
        """The chunk sounding now and the seconds into it."""
        if self.playing is None or self.playing.started_at is None:
            return None
        t = self.clock() - self.playing.started_at
        return (self.playing, t) if 0 <= t < self.playing.duration else None

    def heard(self, character: str, turn: int) -> float:
        """Seconds of this turn's voice played so far (for cancel's ``heard``)."""
        played = self._played.get((character, turn), 0.0)
        now = self.current()
        if now is not None and now[0].character == character and now[0].turn == turn:
            played += now[1]
        return played

    def busy(self, character: str | None = None) -> bool:
        chunks = [c for c in (self.playing, self.queued, *self.pending) if c is not None]
        return any(character is None or c.character == character for c in chunks)

    def has_turn(self, character: str, turn: int) -> bool:
        """Whether any of this turn's audio is still playing or waiting to play."""
        return any(c is not None and c.character == character and c.turn == turn for c in (self.playing, self.queued, *self.pending))

    def turns(self, character: str) -> list[int]:
        """This character's turns with audio still playing or waiting to play, in order."""
        chunks = (self.playing, self.queued, *self.pending)
        return sorted({c.turn for c in chunks if c is not None and c.character == character})

    def find(self, character: str, turn: int, index: int) -> PlayChunk | None:
        for c in (self.playing, self.queued, *self.pending):
            if c is not None and c.key == (character, turn, index):
                return c
        return None

    # ------------------------------------------------------------------ ambience

    def ambience(self, track: str) -> None:
        """A story's ``music.play``: this demo has no music files, so it makes soft wind."""
        if self.channel is None or self.track == track:
            return
        self.track = track
        rng = np.random.default_rng(zlib.crc32(track.encode()))
        n = self.rate * 6
        noise = rng.standard_normal(n + 400).astype(np.float32)
        wind = np.convolve(noise, np.ones(400, dtype=np.float32) / 400, mode="valid")[:n]
        t = np.arange(n, dtype=np.float32) / self.rate
        swell = 0.55 + 0.45 * np.sin(2 * np.pi * t / 6.0) ** 2  # one full swell per loop: seamless
        hum = 0.15 * np.sin(2 * np.pi * 55 * t) * swell
        x = (wind / (np.abs(wind).max() or 1.0)) * swell + hum
        pcm = (x / np.abs(x).max() * 9000).astype("<i2").tobytes()
        sound = pygame.mixer.Sound(buffer=pcm)
        sound.set_volume(0.35)
        pygame.mixer.Channel(1).play(sound, loops=-1, fade_ms=1500)

    # ------------------------------------------------------------------ barge-in

    def stop(self, character: str | None = None) -> None:
        """Silence now (all, or one character's chunks): the player spoke over the NPC."""
        if character is None or any(c is not None and c.character == character for c in (self.playing, self.queued)):
            if self.channel is not None:
                self.channel.stop()
            self.playing = self.queued = None
        self.pending = deque(c for c in self.pending if character is not None and c.character != character)
