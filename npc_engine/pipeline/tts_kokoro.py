"""Kokoro-82M (int8 ONNX, onnxruntime) behind the ``Synthesizer`` interface, with viseme and word tracks.

The patched model (see ``kokoro_model``) returns the duration of every phoneme
token in frames of 600 samples, and ``sum(durations) * 600 == len(audio)``
exactly, so each phoneme's span of audio is known to the sample. The viseme
track maps each phoneme to its OVR viseme, and the word track spans each word's
phonemes. Pauses (punctuation, the pads at either end) are ``sil``.

Kokoro often stretches the last phoneme before a pause and renders part of it
as silence, so the tracks are also checked against the audio itself: a run of
quiet frames (≥ 75 ms) is ``sil`` whatever the durations say, and word edges
are pulled in off silence.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from npc_engine.pipeline.base import VISEMES, Head, ModelError, SpeechChunk, Timed, Voice
from npc_engine.pipeline.g2p import (
    PAUSE_PHONEMES,
    SUFFIX_MARKS,
    EnglishG2P,
    Phonemized,
    phoneme_visemes,
)
from npc_engine.pipeline.kokoro_model import (
    FRAME_CURVES,
    FRAME_FEATURES,
    MAX_TOKENS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    VOCAB,
    KokoroModelFiles,
    ensure_model,
)
from npc_engine.pipeline.scheduling import on_lowered_thread
from npc_engine.pipeline.threads import ThreadChoice, thread_counts

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)
R = TypeVar("R")

VOICES_DIR = Path(__file__).resolve().parent.parent / "assets" / "voices"
STYLE_DIM = 256
MIN_SPEED, MAX_SPEED = 0.5, 2.0
# Longest batch we hand the model; longer texts are cut at a pause, else a word gap.
BATCH_PHONEMES = 400
SENTENCE_END = frozenset(".!?")

_TRIM_HOP = 240  # 10 ms: fine enough not to clip an onset
_MIN_QUIET_FRAMES = 3  # 75 ms of quiet audio reads as a pause to the eye

# A first window (``synthesize_head``). The decoder is convolutional and normalises each
# channel over the window it is given, so a window's edge sounds unlike the same frames in
# the whole: each window runs on HEAD_CONTEXT frames past the join (200 ms), and the rest
# fades in over the head window's audio in its first HEAD_CROSSFADE samples (20 ms); the join
# is a word boundary.
HEAD_CONTEXT = 8
HEAD_CROSSFADE = 480
# Frames of the pad before the first word that the decoder is given (the model gives it
# 14-19, 0.35-0.5 s, all cut down to ``lead_silence`` afterwards): the decoder's context for
# the onset. Every render skips the rest: the decoder's cost grows with its frames, and a
# short clause's lead pad is a sixth of them or more.
LEAD_FRAMES = 8
HEAD_MIN_REST = 12  # frames after the join (0.3 s); less, and the whole is rendered at once
# The rest must be rendered before the head has played: at the decoder's recent cost per
# second of audio, plus what each run costs whatever its length, it may take at most this
# share of the head's playing time: the LLM (niced) and other sessions also want the cores.
# The recent cost includes each run's fixed part, so the estimate runs high: in the bench
# (one conversation at a time, 2 cores, 23 rests) a rest planned at 0.9 took 0.30-0.98 of
# its head's playing time (median 0.61); none came late, and the first chunk took 657 ms
# against 782 at 0.65, where most first clauses of 2 s or more were rendered whole.
HEAD_REST_SHARE = 0.9
HEAD_RUN_S = 0.05
HEAD_DEFAULT_COST = 0.5  # seconds per second of audio, before the first run is measured


class UnknownVoiceError(ValueError):
    """The voice id names no voice pack we have (a typo in a character file, usually)."""


@dataclass(frozen=True, slots=True)
class KokoroConfig:
    cache_dir: Path | None = None  # None: kokoro_model.default_cache_dir()
    voices_dir: Path = VOICES_DIR
    # More than 1: the model is also loaded with this many threads, and each run takes the
    # count that has been faster lately (pipeline/threads.py: two threads win on an idle
    # machine, lose on one that other programs load).
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Kokoro pads every chunk with ~0.3 s of silence at each end; between streamed
    # chunks that reads as a stall, so the audio is trimmed to these margins,
    # chosen by how the chunk ends (sentence end, clause end, or mid-sentence).
    lead_silence: float = 0.03
    sentence_pause: float = 0.25
    clause_pause: float = 0.12
    open_end_pause: float = 0.04
    default_voice: str = "af_heart"
    # A turn's first chunk: voice about this much of its first words first (seconds of
    # speech, ended at a word boundary), then the rest (``synthesize_head``). 0: whole.
    head_s: float = 0.5


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    """Where one phoneme token sits in the audio, straight from the model's durations."""

    phoneme: str  # one character of ``Phonemized.phonemes``; "" for the model's pad tokens
    index: int  # into ``Phonemized.phonemes``; -1 for the pads
    start: int  # samples
    end: int


