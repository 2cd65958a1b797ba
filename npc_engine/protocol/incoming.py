"""Game -> engine: the messages a game may send, validated into frozen pydantic models.

Anything malformed becomes a ``ProtocolError`` with a stable ``ErrorCode`` that the server
sends back as an ``error`` message. ``docs/protocol.md`` section 4 is the human-readable
form of this module; keep them in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypedDict

import msgpack
from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from npc_engine.protocol.errors import (
    AUDIO_IN_RATE,
    DEFAULT_MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
)

# --------------------------------------------------------------------------- game -> engine

# Every id a game names (session, player, character, a str request id): 1-128 characters
# (docs/protocol.md section 9). Ids key the engine's tables and the store, so each one is bounded.
MAX_ID_CHARS = 128
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
RequestId = Annotated[Id | int | None, Field(default=None)]
# session.open vars become the player's story variables (kept in memory and in the store):
# bounded in count and name length here, in encoded size by the server (max_vars_bytes).
MAX_VARS = 64
MAX_VAR_NAME_CHARS = 64
VarName = Annotated[str, Field(min_length=1, max_length=MAX_VAR_NAME_CHARS)]
# msgpack bin only: a str (say, base64) must not be coerced into bytes.
Bin = Annotated[bytes, Strict()]


class _In(BaseModel):
    # Fields may grow in later minor versions: unknown keys are ignored, not errors.
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[1] = 1  # PROTOCOL_VERSION; decode() refuses any other before validating
    id: RequestId = None
    type: str  # narrowed to one Literal by each message


class InSession(_In):
    """A message that names an open session."""

    session: str = Field(min_length=1, max_length=128)


class Hello(_In):
    type: Literal["hello"]
    client: str | None = Field(default=None, max_length=200)


class SessionOpen(_In):
    type: Literal["session.open"]
    character: str = Field(min_length=1, max_length=128)
    player: str = Field(default="player", min_length=1, max_length=128)
    session: str | None = Field(default=None, min_length=1, max_length=128)
    vars: dict[VarName, str | int | float | bool] = Field(default_factory=dict, max_length=MAX_VARS)
    greet: bool = True
    audio: bool = True  # stream reply.audio; false = text and cues only
    mode: Literal["push_to_talk", "open_mic"] = "push_to_talk"
    # Voice turns: start the reply when the player falls silent, before the end of the turn
    # is confirmed (committed if the turn ends on the same words, else dropped unseen).
    preemptive: bool = True
    # Say a short pre-rendered acknowledgement ("Hm.", reply.audio ack: true) when the reply's
    # audio is not ready at the end of the player's turn; false: the reply's own audio only.
    acks: bool = True


class Text(InSession):
    type: Literal["text"]
    text: str = Field(min_length=1, max_length=2000)
    # Who answers (a scene's present character; in a one-to-one session its own character).
    character: Id | None = None


# A scene holds at most this many characters: each keeps its own KV-cache slot warm.
MAX_SCENE_CHARACTERS = 8


class SceneOpen(_In):
    """Two or more characters and one player in one conversation (docs/protocol.md, Scenes)."""

    type: Literal["scene.open"]
    characters: list[Id] = Field(min_length=1, max_length=MAX_SCENE_CHARACTERS)
    player: str = Field(default="player", min_length=1, max_length=128)
    session: str | None = Field(default=None, min_length=1, max_length=128)
    vars: dict[VarName, str | int | float | bool] = Field(default_factory=dict, max_length=MAX_VARS)
    greet: bool = False  # true: the first character listed greets the player
    audio: bool = True
    mode: Literal["push_to_talk", "open_mic"] = "push_to_talk"
    preemptive: bool = True
    acks: bool = True
    # Another character may add a short remark after the answer, when the line concerns it.
    reactions: bool = True
    facing: Id | None = None  # the character the player faces (answers a line naming nobody)


class SceneUpdate(InSession):
    """Change a running scene; a field left out stays as it is (``facing: nil`` clears it)."""

    type: Literal["scene.update"]
    facing: Id | None = None
    reactions: bool | None = None
    join: list[Id] = Field(default_factory=list, max_length=MAX_SCENE_CHARACTERS)
    leave: list[Id] = Field(default_factory=list, max_length=MAX_SCENE_CHARACTERS)

    @property
    def sets_facing(self) -> bool:
        """Whether the game sent ``facing`` (nil included), rather than leaving it out."""
        return "facing" in self.model_fields_set


MAX_BANTER_LINES = 8


class SceneBanter(InSession):
    """Characters of a scene talk to each other: about ``topic``, or a story beat's exchange."""

    type: Literal["scene.banter"]
    topic: str | None = Field(default=None, min_length=1, max_length=300)
    beat: Id | None = None
    characters: list[Id] | None = Field(default=None, min_length=2, max_length=MAX_SCENE_CHARACTERS)
    lines: int = Field(default=4, ge=2, le=MAX_BANTER_LINES)


