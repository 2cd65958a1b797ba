"""Wire protocol v1: one msgpack map per ZeroMQ message, ROUTER (engine) <-> DEALER (game).

Incoming messages are validated into pydantic models; anything malformed becomes a
``ProtocolError`` with a stable ``ErrorCode`` that the server sends back as an ``error``
message. Outgoing messages are plain dicts built by the small constructors at the bottom,
so the hot path (audio chunks) does no model validation. ``docs/protocol.md`` is the
human-readable form of this module; keep them in step.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1
AUDIO_IN_RATE = 16_000
AUDIO_OUT_RATE = 24_000
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~32 s of 16 kHz PCM16, far above a 20 ms frame


class ErrorCode(str, Enum):
    """Stable error codes. Clients switch on these; never rename one."""

    BAD_MESSAGE = "bad_message"  # not msgpack, or not a map
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"  # a field is missing or of the wrong type
    TOO_LARGE = "too_large"
    UNKNOWN_CHARACTER = "unknown_character"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_CLOSED = "session_closed"
    BAD_AUDIO = "bad_audio"
    BAD_STATE = "bad_state"  # a state.load blob that is corrupt or from another engine
    MODEL_ERROR = "model_error"  # a model died mid-turn; the session goes on
    MODEL_UNAVAILABLE = "model_unavailable"  # e.g. no Ollama server answers
    OVERLOADED = "overloaded"
    INTERNAL = "internal"


class ProtocolError(Exception):
    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: Any = None,
        request_type: str | None = None,
        session: str | None = None,
        turn: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.request_type = request_type
        self.session = session
        self.turn = turn


# --------------------------------------------------------------------------- game -> engine

RequestId = Annotated[str | int | None, Field(default=None)]
# msgpack bin only: a str (say, base64) must not be coerced into bytes.
Bin = Annotated[bytes, Strict()]


class _In(BaseModel):
    # Fields may grow in later minor versions: unknown keys are ignored, not errors.
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[1] = PROTOCOL_VERSION
    id: RequestId = None


class _InSession(_In):
    session: str = Field(min_length=1, max_length=128)


class Hello(_In):
    type: Literal["hello"]
    client: str | None = Field(default=None, max_length=200)


class SessionOpen(_In):
    type: Literal["session.open"]
    character: str = Field(min_length=1, max_length=128)
    player: str = Field(default="player", min_length=1, max_length=128)
    session: str | None = Field(default=None, min_length=1, max_length=128)
    vars: dict[str, str | int | float | bool] = Field(default_factory=dict)
    greet: bool = True
    audio: bool = True  # stream reply.audio; false = text and cues only
    mode: Literal["push_to_talk", "open_mic"] = "push_to_talk"


class Text(_InSession):
    type: Literal["text"]
    text: str = Field(min_length=1, max_length=2000)


class Audio(_InSession):
    type: Literal["audio"]
    pcm: Bin
    rate: int = AUDIO_IN_RATE
    channels: int = 1
    format: Literal["pcm_s16le"] = "pcm_s16le"


class AudioEnd(_InSession):
    type: Literal["audio.end"]


class Event(_In):
    type: Literal["event"]
    name: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    session: str | None = None
    player: str | None = None


class Cancel(_InSession):
    type: Literal["cancel"]
    turn: int | None = None
    # Seconds of the turn's audio the player heard before the cut. The engine usually sends
    # a reply faster than it plays, so only the game knows; memory keeps just those words.
    heard: float | None = Field(default=None, ge=0)


class StateGet(_In):
    type: Literal["state.get"]
    session: str | None = None
    player: str | None = None


class StateSave(_InSession):
    type: Literal["state.save"]


class StateLoad(_InSession):
    type: Literal["state.load"]
    blob: Bin


class SessionClose(_InSession):
    type: Literal["session.close"]


class Ping(_In):
    type: Literal["ping"]
    t: float | int | None = None


Incoming = Annotated[
    Hello | SessionOpen | Text | Audio | AudioEnd | Event | Cancel | StateGet | StateSave | StateLoad | SessionClose | Ping,
    Field(discriminator="type"),
]
INCOMING_TYPES: frozenset[str] = frozenset(
    m.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in (Hello, SessionOpen, Text, Audio, AudioEnd, Event, Cancel, StateGet, StateSave, StateLoad, SessionClose, Ping)
)
_incoming = TypeAdapter(Incoming)


def decode(raw: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Incoming:
    """Parse and validate one message from the game, or raise ``ProtocolError``."""
    if len(raw) > max_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"message of {len(raw)} bytes exceeds the limit of {max_bytes} bytes; "
            "send audio in ~20 ms frames",
        )
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not a msgpack message ({exc or type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"a message must be a msgpack map, got {type(obj).__name__}")
    rid = obj.get("id")
    rid = rid if isinstance(rid, str | int) else None
    mtype = obj.get("type")
    ctx = {"request_id": rid, "request_type": mtype if isinstance(mtype, str) else None}
    sess = obj.get("session")
    if isinstance(sess, str):
        ctx["session"] = sess
    if obj.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {obj.get('v')!r} is not supported; this engine speaks v{PROTOCOL_VERSION}",
            **ctx,
        )
    if not isinstance(mtype, str):
        raise ProtocolError(ErrorCode.INVALID_FIELD, "every message needs a string field 'type'", **ctx)
    if mtype not in INCOMING_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {mtype!r}; expected one of {', '.join(sorted(INCOMING_TYPES))}",
            **ctx,
        )
    try:
        return _incoming.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_FIELD, _describe(exc), **ctx) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"][1:]) or "message"  # loc[0] is the union tag
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- engine -> game


def encode(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def out(type_: str, **fields: Any) -> dict[str, Any]:
    """An outgoing message: ``v`` and ``type`` first, ``None`` fields dropped."""
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": type_}
    msg.update((k, v) for k, v in fields.items() if v is not None)
    return msg


def error(err: ProtocolError) -> dict[str, Any]:
    return out(
        "error",
        code=err.code.value,
        message=err.message,
        id=err.request_id,
        request_type=err.request_type,
        session=err.session,
        turn=err.turn,
    )
