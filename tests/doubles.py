"""TEST DOUBLES: a scripted chat model and a silent voice, used only by the unit layer (``tests/unit``).

Nothing here is a model. ``ScriptedChat`` streams canned replies at a chosen pace and
``SilenceSynth`` returns silence of a known length with exact word timings, so the turn
logic (ordering, budgets, fallbacks, cancellation, memory) can be checked quickly and
deterministically. Every end-to-end behaviour these stand in for also has a real-model test
elsewhere in ``tests/`` (the embedded LLM, Kokoro and espeak-ng voices over the socket).

Modelled on LiveKit Agents' ``FakeLLM`` / ``FakeTTS``: each double records what it was asked
and can be told to be slow, to stall, or to fail, on purpose.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npc_engine.pipeline.base import (
    ChatMessage,
    GenOptions,
    Head,
    ModelError,
    PromptUsage,
    SpeechChunk,
    Timed,
    Voice,
)
from npc_engine.pipeline.vad import SileroVad, VadState

# A double held on purpose gives up after this long, so a broken test fails instead of hanging.
TIMEOUT_S = 30.0

# --------------------------------------------------------------------------- chat


@dataclass(frozen=True)
class ScriptedReply:
    """One scripted reply; fields left ``None`` take the ``ScriptedChat``'s defaults."""

    text: str
    ttft_s: float | None = None  # time to the first token
    tokens_per_s: float | None = None
    fail_before_first_token: bool | None = None  # raise ModelError instead of the first token
    fail_after_tokens: int | None = None  # raise ModelError after this many tokens
    never_first_token: bool | None = None  # stall until cancelled (or the double is closed)


@dataclass
class ChatCall:
    """What one ``stream()`` call was asked and what it did."""

    messages: list[ChatMessage]
    options: GenOptions
    affinity: str | None
    reply: str
    total: int  # pieces in the reply
    tokens: int = 0  # pieces actually yielded
    saw_cancel: bool = False  # stopped because ``cancel`` was set
    closed_early: bool = False  # the consumer closed the stream before its end
    failed: bool = False  # raised ModelError
    finished: threading.Event = field(default_factory=threading.Event)
    prompt: PromptUsage = field(default_factory=PromptUsage)  # as reported to the caller (see prompt_tokens)

    @property
    def stopped_early(self) -> bool:
        return self.tokens < self.total

    def wait_finished(self, timeout: float) -> bool:
        """Blocking: until the stream is over (run it with ``asyncio.to_thread``)."""
        return self.finished.wait(timeout)


def prompt_tokens(messages: Sequence[ChatMessage]) -> list[str]:
    """The double's stand-in for a tokenized prompt: a role marker, then the words, per message."""
    return [tok for m in messages for tok in (f"<{m.role}>", *m.content.split())]


def _shared_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def word_pieces(text: str) -> list[str]:
    """The reply as the double streams it: one piece per word, leading space attached (like BPE)."""
    return re.findall(r"\s*\S+", text)


