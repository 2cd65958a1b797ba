"""Engine configuration: defaults that work out of the box, overridable by CLI flags and env.

Every field can be set as ``NPC_ENGINE_<FIELD>`` (upper case), e.g.
``NPC_ENGINE_LLM=ollama NPC_ENGINE_OLLAMA_MODEL=llama3.2 npc-engine serve``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from npc_engine.protocol import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "npc-engine"


@dataclass
class EngineConfig:
    endpoint: str = DEFAULT_ENDPOINT
    characters: Path = Path("characters")
    story: Path = Path("story")
    data_dir: Path = field(default_factory=_default_data_dir)  # SQLite store and audio cache

    # LLM
    llm: Literal["embedded", "ollama"] = "embedded"
    llm_model: str | None = None  # embedded: a profile (fast/balanced/quality) or a GGUF path; None: llm_profiles.DEFAULT_PROFILE
    llm_threads: int = 1
    # llama.cpp's threads run this much lower in priority (Linux nice) than the voice's, so a
    # synthesis gets the core first (pipeline/scheduling.py). 0: equal; lower it if the game
    # on the same machine keeps every core busy and starves the LLM.
    llm_nice: int = 10
    # While other turns are live, a reply's later sentences render on a thread of their own
    # this much lower in priority than the voice's first words (pipeline/scheduling.py): the
    # next player's first words and the LLM writing them go first. 0: no such thread; later
    # sentences wait for the voice's one thread, in deadline order.
    tts_later_nice: int = 10
    llm_slots: int = 4  # concurrent sessions decoding at once
    llm_ctx: int = 8192  # shared by the slots
    ollama_model: str = "llama3.2"
    ollama_host: str | None = None
    ollama_keep_alive: str = "30m"
    temperature: float = 0.7
    history_turns: int = 6  # exchanges kept in the prompt (at least; see history_block)
    # The history is trimmed in blocks: it grows to history_turns + history_block - 1
    # exchanges, then the oldest history_block go at once. Between trims the prompt only grows
    # at its end, so llama.cpp reuses all of it from the KV cache and a turn evaluates only its
    # new tokens; a window sliding every turn (1) changes the prompt right after the examples
    # and has the whole history evaluated again each turn (issue #10; bench/prompt_cache.py).
    history_block: int = 4
    # At a turn's end, if the next prompt no longer starts as the KV cache holds (a trim, a new
    # fact, the story moved), evaluate it in the background while the reply plays, so the next
    # turn evaluates only the player's line (session.py _start_warm). Off: the turn does it.
    warm_next_prompt: bool = True
    # At start, evaluate each character's opening prompt into a KV cache of its own (as many
    # characters as llm_slots), which the first conversation with it takes: its first line
    # does not wait for the persona (engine.py prime_personas).
    prime_personas: bool = True
    # The guard stage between the LLM and the voice (npc_engine/turns/guard.py): off, replies
    # go out as the model wrote them. "fragment" lets the first clause out once it passed the
    # checks (first audio as without a guard); "sentence" holds every sentence to its end.
    guard: bool = True
    guard_hold: Literal["sentence", "fragment"] = "fragment"
    # Repetition control (llama.cpp sampling): a repeat penalty over the last tokens (the end
    # of the prompt included: fewer echoes of the player), and DRY against repeating longer
    # sequences (a reply copied from an earlier one, loops). 1.0 / 0.0 switch them off.
    # Measured with `npc-engine eval --lines 40` on the fast profile, guard off (134 replies,
    # seeds 1 and 2): neither 63-64% pass, repeat 1.1 85-86%, DRY 0.8 78%, both 87% (with
    # neither, conversations collapse into one repeated reply); docs/quality.md.
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    dry_multiplier: float = 0.8

    # TTS
    tts: Literal["kokoro", "espeak", "none"] = "kokoro"
    # Kokoro and Whisper's finals also load with this many intra-op threads and each run
    # takes the count that has been faster lately (pipeline/threads.py): on an idle 2-core
    # machine two threads cut the first chunk by ~40%, on a loaded one one thread wins.
    tts_threads: int = 2
    # A reply's first chunk: Kokoro voices about this much of its first words (seconds of
    # speech, to a word boundary) on a first window of the decoder, then the rest of the clause
    # as the next chunk (pipeline/tts_kokoro.py synthesize_head; docs/tts.md). 0: whole.
    tts_head_s: float = 0.5

    # STT
    stt: Literal["whisper", "moonshine", "vosk", "none"] = "whisper"
    stt_threads: int = 2  # as tts_threads: finals only, partials take one thread
    # Whisper's finals: "fit" decodes a window cut to the line + 12 s (~110 ms on this machine,
    # the 30 s window's WER on the fixtures), "full" the stock 30 s window (~350 ms). docs/stt.md.
    stt_final_window: Literal["fit", "full"] = "fit"
    vosk_model: str | None = None
    end_of_turn_ms: int = 600  # open mic without smart_turn: the silence that ends a turn
    # Open mic: end of turn by meaning (pipeline/smart_turn.py, docs/stt.md). Smart Turn hears
    # the turn at smart_turn_ms of silence: complete, the turn ends after
    # smart_turn_complete_ms; mid-thought (or the transcript ends on "and"/"um"), after
    # smart_turn_incomplete_ms. Off: end_of_turn_ms. complete_ms 200 ends finished lines
    # 380 ms sooner (median) but cuts a pause after a finished clause ("I found the amulet…
    # in the old mill", the test fixture); 600 keeps it, docs/stt.md has the measured trade.
    smart_turn: bool = True
    smart_turn_ms: int = 200
    smart_turn_complete_ms: int = 600
    smart_turn_incomplete_ms: int = 1200
    barge_in_ms: int = 300
    # Preemptive replies: a voice turn's reply starts when the player falls silent, on the
    # speculative final, and is committed or dropped at the end of the turn. Off here, no
    # session preempts; on, each session chooses (session.open `preemptive`, default true).
    preemptive: bool = True
    # Instant acknowledgements ("Hm.", pre-rendered) as a voice or typed turn's first audio,
    # ahead of the reply's own words (reply.audio `ack`). Off here, no session gets them; on,
    # each session chooses (session.open `acks`, default true).
    acks: bool = True

    # Budgets (ms): over budget a stage degrades instead of stalling the turn.
    budget_llm_first_token_ms: int = 2500
    llm_timeout_ms: int = 20000  # no first token by then: give up and speak a fallback line
    # A chunk degrades the rest of the turn to espeak-ng only if it took longer than this AND
    # longer than tts_max_rtf x its own audio: a long sentence that still synthesizes faster
    # than it plays is fine; a voice that cannot keep up with playback is not.
    budget_tts_chunk_ms: int = 3000
    tts_max_rtf: float = 1.5

    # Delivery: a game that stops reading gets at most this much queued for it, in bytes;
    # past it its turns are cut (docs/protocol.md, Delivery).
    max_outbox_bytes: int = 16 << 20

    # Lifecycle and limits, per game connection.
    session_idle_timeout_s: float = 1800.0  # a session nobody has spoken for in this long is closed
    max_sessions_per_client: int = 64
    max_queued_turns_per_client: int = 8  # turns waiting for the model at once
    max_vars_bytes: int = 4096  # session.open vars, msgpack-encoded
    max_players_cached: int = 1024  # story states kept in memory (the store keeps them all)

    # Security: a non-loopback endpoint needs CURVE keys (`npc-engine keys`) unless insecure.
    curve_secret_key: Path | None = None
    insecure: bool = False
    # Saves from before signing (format 1) can be edited undetected: refused unless this is on.
    accept_unsigned_saves: bool = False

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_audio_seconds: float = 30.0  # per utterance
    metrics_port: int | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> EngineConfig:
        cfg = cls()
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            raw = os.environ.get(f"NPC_ENGINE_{f.name.upper()}")
            if raw is not None:
                setattr(cfg, f.name, _coerce(hints[f.name], raw, f.name))
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, _coerce(hints[key], value, key) if isinstance(value, str) else value)
        return cfg

    @property
    def db_path(self) -> Path:
        return self.data_dir / "state.sqlite3"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


def baseline(cfg: EngineConfig) -> EngineConfig:
    """``cfg`` with the latency work of issue #10 switched off: the engine as it was before
    it, for ``npc-engine serve --baseline`` and the bench's A/B comparison (docs/latency.md).
    No acknowledgements, no preemptive replies, an open-mic turn ends on silence alone
    (``end_of_turn_ms``), the history slides by one exchange a turn (the prompt changes
    right after the persona, so each turn evaluates the whole history again) and is not
    warmed between turns, no persona is primed at start, the LLM runs at the voice's
    priority, synthesis and recognition run on one thread each (no choice of two by measured
    speed; no later-sentence lane), a reply's first chunk is
    rendered whole, and Whisper's finals take the 30 s window. (Synthesis is still
    scheduled by deadline across sessions: with one conversation at a time that is the old
    first-come order.)"""
    return dataclasses.replace(
        cfg, acks=False, preemptive=False, smart_turn=False, history_block=1, warm_next_prompt=False,
        prime_personas=False, llm_nice=0, tts_later_nice=0,
        tts_threads=1, tts_head_s=0.0, stt_threads=1, stt_final_window="full",
    )


def _coerce(tp: Any, raw: str, name: str) -> Any:
    args = [a for a in get_args(tp) if a is not type(None)]
    base = args[0] if args and getattr(tp, "__origin__", None) is not Literal else tp
    if getattr(tp, "__origin__", None) is Literal:
        if raw not in get_args(tp):
            raise ValueError(f"{name} must be one of {', '.join(get_args(tp))}, not {raw!r}")
        return raw
    if raw == "" and type(None) in get_args(tp):
        return None
    for t in (bool, int, float, Path):
        if base is t or tp is t:
            if t is bool:
                return raw.lower() in ("1", "true", "yes", "on")
            try:
                return t(raw)
            except ValueError:
                raise ValueError(f"{name} must be a {t.__name__}, not {raw!r}") from None
    return raw