@dataclass(slots=True)
class Rendering:
    """Raw synthesis: float audio and the model's own phoneme timings (contiguous, covering it)."""

    phonemized: Phonemized
    audio: np.ndarray  # float32, mono, SAMPLE_RATE
    timings: list[PhonemeTiming]


@dataclass(frozen=True, slots=True)
class _Net:
    """Kokoro's two halves (``kokoro_model``: encoder, decoder) loaded on one thread count."""

    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    threads: int


@dataclass(frozen=True, slots=True)
class _Frames:
    """What the encoder made of one batch of tokens: the decoder's per-frame inputs, the style,
    and each token's duration in frames (the two pads included)."""

    features: np.ndarray  # [1, 512, frames]
    curves: tuple[np.ndarray, np.ndarray]  # [1, 2 * frames] each: pitch and energy
    style: np.ndarray
    durations: np.ndarray

    @property
    def count(self) -> int:
        return int(self.features.shape[2])

    def window(self, a: int, b: int) -> dict[str, np.ndarray]:
        """The decoder's feeds for frames [a, b)."""
        return {
            FRAME_FEATURES: np.ascontiguousarray(self.features[:, :, a:b]),
            FRAME_CURVES[0]: np.ascontiguousarray(self.curves[0][:, 2 * a:2 * b]),
            FRAME_CURVES[1]: np.ascontiguousarray(self.curves[1][:, 2 * a:2 * b]),
            "style": self.style,
        }


@dataclass(frozen=True, slots=True)
class _HeadPlan:
    join: int  # frame where the head ends and the rest begins
    head_text: str
    rest_text: str


