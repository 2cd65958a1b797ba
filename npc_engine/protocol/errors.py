"""What both directions share: the version, the limits, and the stable error codes."""

from __future__ import annotations

from enum import Enum

PROTOCOL_VERSION = 1
AUDIO_IN_RATE = 16_000
AUDIO_OUT_RATE = 24_000
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~32 s of 16 kHz PCM16, far above a 20 ms frame

RequestId = str | int | None


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
    FORBIDDEN = "forbidden"  # the session or player belongs to another connection
    SLOW_CONSUMER = "slow_consumer"  # the game stopped reading; its turns were cut to free the engine
    INTERNAL = "internal"


class ProtocolError(Exception):
    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: RequestId = None,
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
