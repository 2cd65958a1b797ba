"""Decoding game messages: every malformed input becomes a typed, explained error."""

from __future__ import annotations

import msgpack
import pytest

from npc_engine.protocol import (
    INCOMING_TYPES,
    AudioEnd,
    ErrorCode,
    ProtocolError,
    SessionOpen,
    Text,
    decode,
    encode,
)
from npc_engine.protocol import outgoing as O


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def code_of(raw: bytes, **kw: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(raw, **kw)
    return info.value


def test_valid_messages_decode_to_their_models() -> None:
    msg = decode(pack({"v": 1, "type": "text", "session": "s1", "text": "hello", "id": 7}))
    assert isinstance(msg, Text) and msg.text == "hello" and msg.id == 7
    opened = decode(pack({"type": "session.open", "character": "bram"}))  # v defaults to 1
    assert isinstance(opened, SessionOpen) and opened.player == "player" and opened.greet
    assert isinstance(decode(pack({"v": 1, "type": "audio.end", "session": "s"})), AudioEnd)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    msg = decode(pack({"v": 1, "type": "ping", "future_field": [1, 2]}))
    assert msg.type == "ping"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xc1\xc1 not msgpack", ErrorCode.BAD_MESSAGE),
        (pack([1, 2, 3]), ErrorCode.BAD_MESSAGE),
        (pack({"v": 2, "type": "ping"}), ErrorCode.UNSUPPORTED_VERSION),
        (pack({"v": 1}), ErrorCode.INVALID_FIELD),
        (pack({"v": 1, "type": "dance"}), ErrorCode.UNKNOWN_TYPE),
        (pack({"v": 1, "type": "text", "session": "s"}), ErrorCode.INVALID_FIELD),
        (pack({"v": 1, "type": "text", "session": "s", "text": 5}), ErrorCode.INVALID_FIELD),
        (pack({"v": 1, "type": "audio", "session": "s", "pcm": "base64 is not allowed"}), ErrorCode.INVALID_FIELD),
        (pack({"v": 1, "type": "session.open"}), ErrorCode.INVALID_FIELD),
    ],
)
def test_malformed_messages_get_stable_codes(raw: bytes, code: ErrorCode) -> None:
    err = code_of(raw)
    assert err.code is code
    assert err.message  # a sentence a developer can act on


def test_errors_name_the_field_and_echo_the_request() -> None:
    err = code_of(pack({"v": 1, "type": "text", "session": "s9", "id": "req-1"}))
    assert "text" in err.message
    wire = O.as_dict(O.Error.of(err))
    assert wire["type"] == "error" and wire["id"] == "req-1" and wire["session"] == "s9"
    assert wire["request_type"] == "text" and wire["code"] == "invalid_field"


def test_oversized_message_is_refused_before_parsing() -> None:
    raw = pack({"v": 1, "type": "audio", "session": "s", "pcm": b"\0" * 5000})
    assert code_of(raw, max_bytes=4096).code is ErrorCode.TOO_LARGE


def test_outgoing_messages_carry_version_and_drop_nones() -> None:
    msg = O.as_dict(O.Pong(id=None, t=1.5, server_time=2.0))
    assert msg == {"v": 1, "type": "pong", "t": 1.5, "server_time": 2.0, "warming": False}
    audio = O.ReplyAudio(session="s", turn=1, seq=3, chunk=0, pcm=b"\x01\x02", rate=24000, start=0.0, duration=0.1, text="Hm.")
    wire = msgpack.unpackb(encode(audio))
    assert wire["pcm"] == b"\x01\x02" and wire["type"] == "reply.audio" and wire["seq"] == 3
    assert list(wire)[:2] == ["v", "type"]


def test_story_messages_flatten_their_effect() -> None:
    msg = O.StoryMessage(session="s", turn=2, seq=1, effect={"kind": "emit_event", "name": "door.open", "data": {}, "x": None})
    assert O.as_dict(msg) == {
        "v": 1, "type": "story", "session": "s", "turn": 2, "seq": 1, "kind": "emit_event", "name": "door.open", "data": {},
    }


def test_every_outgoing_type_is_documented() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    types = {cls.TYPE for cls in _subclasses(O.Outgoing) if "TYPE" in cls.__dict__}
    assert {"reply.audio", "turn.end", "error", "hello.ok"} <= types
    missing = [t for t in types if f"`{t}`" not in text]
    assert not missing, f"docs/protocol.md does not document {missing}"


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def test_every_incoming_type_is_documented() -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
    if not doc.exists():
        pytest.skip("docs/protocol.md not written yet")
    text = doc.read_text()
    missing = [t for t in INCOMING_TYPES if f"`{t}`" not in text]
    assert not missing, f"docs/protocol.md does not document {missing}"