class KokoroSynthesizer:
    """Kokoro TTS: load once, then ``synthesize`` one clause or sentence at a time (blocking)."""

    name = "kokoro"
    sample_rate = SAMPLE_RATE

    def __init__(self, config: KokoroConfig | None = None) -> None:
        import onnxruntime as ort

        self.config = config or KokoroConfig()
        started = time.perf_counter()
        files: KokoroModelFiles = ensure_model(self.config.cache_dir)
        self.model_hash = files.sha256
        sessions: list[tuple[int, _Net]] = []
        for threads in thread_counts(self.config.intra_op_threads):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = self.config.inter_op_threads
            options.log_severity_level = 3  # the int8 export warns about unused initialisers
            # Threads that spin between operators would take the core the (niced) LLM could use.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                halves = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                          for path in (files.encoder, files.decoder)]
            except Exception as error:  # onnxruntime raises its own exception types
                raise ModelError(f"Could not load the Kokoro model {files.encoder.parent}: {error}",
                                 code="tts_model_corrupt") from error
            encoder, decoder = halves
            sessions.append((threads, _Net(encoder, decoder, threads)))
        self._sessions = ThreadChoice(sessions)
        log.info("loaded Kokoro ONNX in %.2f s (%s thread(s))", time.perf_counter() - started,
                 " and ".join(str(n) for n, _ in sessions))
        started = time.perf_counter()
        self._g2p: dict[bool, EnglishG2P] = {False: EnglishG2P(british=False)}
        log.info("loaded misaki G2P in %.2f s", time.perf_counter() - started)
        self._voices: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ voices

    def available_voices(self) -> list[str]:
        return sorted(p.stem for p in self.config.voices_dir.glob("*.bin"))

    def _voice_pack(self, voice_id: str) -> np.ndarray:
        pack = self._voices.get(voice_id)
        if pack is not None:
            return pack
        path = self.config.voices_dir / f"{voice_id}.bin"
        if not voice_id or "/" in voice_id or "\\" in voice_id or not path.is_file():
            raise UnknownVoiceError(
                f"Unknown Kokoro voice {voice_id!r}; available voices: {', '.join(self.available_voices())} "
                f"(voice packs live in {self.config.voices_dir})."
            )
        data = np.fromfile(path, dtype=np.float32)
        if data.size == 0 or data.size % STYLE_DIM:
            raise UnknownVoiceError(f"Voice pack {path} is not a Kokoro voice ({data.size * 4} bytes).")
        pack = data.reshape(-1, 1, STYLE_DIM)
        self._voices[voice_id] = pack
        return pack

    def _g2p_for(self, voice_id: str) -> EnglishG2P:
        # Kokoro voice ids start with a language letter: 'b' British English, 'a' American.
        british = voice_id.startswith("b")
        with self._lock:
            if british not in self._g2p:
                self._g2p[british] = EnglishG2P(british=british)
            return self._g2p[british]

    # ------------------------------------------------------------------ synthesis

    def warm_up(self) -> None:
        """Load both lexicons and run one short line (with an unknown name, so espeak's G2P loads too).

        The British lexicon takes about a second to load: better here than in a player's first turn.
        """
        started = time.perf_counter()
        self._g2p_for("bf_emma")
        for _ in self._sessions.models:  # each instance once: an untried one is picked first
            self.synthesize("Hello, Thalgrim.", Voice(self.config.default_voice))
        log.info("Kokoro warm-up took %.2f s", time.perf_counter() - started)

    def synthesize(self, text: str, voice: Voice) -> SpeechChunk:
        return _chunk(text, self.render(text, voice))

    def render(self, text: str, voice: Voice) -> Rendering:
        """Synthesize ``text`` and keep the model's per-phoneme timings (trimmed like the audio)."""
        pack, ph, chars = self._prepare(text, voice)
        if not _speaks(chars):
            return Rendering(ph, np.zeros(0, np.float32), [])

        parts: list[np.ndarray] = []
        timings: list[PhonemeTiming] = []
        offset = 0
        for batch in _batches(chars):
            audio, durations = self._infer([VOCAB[c] for _, c in batch], pack, voice.speed)
            timings.extend(_timings(batch, durations, len(audio), offset))
            parts.append(audio)
            offset += len(audio)
        return _trimmed(ph, np.concatenate(parts), timings, self.config.lead_silence, self._tail_pause(ph))

    def synthesize_head(self, text: str, voice: Voice, due: float | None = None) -> Head:
        """``text``'s first words (about ``head_s`` of speech, to a word boundary), and the rest on demand.

        The encoder runs on the whole text, so durations, pitch and energy are the sentence's
        own; the decoder, whose cost grows with the audio it renders, runs first on a window
        that ends HEAD_CONTEXT frames past the join, then (``Head.rest``) on the rest from
        HEAD_CONTEXT frames before it, and the two are crossfaded at the join. The join is the
        first word boundary after ``head_s`` where the rest, at the decoder's recent cost,
        renders in well under the head's playing time; a text too short for that is rendered
        whole. What the player hears was measured against the whole render (docs/tts.md).

        ``due`` (a later chunk: when the audio before it has played): rendered whole if, at
        the decoder's recent cost, the whole is ready by then; else first words first, so the
        playback does not run dry for the whole render. None: the player is waiting now.
        """
        pack, ph, chars = self._prepare(text, voice)
        if self.config.head_s <= 0 or not _speaks(chars) or len(chars) > BATCH_PHONEMES:
            return Head(self.synthesize(text, voice))
        feeds = self._feeds([VOCAB[c] for _, c in chars], pack, voice.speed)
        costs = self._sessions.costs()
        cost = min((c for c in costs.values() if c is not None), default=HEAD_DEFAULT_COST)

        def first(net: _Net) -> tuple[_Frames, _HeadPlan | None, int, np.ndarray]:
            nonlocal cost
            # A later sentence on the later lane runs on one thread (``_run``): its plan takes
            # that instance's own cost, or its rest would come late.
            cost = max(cost, costs.get(net.threads) or cost)
            frames = _encode(net, feeds)
            skip = _lead_skip(frames.durations)
            whole_s = cost * (frames.count - skip) * SAMPLES_PER_FRAME / SAMPLE_RATE + HEAD_RUN_S
            in_time = due is not None and time.perf_counter() + whole_s <= due
            plan = None if in_time else _plan_head(text, ph, chars, frames.durations, self.config.head_s, cost)
            return frames, plan, skip, _decode(net, frames, skip, frames.count if plan is None else
                                               min(frames.count, plan.join + HEAD_CONTEXT))

        started = time.perf_counter()
        # The player waits on a reply's first words: no probe of the other thread count then.
        frames, plan, skip, audio = self._run(first, lambda out: out[3].size / SAMPLE_RATE, urgent=due is None)
        log.debug("first window: frames %d-%d of %d in %.0f ms (cost %.2f s/s): %r | %r", skip,
                  skip + audio.size // SAMPLES_PER_FRAME, frames.count, (time.perf_counter() - started) * 1000, cost,
                  plan.head_text if plan else text, plan.rest_text if plan else "")
        timings = _timings(chars, frames.durations, frames.count * SAMPLES_PER_FRAME)
        tail_pause = self._tail_pause(ph)
        # ``origin``: where the decoded audio starts in the whole text's.
        origin = skip * SAMPLES_PER_FRAME
        if plan is None:
            return Head(_chunk(text, _trimmed(ph, audio, _clip(timings, origin, frames.count * SAMPLES_PER_FRAME),
                                              self.config.lead_silence, tail_pause)))
        # The head ends at the join (its words whole); the rest starts there, its first
        # HEAD_CROSSFADE samples faded in over the head window's own.
        cut = plan.join * SAMPLES_PER_FRAME
        overlap = audio[cut - origin:cut - origin + HEAD_CROSSFADE].copy()
        head = _chunk(plan.head_text, _trimmed(ph, audio[:cut - origin], _clip(timings, origin, cut),
                                               self.config.lead_silence, None))

        def rest() -> SpeechChunk:
            start = plan.join - HEAD_CONTEXT
            began = time.perf_counter()
            more = self._run(lambda net: _decode(net, frames, start, frames.count), lambda out: out.size / SAMPLE_RATE)
            log.debug("rest: frames %d-%d in %.0f ms (the head plays %.2f s)", start, frames.count,
                      (time.perf_counter() - began) * 1000, head.duration)
            more = more[cut - start * SAMPLES_PER_FRAME:]
            # Both renders voice the same frames here (only the edge's context differs): a
            # linear crossfade keeps their level.
            fade = np.linspace(0.0, 1.0, HEAD_CROSSFADE, dtype=np.float32)
            more[:HEAD_CROSSFADE] = overlap * (1.0 - fade) + more[:HEAD_CROSSFADE] * fade
            return _chunk(plan.rest_text, _trimmed(ph, more, _clip(timings, cut, len(more) + cut), None, tail_pause))

        return Head(head, rest, plan.rest_text)

    def _prepare(self, text: str, voice: Voice) -> tuple[np.ndarray, Phonemized, list[tuple[int, str]]]:
        if not MIN_SPEED <= voice.speed <= MAX_SPEED:
            raise ValueError(f"Voice speed must be between {MIN_SPEED} and {MAX_SPEED}; got {voice.speed}.")
        pack = self._voice_pack(voice.id)
        ph = self._g2p_for(voice.id)(text)
        # One model token per phoneme character; characters outside the vocabulary are not spoken.
        return pack, ph, [(i, c) for i, c in enumerate(ph.phonemes) if c in VOCAB]

    def _tail_pause(self, ph: Phonemized) -> float:
        last = next((c for c in reversed(ph.phonemes) if not c.isspace()), "")
        return (self.config.sentence_pause if last in SENTENCE_END
                else self.config.clause_pause if last in PAUSE_PHONEMES else self.config.open_end_pause)

    @staticmethod
    def _feeds(tokens: list[int], pack: np.ndarray, speed: float) -> dict[str, np.ndarray]:
        style = pack[min(len(tokens), len(pack)) - 1]  # one style row per token count
        return {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style.astype(np.float32),
            "speed": np.array([speed], dtype=np.float32),
        }

    def _run(self, call: Callable[[_Net], R], work: Callable[[R], float], urgent: bool = False) -> R:
        try:
            # Cost per second of audio: the decoder's work grows with the audio it renders. On
            # a lowered thread (the later lane, scheduling.py) the run takes one thread: the
            # two-thread instance's other thread runs at normal priority, each operator would
            # wait for the slower of the two, and the run is slow on purpose, not a cost to learn.
            return self._sessions.run(call, work, urgent, spare=on_lowered_thread())
        except Exception as error:
            raise ModelError(f"Kokoro inference failed: {error}", code="tts_failed") from error

    def _infer(self, tokens: list[int], pack: np.ndarray, speed: float) -> tuple[np.ndarray, np.ndarray]:
        """One batch: its audio and each token's duration in frames, the lead pad's shortened
        to what was decoded (``LEAD_FRAMES``), so the durations still add up to the audio."""
        feeds = self._feeds(tokens, pack, speed)

        def whole(net: _Net) -> tuple[np.ndarray, np.ndarray]:
            frames = _encode(net, feeds)
            skip = _lead_skip(frames.durations)
            durations = frames.durations.copy()
            durations[0] -= skip
            return _decode(net, frames, skip, frames.count), durations

        return self._run(whole, lambda out: out[0].size / SAMPLE_RATE)

    def thread_costs(self) -> dict[int, float | None]:
        """Seconds per second of audio lately, by intra-op thread count (pipeline/threads.py)."""
        return self._sessions.costs()

    def close(self) -> None:
        self._voices.clear()


