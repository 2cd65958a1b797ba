"""Engine -> game: one frozen dataclass per message type, encoded in one place (``encode``).

Dataclasses rather than pydantic models: the engine builds these, so there is nothing to
validate, and the hot path (an audio chunk every few hundred ms per session) stays cheap.
``docs/protocol.md`` section 5 is the human-readable form of this module; keep them in step.

Messages that belong to a session carry ``session``; messages that belong to a turn also
carry ``turn`` and ``seq``. Those envelope fields are stamped by whoever sends the message
(a turn's outbox numbers its messages only when they actually go out, so a speculative
turn that is dropped leaves no gap), which is why they default to ``None`` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

import msgpack

from npc_engine.protocol.errors import PROTOCOL_VERSION, ErrorCode, ProtocolError, RequestId

# A value msgpack can carry to the game (story event data, template variables, ...).
WireValue: TypeAlias = (
    "bool | int | float | str | bytes | Sequence[WireValue] | Mapping[str, WireValue] | None"
)
TurnSource = Literal["text", "voice", "greeting", "story", "reaction", "banter"]
TurnStatus = Literal["ok", "degraded", "cancelled", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """Base of every engine -> game message. ``TYPE`` is the wire ``type``."""

    TYPE: ClassVar[str]
    id: RequestId = None  # echo of the request this answers, where there is one

    def fields(self) -> dict[str, object]:
        """The message's fields in declaration order, ``None`` dropped (absent on the wire)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionMessage(Outgoing):
    """A message of one session; ``turn``/``seq`` are set when it is one of a turn's messages."""

    session: str | None = None
    turn: int | None = None
    seq: int | None = None
    # Who speaks: stamped on every message of a turn (in a scene, the game routes the audio,
    # lips and subtitles by it).
    character: str | None = None


# --------------------------------------------------------------------------- replies to requests


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloOk(Outgoing):
    TYPE: ClassVar[str] = "hello.ok"
    engine: str
    protocol: int
    characters: list[dict[str, str]]
    audio_in: dict[str, int | str]
    audio_out: dict[str, int | str] | None
    stt: bool
    max_message_bytes: int
    # Start-up work still running (pre-rendering scripted lines, priming personas): turns
    # work meanwhile, but compete with it for the CPU (docs/protocol.md, ``hello.ok``).
    warming: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Outgoing):
    TYPE: ClassVar[str] = "pong"
    t: float | int | None = None
    server_time: float
    warming: bool = False  # as ``HelloOk.warming``: poll ``ping`` to know when it is over


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOpened(SessionMessage):
    TYPE: ClassVar[str] = "session.opened"
    character: str
    name: str
    player: str
    resumed: bool
    beat: str | None
    audio: bool
    sample_rate: int | None
    # Proves ownership of the session to another connection (``session.resume``): only the
    # connection that opened the session gets it. Set by the server, not by the session.
    token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionResumed(SessionOpened):
    """``session.resumed``: the answer to ``session.resume``; the same fields as ``session.opened``."""

    TYPE: ClassVar[str] = "session.resumed"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed(SessionMessage):
    TYPE: ClassVar[str] = "session.closed"


@dataclass(frozen=True, slots=True, kw_only=True)
class SceneOpened(SessionMessage):
    """``scene.opened`` (and ``scene.updated``, ``scene.resumed``): who is in the scene now."""

    TYPE: ClassVar[str] = "scene.opened"
    player: str
    characters: list[dict[str, str | None]]  # [{character, name, beat}] in the scene's order
    audio: bool
    sample_rate: int | None
    reactions: bool
    facing: str | None = None
    resumed: bool | None = None
    token: str | None = None  # to the opener only, as for session.opened


@dataclass(frozen=True, slots=True, kw_only=True)
class SceneUpdated(SceneOpened):
    TYPE: ClassVar[str] = "scene.updated"


@dataclass(frozen=True, slots=True, kw_only=True)
class SceneResumed(SceneOpened):
    TYPE: ClassVar[str] = "scene.resumed"