class ScriptedChat:
    """A ``ChatModel`` that streams scripted replies, one per call, cycling through them.

    ``stream`` runs on the LLM worker thread: it "thinks" for ``ttft_s``, then yields the reply
    word piece by word piece at ``tokens_per_s``. Its waits are ``cancel.wait(...)``, so a
    cancelled turn stops it at once. Pacing and failure options are read when a call starts.
    """

    def __init__(
        self,
        replies: Sequence[str | ScriptedReply],
        *,
        ttft_s: float = 0.01,
        tokens_per_s: float = 500.0,
        fail_before_first_token: bool = False,
        fail_after_tokens: int | None = None,
        never_first_token: bool = False,
    ) -> None:
        if not replies:
            raise ValueError("ScriptedChat needs at least one reply")
        self.name = "scripted-chat (test double)"
        self.replies = [r if isinstance(r, ScriptedReply) else ScriptedReply(r) for r in replies]
        self.ttft_s = ttft_s
        self.tokens_per_s = tokens_per_s
        self.fail_before_first_token = fail_before_first_token
        self.fail_after_tokens = fail_after_tokens
        self.never_first_token = never_first_token
        self.calls: list[ChatCall] = []
        self.warm_ups: list[tuple[list[ChatMessage], str | None]] = []
        self.released: list[str] = []
        self.primed: list[list[ChatMessage]] = []
        self.closed = threading.Event()  # releases a stalled stream (never_first_token)
        self._lock = threading.Lock()
        # Like llama.cpp's slots, one "KV cache" per affinity: the previous prompt's tokens.
        # A call is reported (``usage``) as evaluating what follows the prefix it shares with it.
        self._cached: dict[str | None, list[str]] = {}

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenOptions,
        cancel: threading.Event,
        affinity: str | None = None,
        usage: PromptUsage | None = None,
    ) -> Iterator[str]:
        with self._lock:
            script = self.replies[len(self.calls) % len(self.replies)]
            call = ChatCall(list(messages), options, affinity, script.text, total=len(word_pieces(script.text)))
            self.calls.append(call)
            tokens = prompt_tokens(messages)
            cached = self._cached.get(affinity, [])
            shared = _shared_prefix(tokens, cached)
            self._cached[affinity] = tokens
            call.prompt = PromptUsage(tokens=len(tokens), evaluated=len(tokens) - shared)
        return self._run(call, script, cancel, usage)

    def _run(
        self, call: ChatCall, script: ScriptedReply, cancel: threading.Event, usage: PromptUsage | None = None
    ) -> Iterator[str]:
        ttft = self.ttft_s if script.ttft_s is None else script.ttft_s
        rate = self.tokens_per_s if script.tokens_per_s is None else script.tokens_per_s
        fail_first = self.fail_before_first_token if script.fail_before_first_token is None else script.fail_before_first_token
        fail_after = self.fail_after_tokens if script.fail_after_tokens is None else script.fail_after_tokens
        never = self.never_first_token if script.never_first_token is None else script.never_first_token
        try:
            if fail_first:
                call.failed = True
                raise ModelError("scripted-chat: failed before the first token (test double)")
            if never:
                while not self.closed.is_set():
                    if cancel.wait(0.02):
                        call.saw_cancel = True
                        return
                return
            if cancel.wait(ttft):
                call.saw_cancel = True
                return
            if usage is not None:  # known once the prompt is processed, as with llama.cpp
                usage.tokens, usage.evaluated = call.prompt.tokens, call.prompt.evaluated
            for i, piece in enumerate(word_pieces(call.reply)):
                if i and cancel.wait(1.0 / rate):
                    call.saw_cancel = True
                    return
                if fail_after is not None and i >= fail_after:
                    call.failed = True
                    raise ModelError(f"scripted-chat: failed after {i} tokens (test double)")
                call.tokens += 1
                yield piece
        except GeneratorExit:
            call.closed_early = call.stopped_early
            raise
        finally:
            call.finished.set()

    def warm_up(
        self, messages: Sequence[ChatMessage], affinity: str | None = None, usage: PromptUsage | None = None
    ) -> None:
        with self._lock:
            self.warm_ups.append((list(messages), affinity))
            tokens = prompt_tokens(messages)
            shared = _shared_prefix(tokens, self._cached.get(affinity, []))
            self._cached[affinity] = tokens  # evaluated now: cached for the next call
        if usage is not None:  # reported like a turn's call: what followed the cached prefix
            usage.tokens, usage.evaluated = len(tokens), len(tokens) - shared

    def release(self, affinity: str) -> None:
        with self._lock:
            self.released.append(affinity)

    def prime(self, messages: Sequence[ChatMessage]) -> bool:
        with self._lock:
            self.primed.append(list(messages))
        return True

    def close(self) -> None:
        self.closed.set()