# ---------------------------------------------------------------------- helpers


def _encode(net: _Net, feeds: dict[str, np.ndarray]) -> _Frames:
    features, pitch, energy, durations = net.encoder.run(None, feeds)
    return _Frames(np.asarray(features, np.float32), (np.asarray(pitch, np.float32), np.asarray(energy, np.float32)),
                   feeds["style"], np.asarray(durations, np.int64).ravel())


def _lead_skip(durations: np.ndarray) -> int:
    """Frames of the lead pad the decoder need not render (all but ``LEAD_FRAMES``)."""
    return max(0, int(durations[0]) - LEAD_FRAMES)


def _decode(net: _Net, frames: _Frames, a: int, b: int) -> np.ndarray:
    (audio,) = net.decoder.run(None, frames.window(a, b))
    return np.asarray(audio, np.float32).ravel()


def _speaks(chars: list[tuple[int, str]]) -> bool:
    return any(c not in PAUSE_PHONEMES and c != " " for _, c in chars)


def _chunk(text: str, rendering: Rendering) -> SpeechChunk:
    audio = rendering.audio
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    if not len(pcm):
        return SpeechChunk(text=text, pcm=pcm, sample_rate=SAMPLE_RATE)
    quiet = _quiet_frames(audio)
    return SpeechChunk(
        text=text,
        pcm=pcm,
        sample_rate=SAMPLE_RATE,
        visemes=_viseme_track(rendering.timings, quiet, len(audio)),
        words=_word_track(rendering, quiet),
    )