@dataclass(frozen=True, slots=True, kw_only=True)
class BanterEnd(SessionMessage):
    """``banter.end``: a ``scene.banter`` is over: ``lines`` said, ``interrupted`` if cut short."""

    TYPE: ClassVar[str] = "banter.end"
    lines: int
    interrupted: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StateReport(Outgoing):
    """``state``: a player's story state, for a quest log."""

    TYPE: ClassVar[str] = "state"
    session: str | None = None
    player: str
    beats: dict[str, str]
    flags: dict[str, bool]
    vars: dict[str, bool | int | float | str]
    last_beat: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSaved(SessionMessage):
    TYPE: ClassVar[str] = "state.saved"
    player: str
    blob: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StateLoaded(SessionMessage):
    TYPE: ClassVar[str] = "state.loaded"
    player: str
    beat: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventOk(Outgoing):
    TYPE: ClassVar[str] = "event.ok"
    name: str
    # Shaped like `story` messages' fields; optional fields may be nil here (docs, section 5).
    effects: list[dict[str, WireValue]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(SessionMessage):
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    request_type: str | None = None

    @classmethod
    def of(cls, err: ProtocolError) -> Error:
        return cls(
            code=err.code.value, message=err.message, id=err.request_id, request_type=err.request_type,
            session=err.session, turn=err.turn,
        )

    @classmethod
    def in_turn(cls, code: ErrorCode, message: str) -> Error:
        """An error that is one of a turn's messages (the turn's outbox stamps it)."""
        return cls(code=code.value, message=message)


# --------------------------------------------------------------------------- voice in


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript(SessionMessage):
    TYPE: ClassVar[str] = "transcript"
    text: str
    final: bool
    utterance: int


# --------------------------------------------------------------------------- a turn's messages


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnStart(SessionMessage):
    TYPE: ClassVar[str] = "turn.start"
    source: TurnSource
    input: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyText(SessionMessage):
    TYPE: ClassVar[str] = "reply.text"
    delta: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyAudio(SessionMessage):
    TYPE: ClassVar[str] = "reply.audio"
    chunk: int
    pcm: bytes
    rate: int
    channels: int = 1
    format: str = "pcm_s16le"
    start: float
    duration: float
    text: str
    # An acknowledgement ("Hm.") said while the reply was not ready yet; the reply's own
    # chunks follow. False is sent too (always on the wire), so a game can rely on the key.
    ack: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """One entry of a ``visemes`` or ``words`` track (seconds from the chunk's start)."""

    label: str
    start: float
    end: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Cue(SessionMessage):
    """``cue``: an emotion/gesture/action cue, or a chunk's ``visemes`` / ``words`` track."""

    TYPE: ClassVar[str] = "cue"
    kind: str
    name: str | None = None
    chunk: int | None = None
    at: float | None = None
    visemes: list[dict[str, str | float]] | None = None
    words: list[dict[str, str | float]] | None = None

    @classmethod
    def track(cls, kind: Literal["visemes", "words"], chunk: int, spans: Sequence[Span]) -> Cue:
        key = "viseme" if kind == "visemes" else "word"
        entries: list[dict[str, str | float]] = [
            {key: s.label, "start": round(s.start, 4), "end": round(s.end, 4)} for s in spans
        ]
        return cls(kind=kind, chunk=chunk, visemes=entries if kind == "visemes" else None,
                   words=entries if kind == "words" else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoryMessage(SessionMessage):
    """``story``: one story effect; ``effect`` holds its ``kind`` and data, flattened on the wire."""

    TYPE: ClassVar[str] = "story"
    effect: Mapping[str, WireValue] = field(default_factory=dict)

    def fields(self) -> dict[str, object]:
        out = Outgoing.fields(self)
        effect = out.pop("effect")
        assert isinstance(effect, Mapping)
        out.update((k, v) for k, v in effect.items() if v is not None)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnEnd(SessionMessage):
    TYPE: ClassVar[str] = "turn.end"
    status: TurnStatus
    interrupted: bool
    text: str
    timings: dict[str, float]
    degraded: list[dict[str, str]] | None = None
    tokens: int
    audio_seconds: float
    guard: list[dict[str, str]] | None = None  # what the guard stopped: [{check, action}], absent if nothing
    # The LLM call's prompt, in tokens, and how many of them it had to evaluate (not served
    # from the KV cache); absent for a turn without one, or a backend that does not say.
    prompt_tokens: int | None = None
    prompt_tokens_evaluated: int | None = None
    # True for a voice reply started before the end of the player's turn was confirmed and
    # committed at it (timings.preemptive_lead: how long before); absent otherwise.
    preemptive: bool | None = None


def as_dict(msg: Outgoing) -> dict[str, object]:
    """The wire map of ``msg``: ``v`` and ``type`` first, then its fields, ``None`` dropped."""
    wire: dict[str, object] = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    wire.update(msg.fields())
    return wire


def encode(msg: Outgoing) -> bytes:
    """The one place an outgoing message becomes bytes."""
    packed: bytes = msgpack.packb(as_dict(msg), use_bin_type=True)
    return packed
