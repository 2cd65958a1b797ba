"""A ``Synthesizer`` made of synthesizers tried in order (LiveKit Agents' ``FallbackAdapter``).

A turn speaks with the first voice in the chain. If that voice fails on a chunk, the same
chunk is retried with the next one and the rest of the turn stays there. If a chunk took
longer to render than its budget allows, the chunk is still used, but the voice evidently
cannot keep up with playback, so later chunks of the turn go to the next voice. When no
voice is left, ``synthesize`` raises ``NoVoiceLeft`` and the turn goes on as text.

The adapter is per turn (it remembers where the turn fell back to) and cheap to make. Every
switch is recorded in ``degradations`` for ``turn.end``; the adapter runs on the TTS thread,
so the turn reads them after each awaited call, never while one is in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from npc_engine.pipeline.base import Head, HeadFirst, SpeechChunk, Synthesizer, Voice
from npc_engine.pipeline.scheduling import on_lowered_thread

log = logging.getLogger(__name__)


class NoVoiceLeft(RuntimeError):
    """Every synthesizer of the chain failed or was given up on for this turn."""


@dataclass(frozen=True, slots=True)
class SynthBudget:
    """How long a chunk may take before its voice counts as too slow for live speech.

    A chunk is over budget only if it took longer than ``chunk_ms`` AND longer than
    ``max_rtf`` x its own duration: a long sentence that still renders faster than it plays
    is fine; a voice that cannot keep up with playback is not.
    """

    chunk_ms: float = 3000.0
    max_rtf: float = 1.5

    def limit_ms(self, duration_s: float) -> float:
        return max(self.chunk_ms, self.max_rtf * duration_s * 1000.0)


@dataclass
class FallbackSynthesizer:
    voices: Sequence[Synthesizer]
    budget: SynthBudget = field(default_factory=SynthBudget)
    degradations: list[str] = field(default_factory=list)
    _at: int = 0

    @property
    def name(self) -> str:
        return self.current.name if self.current is not None else "none"

    @property
    def sample_rate(self) -> int:
        return self.voices[0].sample_rate if self.voices else 0

    @property
    def current(self) -> Synthesizer | None:
        """The voice the next chunk will be tried with (None: text only from now on)."""
        return self.voices[self._at] if self._at < len(self.voices) else None

    @property
    def on_primary(self) -> bool:
        return self._at == 0 and bool(self.voices)

    def warm_up(self) -> None:
        for voice in self.voices:
            voice.warm_up()

    def synthesize(self, text: str, voice: Voice) -> SpeechChunk:
        """Render ``text`` with the current voice, falling through the chain. Blocking."""
        while (synth := self.current) is not None:
            started = time.perf_counter()
            try:
                speech = synth.synthesize(text, voice)
            except Exception as exc:
                self._failed(synth, exc)
                continue
            self._check_pace(synth, started, speech)
            return speech
        raise NoVoiceLeft("no voice left for this turn")

    def synthesize_head(self, text: str, voice: Voice, due: float | None = None) -> Head:
        """``text``'s first words first where the current voice can (``HeadFirst``), else the
        whole of it; the rest renders on the same terms: if the voice fails on it, the next
        voice says the rest's words. Blocking, as is ``Head.rest``."""
        synth = self.current
        if not isinstance(synth, HeadFirst):
            return Head(self.synthesize(text, voice))
        started = time.perf_counter()
        try:
            head = synth.synthesize_head(text, voice, due)
        except Exception as exc:
            self._failed(synth, exc)
            return Head(self.synthesize(text, voice))
        self._check_pace(synth, started, head.chunk)
        if head.rest is None:
            return head
        rest, rest_text = head.rest, head.rest_text

        def synthesize_rest() -> SpeechChunk:  # (the TTS worker's job name)
            if self.current is not synth:  # the head was over budget: the rest goes to the next voice
                return self.synthesize(rest_text, voice)
            started = time.perf_counter()
            try:
                speech = rest()
            except Exception as exc:
                self._failed(synth, exc)
                return self.synthesize(rest_text, voice)
            self._check_pace(synth, started, speech)
            return speech

        return Head(head.chunk, synthesize_rest, rest_text)

    def _check_pace(self, synth: Synthesizer, started: float, speech: SpeechChunk) -> None:
        if on_lowered_thread():
            return  # run below the LLM on purpose (a later sentence): slow by choice, not a slow voice
        took_ms = (time.perf_counter() - started) * 1000.0
        limit_ms = self.budget.limit_ms(speech.duration)
        if took_ms > limit_ms and self._at + 1 < len(self.voices):
            self._advance(
                f"a {speech.duration:.1f} s chunk took {took_ms:.0f} ms to synthesize (limit {limit_ms:.0f} ms): "
                f"{synth.name} cannot keep up with playback",
            )

    def _failed(self, synth: Synthesizer, exc: Exception) -> None:
        log.error("TTS %s failed: %s", synth.name, exc)
        self._advance(f"{synth.name} failed ({exc})")

    def _advance(self, reason: str) -> None:
        self._at += 1
        nxt = self.current
        then = f"{nxt.name} for the rest of the turn" if nxt is not None else "text only for the rest of the turn"
        self.degradations.append(f"{reason}; {then}")

    def take_degradations(self) -> list[str]:
        out, self.degradations = self.degradations, []
        return out