def _timings(batch: list[tuple[int, str]], durations: np.ndarray, samples: int, offset: int = 0) -> list[PhonemeTiming]:
    """Each token's span of the batch's audio (``samples`` long, from ``offset``), pads included."""
    edges = np.concatenate([[0], np.cumsum(durations)]) * SAMPLES_PER_FRAME
    if edges[-1] != samples:  # never seen with this export; keeps the tracks honest if one differs
        edges = np.round(edges * (samples / edges[-1])).astype(np.int64)
    edges = edges + offset
    labels = [("", -1), *((c, i) for i, c in batch), ("", -1)]
    return [PhonemeTiming(c, i, int(edges[k]), int(edges[k + 1])) for k, (c, i) in enumerate(labels)]


def _clip(timings: list[PhonemeTiming], a: int, b: int) -> list[PhonemeTiming]:
    """The timings inside samples [a, b), shifted to start at a."""
    clipped = [PhonemeTiming(t.phoneme, t.index, max(t.start, a) - a, min(t.end, b) - a) for t in timings]
    return [t for t in clipped if t.end > t.start]


def _trimmed(ph: Phonemized, audio: np.ndarray, timings: list[PhonemeTiming],
             lead: float | None, tail: float | None) -> Rendering:
    """Cut the silence Kokoro pads a text with down to ``lead`` and ``tail`` seconds (None:
    that end stays: it joins another part of the same sentence)."""
    start, end = _trim_bounds(audio, lead or 0.0, tail or 0.0)
    start = start if lead is not None else 0
    end = end if tail is not None else len(audio)
    return Rendering(ph, audio[start:end], _clip(timings, start, end))