class Audio(InSession):
    type: Literal["audio"]
    pcm: Bin
    rate: int = AUDIO_IN_RATE
    channels: int = 1
    format: Literal["pcm_s16le"] = "pcm_s16le"


class AudioEnd(InSession):
    type: Literal["audio.end"]


class Event(_In):
    type: Literal["event"]
    name: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    session: Id | None = None
    player: Id | None = None


class Cancel(InSession):
    type: Literal["cancel"]
    turn: int | None = None
    # Seconds of the turn's audio the player heard before the cut. The engine usually sends
    # a reply faster than it plays, so only the game knows; memory keeps just those words.
    heard: float | None = Field(default=None, ge=0)


class StateGet(_In):
    type: Literal["state.get"]
    session: Id | None = None
    player: Id | None = None


class StateSave(InSession):
    type: Literal["state.save"]


class StateLoad(InSession):
    type: Literal["state.load"]
    blob: Bin


class SessionClose(InSession):
    type: Literal["session.close"]


class SessionResume(InSession):
    """Take over a session another connection opened (a game that reconnected), with the
    ``token`` its ``session.opened`` carried."""

    type: Literal["session.resume"]
    token: str = Field(min_length=1, max_length=128)


class Ping(_In):
    type: Literal["ping"]
    t: float | int | None = None


Incoming = Annotated[
    Hello | SessionOpen | Text | Audio | AudioEnd | Event | Cancel | StateGet | StateSave | StateLoad | SessionClose
    | SessionResume | Ping | SceneOpen | SceneUpdate | SceneBanter,
    Field(discriminator="type"),
]
INCOMING_TYPES: frozenset[str] = frozenset(
    m.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in (Hello, SessionOpen, Text, Audio, AudioEnd, Event, Cancel, StateGet, StateSave, StateLoad, SessionClose,
              SessionResume, Ping, SceneOpen, SceneUpdate, SceneBanter)
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
    raw_id, mtype, sess = obj.get("id"), obj.get("type"), obj.get("session")
    ctx = _Context(
        request_id=raw_id if isinstance(raw_id, str | int) else None,
        request_type=mtype if isinstance(mtype, str) else None,
        session=sess if isinstance(sess, str) else None,
    )
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


def check_vars(vars: Mapping[str, str | int | float | bool], max_bytes: int) -> None:
    """``session.open`` vars of at most ``max_bytes`` msgpack-encoded, else ``invalid_field``.

    The limit is the engine's setting (``max_vars_bytes``), so it is checked here rather than
    in the model; count and name length are checked by ``SessionOpen`` itself."""
    size = len(msgpack.packb(dict(vars), use_bin_type=True))
    if size > max_bytes:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, f"vars: {size} bytes msgpack-encoded, over this engine's limit of {max_bytes} bytes"
        )


class _Context(TypedDict):
    """What an error reply echoes of a request it could not fully read."""

    request_id: str | int | None
    request_type: str | None
    session: str | None


# Names pydantic gives the members of a union (``id: str | int``) in an error's location;
# they are not fields, and each member fails on its own: one sentence per field is enough.
_UNION_MEMBERS = frozenset({"constrained-str", "str", "int", "float", "bool", "none"})


def _describe(exc: ValidationError) -> str:
    parts: dict[str, str] = {}
    for err in exc.errors():
        # loc[0] is the message's union tag
        loc = ".".join(str(p) for p in err["loc"][1:] if p not in _UNION_MEMBERS) or "message"
        parts.setdefault(loc, f"{loc}: {err['msg']}")
        if len(parts) == 3:
            break
    return "; ".join(parts.values())
