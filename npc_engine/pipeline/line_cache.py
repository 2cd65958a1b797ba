"""Pre-rendered lines on disk: greetings, fallbacks and a story's verbatim lines play with no TTS wait.

Each line is keyed by a hash of (text, voice id, speed, synthesizer model hash),
so changing any of them renders it afresh rather than playing a stale take.
A line is two files: ``<key>.npz`` (the int16 PCM) and ``<key>.json`` (text,
voice, sample rate, viseme and word tracks). Both are written atomically; the
JSON is written last and is what ``has`` looks for, so a half-written entry is
never read.

Only lines the writers authored go to disk. A line whose template was filled with a
player's values (``Hello, {player_name}``) is a new text for every player: written to disk
it would stay there forever, one file pair per name any game sends. Given the authored
lines (``keep``), the cache writes only those; any other line is kept in a small in-memory
LRU (a greeting repeated in one play session is still synthesized once).

A few lines must cost nothing at all when they are needed: a character's acknowledgements
("Hm.", "Aye.") go out within milliseconds of the end of the player's turn, when there is no
time to read a file, let alone to wait for the TTS thread. ``pin`` keeps such a line in memory
(rendered or loaded off the event loop, once); ``pinned`` hands it over without blocking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from npc_engine.pipeline.base import SpeechChunk, Synthesizer, Timed, Voice

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MEMORY_LINES = 64  # lines kept in memory only (templated with players' values)


def line_key(text: str, voice: Voice, model_hash: str) -> str:
    payload = json.dumps([FORMAT_VERSION, " ".join(text.split()), voice.id, round(voice.speed, 4), model_hash],
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def model_hash_of(synth: Synthesizer) -> str:
    """The synthesizer's model identity (``model_hash`` if it has one, else its name)."""
    return str(getattr(synth, "model_hash", None) or synth.name)


class LineCache:
    """``get_or_render(text, voice)``: from disk if rendered before, else synthesize once and store."""

    def __init__(
        self,
        directory: Path | str,
        synth: Synthesizer,
        *,
        keep: Iterable[tuple[str, Voice]] | None = None,
        memory_lines: int = MEMORY_LINES,
    ) -> None:
        """``keep``: the only lines written to disk (None: every line)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.synth = synth
        self._model_hash = model_hash_of(synth)
        self._lock = threading.Lock()
        self.renders = 0  # lines synthesized (cache misses), for tests and stats
        self._keep = None if keep is None else {self.key(t, v) for t, v in keep}
        self._memory: OrderedDict[str, SpeechChunk] = OrderedDict()
        self._memory_lines = memory_lines
        self._pinned: dict[str, SpeechChunk] = {}  # never evicted: a few short lines per character

    def on_disk(self, text: str, voice: Voice) -> bool:
        """Whether this line belongs on disk (an authored line, not one filled in per player)."""
        return self._keep is None or self.key(text, voice) in self._keep

    def key(self, text: str, voice: Voice) -> str:
        return line_key(text, voice, self._model_hash)

    def paths(self, text: str, voice: Voice) -> tuple[Path, Path]:
        key = self.key(text, voice)
        return self.directory / f"{key}.npz", self.directory / f"{key}.json"

    def has(self, text: str, voice: Voice) -> bool:
        audio, meta = self.paths(text, voice)
        return audio.is_file() and meta.is_file()

    def get(self, text: str, voice: Voice) -> SpeechChunk | None:
        """The stored line, or None if it is not cached (or its files are unreadable)."""
        audio_path, meta_path = self.paths(text, voice)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            with np.load(audio_path) as data:
                pcm = data["pcm"].astype(np.int16)
            return SpeechChunk(
                text=meta["text"],
                pcm=pcm,
                sample_rate=int(meta["sample_rate"]),
                visemes=[Timed(*v) for v in meta["visemes"]],
                words=[Timed(*w) for w in meta["words"]],
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring unreadable cached line %s: %s", meta_path, error)
            return None

    def stored(self, text: str, voice: Voice) -> SpeechChunk | None:
        """The line if it was rendered before (pinned, in memory or on disk), else None: never
        synthesizes. Blocking (a file read): run it off the event loop, but not on the TTS
        worker, where it would wait behind other sessions' renders for a few ms of disk."""
        key = self.key(text, voice)
        with self._lock:
            chunk = self._pinned.get(key) or self._memory.get(key)
            if chunk is not None:
                if key in self._memory:
                    self._memory.move_to_end(key)
                return chunk
        return self.get(text, voice) if self.on_disk(text, voice) else None

    def get_or_render(self, text: str, voice: Voice) -> SpeechChunk:
        if not self.on_disk(text, voice):
            return self._in_memory(text, voice)
        cached = self.get(text, voice)
        if cached is not None:
            return cached
        # One render per line even when two sessions ask at once.
        with self._lock:
            cached = self.get(text, voice)
            if cached is not None:
                return cached
            chunk = self.synth.synthesize(text, voice)
            self.renders += 1
            self.put(text, voice, chunk)
            return chunk

    def _in_memory(self, text: str, voice: Voice) -> SpeechChunk:
        key = self.key(text, voice)
        with self._lock:
            chunk = self._memory.get(key)
            if chunk is None:
                chunk = self.synth.synthesize(text, voice)
                self.renders += 1
                self._memory[key] = chunk
                while len(self._memory) > self._memory_lines:
                    self._memory.popitem(last=False)
            self._memory.move_to_end(key)
            return chunk

    def pin(self, text: str, voice: Voice) -> SpeechChunk:
        """Render (or load) the line and keep it in memory for ``pinned``. Blocking: run it on
        the TTS worker."""
        key = self.key(text, voice)
        chunk = self._pinned.get(key)
        if chunk is None:
            chunk = self.get_or_render(text, voice)
            self._pinned[key] = chunk  # one dict store: safe to read from the loop meanwhile
        return chunk

    def pin_stored(self, text: str, voice: Voice) -> SpeechChunk | None:
        """``pin`` for a line already rendered (on disk or pinned): a file read, no synthesis;
        None if it was never rendered. Blocking (disk): run it off the event loop."""
        key = self.key(text, voice)
        chunk = self._pinned.get(key) or self.get(text, voice)
        if chunk is not None:
            self._pinned[key] = chunk
        return chunk

    def pinned(self, text: str, voice: Voice) -> SpeechChunk | None:
        """A pinned line, or None if ``pin`` has not finished for it. Never blocks."""
        return self._pinned.get(self.key(text, voice))

    def put(self, text: str, voice: Voice, chunk: SpeechChunk) -> None:
        audio_path, meta_path = self.paths(text, voice)
        meta = {
            "format": FORMAT_VERSION,
            "text": chunk.text,
            "voice": {"id": voice.id, "speed": voice.speed},
            "model": self._model_hash,
            "sample_rate": chunk.sample_rate,
            "duration": chunk.duration,
            "visemes": [[v.label, v.start, v.end] for v in chunk.visemes],
            "words": [[w.label, w.start, w.end] for w in chunk.words],
        }
        _atomic_write(audio_path, lambda fh: np.savez(fh, pcm=chunk.pcm.astype(np.int16)))
        _atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta, ensure_ascii=False).encode("utf-8")))

    def prerender(self, lines: list[tuple[str, Voice]]) -> int:
        """Render every line not cached yet; returns how many were rendered."""
        rendered = 0
        for text, voice in lines:
            if not self.has(text, voice):
                self.get_or_render(text, voice)
                rendered += 1
        return rendered


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