def _plan_head(text: str, ph: Phonemized, chars: list[tuple[int, str]], durations: np.ndarray,
               head_s: float, cost: float) -> _HeadPlan | None:
    """Where to end a first window: the first word boundary after ``head_s`` of speech whose
    rest renders (at ``cost`` seconds per second of audio, plus HEAD_RUN_S) in at most
    HEAD_REST_SHARE of the head's playing time, with at least HEAD_MIN_REST frames after it.
    None: render it whole."""
    frame_s = SAMPLES_PER_FRAME / SAMPLE_RATE
    edges = np.concatenate([[0], np.cumsum(durations)])
    total = int(edges[-1])
    token = {i: k + 1 for k, (i, _) in enumerate(chars)}  # phoneme index -> token (0 is the pad)
    speech_from = int(durations[0])
    ends = _word_ends(text, ph)
    for k in range(1, len(ph.words)):
        gap = ph.words[k].start - 1  # the space before word k
        if gap not in token or ph.phonemes[gap] != " " or ends[k - 1] is None:
            continue
        join = int(edges[token[gap]])
        head_play = (join - speech_from) * frame_s
        rest = total - join
        if head_play < head_s:
            continue
        if rest < HEAD_MIN_REST:
            return None
        if cost * (rest + HEAD_CONTEXT) * frame_s + HEAD_RUN_S > HEAD_REST_SHARE * head_play:
            continue
        at = ends[k - 1]
        assert at is not None
        head_text, rest_text = text[:at].strip(), text[at:].strip()
        if not head_text or not rest_text:
            continue
        return _HeadPlan(join, head_text, rest_text)
    return None


def _word_ends(text: str, ph: Phonemized) -> list[int | None]:
    """Where each phonemized word's text ends in ``text`` (with the punctuation stuck to it),
    found in order; None from the first word that cannot be found (a number read out, say)."""
    ends: list[int | None] = []
    at = 0
    for word in ph.words:
        found = text.find(word.text, at) if ends[-1:] != [None] else -1
        if found < 0:
            ends.append(None)
            continue
        at = found + len(word.text)
        while at < len(text) and not text[at].isspace():
            at += 1
        ends.append(at)
    return ends


