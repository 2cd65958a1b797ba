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
    llm_slots: int = 4  # concurrent sessions decoding at once
    llm_ctx: int = 8192  # shared by the slots
    ollama_model: str = "llama3.2"
    ollama_host: str | None = None
    ollama_keep_alive: str = "30m"
    temperature: float = 0.7
    history_turns: int = 6  # exchanges kept in the prompt
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
    tts_threads: int = 1

    # STT
    stt: Literal["whisper", "moonshine", "vosk", "none"] = "whisper"
    stt_threads: int = 1
    vosk_model: str | None = None
    end_of_turn_ms: int = 600
    barge_in_ms: int = 300

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
