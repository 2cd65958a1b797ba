"""The small typed interfaces that pipeline stages talk through.

Every backend (one file each under ``npc_engine/pipeline/``) implements one of
these. The interfaces are deliberately *blocking*: each model runs on its own
worker thread (see ``npc_engine.pipeline.workers``) so the asyncio event loop
never waits on a model, and a model never fights another for the same thread.

Cancellation is cooperative: long calls take a ``threading.Event`` and check it
between tokens / chunks, so a barge-in stops work within one step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

# --------------------------------------------------------------------------- LLM

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenOptions:
    max_tokens: int = 120
    temperature: float = 0.7
    top_p: float = 0.9
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Repetition control (llama.cpp server sampling; Ollama takes the repeat penalty only).
    # 1.0 / 0.0 switch them off. The engine's values come from EngineConfig (measured there).
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64  # tokens the penalty looks back over (the end of the prompt counts)
    dry_multiplier: float = 0.0  # DRY: penalises extending a sequence already in the context
    dry_base: float = 1.75
    dry_allowed_length: int = 2  # repeats up to this many tokens are free
    # Token text or id -> bias added to its logit (-100: practically never).
    logit_bias: tuple[tuple[str | int, float], ...] = ()


@dataclass(slots=True)
class PromptUsage:
    """How much of one request's prompt the model evaluated; filled in by the backend (on its
    thread) once the prompt is processed, read by the turn after the stream ends. Stays zero
    for a backend that does not report it, or a request stopped before its prompt was done."""

    tokens: int = 0  # the whole prompt
    evaluated: int = 0  # not served from the KV cache: what this request had to compute

    @property
    def cached(self) -> int:
        return self.tokens - self.evaluated


class ModelError(RuntimeError):
    """A model failed in a way the turn cannot recover from (it died, or is unreachable).

    ``code`` is the protocol error code the session reports to the game.
    """

    def __init__(self, message: str, code: str = "model_error") -> None:
        super().__init__(message)
        self.code = code


@runtime_checkable
class ChatModel(Protocol):
    """A chat LLM that streams text deltas."""

    name: str

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenOptions,
        cancel: threading.Event,
        affinity: str | None = None,
        usage: PromptUsage | None = None,
    ) -> Iterator[str]:
        """Yield text deltas as the model produces them; stop early once ``cancel`` is set.

        ``messages`` always starts with the same system prompt for a given
        character, so backends can keep that prefix's KV cache warm.
        ``affinity`` names the conversation: requests with the same affinity should
        reuse the same cache (a backend with several KV caches routes them there).
        ``usage``, if given, is filled in with the prompt's token counts (a backend that
        cannot tell leaves it at zero).
        Raises ``ModelError`` when the model is unreachable or dies.
        """
        ...

    def warm_up(
        self, messages: Sequence[ChatMessage], affinity: str | None = None, usage: PromptUsage | None = None
    ) -> None:
        """Evaluate ``messages`` (the persona prefix, or the whole prompt up to the player's
        next line) in ``affinity``'s cache so the next turn starts fast; ``usage`` as in
        ``stream``: what the warm-up itself evaluated."""
        ...

    def release(self, affinity: str) -> None:
        """The conversation ``affinity`` is over: its cache may serve another conversation,
        one whose prompt begins the same way (the same character) best."""
        ...

    def prime(self, messages: Sequence[ChatMessage]) -> bool:
        """Evaluate ``messages`` (a character's persona) into a cache no conversation holds,
        for the first conversation whose prompt begins with it; False if no cache was free.
        Called at start-up, before anyone talks, so a first turn does not wait for it."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- TTS


@dataclass(frozen=True, slots=True)
class Voice:
    """A synthesizer voice: ``id`` is backend-specific (a Kokoro voice pack name)."""

    id: str
    speed: float = 1.0


@dataclass(frozen=True, slots=True)
class Timed:
    """A labelled span, in seconds relative to the start of its audio chunk."""

    label: str
    start: float
    end: float


# The 15 Oculus/OVR (OpenXR) visemes, in their canonical order.
VISEMES: tuple[str, ...] = (
    "sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou",
)


@dataclass(slots=True)
class SpeechChunk:
    """One synthesized piece of a reply: audio plus the tracks that animate it."""

    text: str
    pcm: np.ndarray  # int16, mono
    sample_rate: int
    visemes: list[Timed] = field(default_factory=list)  # label in VISEMES
    words: list[Timed] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass(frozen=True, slots=True)
class Head:
    """A text's first words, voiced before the rest of it (``HeadFirst``)."""

    chunk: SpeechChunk
    # Renders the rest of the text, to be played right after ``chunk`` (blocking; call it at
    # most once). None: ``chunk`` is the whole text.
    rest: Callable[[], SpeechChunk] | None = None
    rest_text: str = ""


@runtime_checkable
class HeadFirst(Protocol):
    """A synthesizer that can voice a text's first words before the rest (Kokoro: the decoder
    runs on a first window of the sentence). A turn's first chunk uses it: its cost grows with
    the audio rendered, and the player is waiting for the first sound. So does any later chunk
    that would not be ready when the audio before it has played."""

    def synthesize_head(self, text: str, voice: Voice, due: float | None = None) -> Head:
        """``due``: when the chunk must start playing (``time.perf_counter()`` seconds; None:
        now, the player is waiting). A text that renders whole by then comes back whole."""
        ...


@runtime_checkable
class Synthesizer(Protocol):
    """Text to speech for one clause or sentence at a time."""

    name: str
    sample_rate: int

    def synthesize(self, text: str, voice: Voice) -> SpeechChunk:
        """Render ``text`` (already free of markup) in ``voice``. Blocking."""
        ...

    def warm_up(self) -> None: ...


# --------------------------------------------------------------------------- STT

STT_SAMPLE_RATE = 16_000


@runtime_checkable
class TranscriberStream(Protocol):
    """One session's recognizer state; reused across that session's utterances."""

    def accept(self, pcm: np.ndarray) -> str | None:
        """Feed int16 mono 16 kHz samples; return the new partial text if it changed."""
        ...

    def finalize(self) -> str:
        """Return the final text of everything accepted since the last reset, then reset."""
        ...

    def reset(self) -> None: ...


@runtime_checkable
class Transcriber(Protocol):
    """A speech recognizer: loaded once, shared; hands out per-session streams."""

    name: str
    sample_rate: int

    def open_stream(self) -> TranscriberStream: ...

    def warm_up(self) -> None: ...