def _batches(chars: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Cut the token list into model-sized batches, preferring a pause, then a space."""
    batches: list[list[tuple[int, str]]] = []
    rest = chars
    while len(rest) > BATCH_PHONEMES:
        window = rest[:BATCH_PHONEMES]
        cut = next((k + 1 for k in range(len(window) - 1, BATCH_PHONEMES // 2, -1)
                    if window[k][1] in PAUSE_PHONEMES), None)
        if cut is None:
            cut = next((k + 1 for k in range(len(window) - 1, 0, -1) if window[k][1] == " "), BATCH_PHONEMES)
        batches.append(rest[:cut])
        rest = rest[cut:]
        while rest and rest[0][1] == " ":
            rest = rest[1:]
    if rest:
        batches.append(rest)
    assert all(len(b) <= MAX_TOKENS for b in batches)
    return batches


def _rms(audio: np.ndarray, hop: int) -> np.ndarray:
    n = -(-len(audio) // hop)
    padded = np.zeros(n * hop, np.float32)
    padded[: len(audio)] = audio
    return np.sqrt(np.mean(padded.reshape(n, hop) ** 2, axis=1))


def _silence_threshold(rms: np.ndarray) -> float:
    # Relative to the loud part of this chunk, with a floor for near-silent chunks.
    return max(0.003, 0.04 * float(np.percentile(rms, 90)))


def _trim_bounds(audio: np.ndarray, lead: float, tail: float) -> tuple[int, int]:
    rms = _rms(audio, _TRIM_HOP)
    loud = np.nonzero(rms >= _silence_threshold(rms))[0]
    if loud.size == 0:
        return 0, len(audio)
    start = max(0, int(loud[0]) * _TRIM_HOP - int(lead * SAMPLE_RATE))
    end = min(len(audio), (int(loud[-1]) + 1) * _TRIM_HOP + int(tail * SAMPLE_RATE))
    return start, end


def _quiet_frames(audio: np.ndarray) -> np.ndarray:
    """Per 600-sample frame: inside a run of ≥ 75 ms of silence."""
    rms = _rms(audio, SAMPLES_PER_FRAME)
    quiet = rms < _silence_threshold(rms)
    runs = np.zeros_like(quiet)
    start = None
    for i, q in enumerate([*quiet.tolist(), False]):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if i - start >= _MIN_QUIET_FRAMES:
                runs[start:i] = True
            start = None
    return runs


def _shape_of(timings: list[PhonemeTiming]) -> list[tuple[str, ...]]:
    """Each timing's visemes, with shapeless ones (spaces, marks, h) resolved from neighbours."""
    shapes: list[tuple[str, ...] | None] = []
    takes_next: list[bool] = []
    for i, t in enumerate(timings):
        if t.index < 0:
            shapes.append(("sil",))
        elif t.phoneme == " ":
            near_pause = any(
                0 <= j < len(timings) and (timings[j].index < 0 or timings[j].phoneme in PAUSE_PHONEMES)
                for j in (i - 1, i + 1)
            )
            shapes.append(("sil",) if near_pause else None)
        else:
            shapes.append(phoneme_visemes(t.phoneme) or None)
        takes_next.append(t.phoneme not in SUFFIX_MARKS and t.phoneme != " ")
    resolved: list[tuple[str, ...]] = []
    for i, shape in enumerate(shapes):
        if shape is None:
            after = next((s for s in shapes[i + 1:] if s is not None), None)
            before = next((s for s in reversed(shapes[:i]) if s is not None), None)
            # Take the start of the next phoneme's glide, or hold the end of the previous one.
            if takes_next[i]:
                shape = (after[0],) if after else (before[-1],) if before else ("sil",)
            else:
                shape = (before[-1],) if before else (after[0],) if after else ("sil",)
        resolved.append(shape)
    return resolved


def _viseme_track(timings: list[PhonemeTiming], quiet: np.ndarray, total: int) -> list[Timed]:
    """Paint each sample with its viseme, silence over quiet runs, then run-length encode."""
    labels = np.zeros(total, np.int8)  # 0 == "sil"
    for t, shape in zip(timings, _shape_of(timings), strict=True):
        cuts = np.linspace(t.start, t.end, len(shape) + 1).round().astype(int)
        for label, a, b in zip(shape, cuts[:-1], cuts[1:], strict=True):
            labels[a:b] = VISEMES.index(label)
    for frame in np.nonzero(quiet)[0]:
        labels[frame * SAMPLES_PER_FRAME:(frame + 1) * SAMPLES_PER_FRAME] = 0
    change = np.nonzero(np.diff(labels))[0] + 1
    bounds = [0, *change.tolist(), total]
    return [
        Timed(VISEMES[int(labels[a])], a / SAMPLE_RATE, b / SAMPLE_RATE)
        for a, b in itertools.pairwise(bounds)
    ]


def _word_track(rendering: Rendering, quiet: np.ndarray) -> list[Timed]:
    words: list[Timed] = []
    timings = [t for t in rendering.timings if t.index >= 0]
    for word in rendering.phonemized.words:
        inside = [t for t in timings if word.start <= t.index < word.end]
        if not inside:
            continue
        start, end = inside[0].start, inside[-1].end
        # Pull the edges in off silence the durations gave to the word, keeping at least one frame.
        first, last = start // SAMPLES_PER_FRAME, (end - 1) // SAMPLES_PER_FRAME
        while first < last and quiet[first]:
            first += 1
        while last > first and quiet[last]:
            last -= 1
        start = max(start, first * SAMPLES_PER_FRAME)
        end = min(end, (last + 1) * SAMPLES_PER_FRAME)
        words.append(Timed(word.text, start / SAMPLE_RATE, end / SAMPLE_RATE))
    return words