class GatedWarmChat(ScriptedChat):
    """TEST DOUBLE: a ``ScriptedChat`` whose warm-ups for the conversations in ``gated`` stay on
    the model until ``release`` is set, and which logs the order of warm-ups and calls."""

    def __init__(self, replies: Sequence[str], gated: set[str]) -> None:
        super().__init__(replies)
        self.gated = gated
        self.entered = threading.Event()  # a gated warm-up is on the model
        self.let_go = threading.Event()
        self.order: list[tuple[str, str | None]] = []  # ("warm-up done" | "call", affinity)

    def warm_up(
        self, messages: Sequence[ChatMessage], affinity: str | None = None, usage: PromptUsage | None = None
    ) -> None:
        if affinity in self.gated:
            self.entered.set()
            assert self.let_go.wait(10.0), "the test never let the warm-up go"
        super().warm_up(messages, affinity, usage)
        self.order.append(("warm-up done", affinity))

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenOptions,
        cancel: threading.Event,
        affinity: str | None = None,
        usage: PromptUsage | None = None,
    ) -> Iterator[str]:
        self.order.append(("call", affinity))
        return super().stream(messages, options, cancel, affinity, usage)


# --------------------------------------------------------------------------- voice


class SilenceSynth:
    """A ``Synthesizer`` that renders ``seconds_per_word`` of int16 silence per word.

    Word timings are exact and back to back (word ``i`` starts at ``i * seconds_per_word``);
    the viseme track is one ``aa`` per word. ``fail_on`` holds the call indexes (0-based,
    counting every call) that raise; ``fail_all`` makes every call raise; ``delay_s`` is
    slept in every call (to overrun a ``SynthBudget``). ``texts`` records every call's text.
    """

    def __init__(
        self,
        name: str = "silence-a",
        *,
        seconds_per_word: float = 0.2,
        sample_rate: int = 24_000,
        fail_on: Iterable[int] = (),
        fail_all: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self.samples_per_word = round(seconds_per_word * sample_rate)
        self.fail_on = frozenset(fail_on)
        self.fail_all = fail_all
        self.delay_s = delay_s
        self.texts: list[str] = []
        self.voices: list[Voice] = []
        self.warm_ups = 0

    @property
    def seconds_per_word(self) -> float:
        return self.samples_per_word / self.sample_rate

    def synthesize(self, text: str, voice: Voice) -> SpeechChunk:
        index = len(self.texts)
        self.texts.append(text)
        self.voices.append(voice)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_all or index in self.fail_on:
            raise RuntimeError(f"{self.name}: scripted failure on call {index} (test double)")
        step = self.seconds_per_word
        words = [Timed(w, i * step, (i + 1) * step) for i, w in enumerate(text.split())]
        pcm = np.zeros(len(words) * self.samples_per_word, dtype=np.int16)
        visemes = [Timed("aa", w.start, w.end) for w in words]
        return SpeechChunk(text=text, pcm=pcm, sample_rate=self.sample_rate, visemes=visemes, words=words)

    def warm_up(self) -> None:
        self.warm_ups += 1


class HeadFirstSilence(SilenceSynth):
    """A ``SilenceSynth`` that is also ``HeadFirst`` (test double): a text of more than
    ``head_words`` words is voiced as its first ``head_words`` words, then, when ``Head.rest``
    is called, the rest (each one ``synthesize`` call, so ``texts`` records both). ``fail_rest``:
    the rest raises. ``hold_rest``: the rest waits until the event is set (a turn cut off
    between the head and the rest). A later chunk (``due`` given) is voiced whole unless
    ``late_heads``: the double stands for a voice that would not be ready in time."""

    def __init__(
        self,
        name: str = "silence-head",
        *,
        head_words: int = 2,
        fail_rest: bool = False,
        hold_rest: threading.Event | None = None,
        late_heads: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.head_words = head_words
        self.fail_rest = fail_rest
        self.hold_rest = hold_rest
        self.late_heads = late_heads
        self.rests = 0
        self.dues: list[float | None] = []  # each synthesize_head call's ``due``

    def synthesize_head(self, text: str, voice: Voice, due: float | None = None) -> Head:
        self.dues.append(due)
        words = text.split()
        if len(words) <= self.head_words or (due is not None and not self.late_heads):
            return Head(self.synthesize(text, voice))
        head_text, rest_text = " ".join(words[:self.head_words]), " ".join(words[self.head_words:])
        head = self.synthesize(head_text, voice)

        def rest() -> SpeechChunk:
            self.rests += 1
            if self.hold_rest is not None and not self.hold_rest.wait(TIMEOUT_S):
                raise TimeoutError("the rest was held too long (test double)")
            if self.fail_rest:
                raise RuntimeError(f"{self.name}: scripted failure of the rest (test double)")
            return self.synthesize(rest_text, voice)

        return Head(head, rest, rest_text)


# --------------------------------------------------------------------------- voice in

WORD_SAMPLES = 4000  # 0.25 s of 16 kHz audio per spoken word
WORD_GAP = 16  # exact zeros between words: how the transcriber tells two words apart


class EnergyVad(SileroVad):
    """A ``SileroVad`` that hears any window that is not exact silence as speech (probability
    1, else 0). Test speech (``ToneTranscriber.say``) is silence or a constant level, so the
    end-of-turn detector's events fall exactly where the audio says."""

    def __init__(self) -> None:  # no model to load
        self.path = None

    def probability(self, st: VadState, window: np.ndarray) -> float:
        return 1.0 if window.size and float(np.abs(window).max()) > 0.01 else 0.0


class ToneTranscriber:
    """A speech recognizer of tone words: ``say(text)`` renders each word as ``WORD_SAMPLES``
    of a constant level that names it, and the streams it opens read the levels back.

    Its streams decode ahead like the real ones (``prepare_final`` caches the text until more
    audio is accepted; ``decodes`` counts real decodes). ``final_extra`` is a word the final
    decode hears that the speculative one did not (a recognizer whose two decodes differ).
    """

    name = "tone-transcriber (test double)"
    sample_rate = 16_000

    def __init__(self, final_extra: str | None = None) -> None:
        self.final_extra = final_extra
        self.words: list[str] = []
        self.streams: list[ToneStream] = []

    def say(self, text: str, silence_s: float = 0.0) -> np.ndarray:
        """``text`` as tone words, then ``silence_s`` of silence (int16, 16 kHz)."""
        parts = []
        for word in text.split():
            if word not in self.words:
                self.words.append(word)
            level = 1000 + 100 * self.words.index(word)
            parts += [np.full(WORD_SAMPLES, level, np.int16), np.zeros(WORD_GAP, np.int16)]
        parts.append(np.zeros(round(silence_s * self.sample_rate), np.int16))
        return np.concatenate(parts)

    def read(self, pcm: np.ndarray) -> str:
        words, run_level, run = [], 0, 0
        for level in [*pcm.tolist(), 0]:
            if level == run_level and level:
                run += 1
                continue
            if run_level and run >= WORD_SAMPLES // 4:  # the pre-roll may clip nothing, a word is whole
                words.append(self.words[(run_level - 1000) // 100])
            run_level, run = level, 1
        return " ".join(words)

    def open_stream(self) -> ToneStream:
        stream = ToneStream(self)
        self.streams.append(stream)
        return stream

    def warm_up(self) -> None:
        pass


class ToneStream:
    def __init__(self, owner: ToneTranscriber) -> None:
        self.owner = owner
        self._audio: list[np.ndarray] = []
        self._n = 0
        self._cached: tuple[int, str] | None = None
        self.decodes = 0

    def accept(self, pcm: np.ndarray) -> str | None:
        self._audio.append(np.asarray(pcm, np.int16).copy())
        self._n += len(pcm)
        return None

    def prepare_final(self) -> str:
        if self._cached is None or self._cached[0] != self._n:
            self.decodes += 1
            audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.int16)
            self._cached = (self._n, self.owner.read(audio))
        return self._cached[1]

    def finalize(self) -> str:
        text = self.prepare_final()
        if text and self.owner.final_extra:
            text = f"{text} {self.owner.final_extra}"
        self.reset()
        return text

    def reset(self) -> None:
        self._audio.clear()
        self._n = 0
        self._cached = None


class ScriptedTurnModel:
    """A turn classifier (Smart Turn's place) that answers from a script: each ``predict``
    pops the next probability of "complete" (the last one repeats), and keeps the audio it heard."""

    def __init__(self, *probabilities: float) -> None:
        self.script = list(probabilities) or [1.0]
        self.heard: list[np.ndarray] = []

    def predict(self, pcm: np.ndarray) -> float:
        self.heard.append(np.asarray(pcm, np.int16).copy())
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]
