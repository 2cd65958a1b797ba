"""Wire protocol v1: one msgpack map per ZeroMQ message, ROUTER (engine) <-> DEALER (game).

* ``errors``: the version, limits and stable error codes both directions share;
* ``incoming``: what a game may send, validated (``decode``);
* ``outgoing``: what the engine sends, one dataclass per message type (``encode``).
"""

from npc_engine.protocol.errors import (
    AUDIO_IN_RATE,
    AUDIO_OUT_RATE,
    DEFAULT_MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
)
from npc_engine.protocol.incoming import (
    INCOMING_TYPES,
    Audio,
    AudioEnd,
    Cancel,
    Event,
    Hello,
    Incoming,
    Ping,
    SceneBanter,
    SceneOpen,
    SceneUpdate,
    SessionClose,
    SessionOpen,
    SessionResume,
    StateGet,
    StateLoad,
    StateSave,
    Text,
    decode,
)
from npc_engine.protocol.outgoing import Outgoing, as_dict, encode

__all__ = [
    "AUDIO_IN_RATE",
    "AUDIO_OUT_RATE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "INCOMING_TYPES",
    "PROTOCOL_VERSION",
    "Audio",
    "AudioEnd",
    "Cancel",
    "ErrorCode",
    "Event",
    "Hello",
    "Incoming",
    "Outgoing",
    "Ping",
    "ProtocolError",
    "SceneBanter",
    "SceneOpen",
    "SceneUpdate",
    "SessionClose",
    "SessionOpen",
    "SessionResume",
    "StateGet",
    "StateLoad",
    "StateSave",
    "Text",
    "as_dict",
    "decode",
    "encode",
]
