"""Bad input gets a typed error and never stops the engine serving everyone else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgpack
import pytest

from npc_engine.client import EngineClient, EngineError
from tests.harness import Running, engine_config, running_engine


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    cfg = engine_config(tmp_path_factory.mktemp("bad"), max_message_bytes=64 * 1024)
    async with running_engine(cfg) as running:
        yield running



async def next_error(client: EngineClient) -> dict:
    import asyncio

    return await asyncio.wait_for(client.errors.get(), 10)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x92\x01", "bad_message"),  # truncated msgpack
        (b"hello world", "bad_message"),
        (msgpack.packb("just a string"), "bad_message"),
        (msgpack.packb({"v": 1, "type": "teleport"}), "unknown_type"),
        (msgpack.packb({"v": 9, "type": "ping"}), "unsupported_version"),
        (msgpack.packb({"v": 1, "type": "text", "session": "nope", "text": "hi"}), "unknown_session"),
        (msgpack.packb({"v": 1, "type": "audio", "session": "nope", "pcm": "AAAA"}), "invalid_field"),
    ],
)
async def test_malformed_messages_get_typed_errors(client: EngineClient, payload: bytes, code: str) -> None:
    await client.send_raw(payload)
    err = await next_error(client)
    assert err["type"] == "error" and err["code"] == code and err["message"]


async def test_oversized_message_is_refused(client: EngineClient) -> None:
    big = {"v": 1, "type": "audio", "session": "x", "pcm": b"\0" * (128 * 1024)}
    await client.send(big)
    err = await next_error(client)
    assert err["code"] == "too_large"


async def test_unknown_character_names_the_known_ones(client: EngineClient) -> None:
    with pytest.raises(EngineError) as info:
        await client.open_session("dragon", "p")
    assert info.value.code == "unknown_character"
    assert "bram" in info.value.message


async def test_text_in_a_closed_session(client: EngineClient) -> None:
    s = await client.open_session("bram", "p-closed", greet=False, audio=False)
    await s.close()
    with pytest.raises(EngineError) as info:
        await client.request({"type": "text", "session": s.id, "text": "still there?"})
    assert info.value.code == "session_closed"


async def test_audio_without_speech_recognition_is_refused(client: EngineClient) -> None:
    s = await client.open_session("bram", "p-audio", greet=False, audio=False)
    with pytest.raises(EngineError) as info:
        await client.request({"type": "audio", "session": s.id, "pcm": b"\0\0" * 320})
    assert info.value.code == "bad_audio"
    with pytest.raises(EngineError) as info:
        await client.request({"type": "audio", "session": s.id, "pcm": b"\0\0" * 320, "rate": 44100})
    assert info.value.code == "bad_audio" and "16000" in info.value.message


async def test_garbage_save_blob(client: EngineClient) -> None:
    s = await client.open_session("bram", "p-blob", greet=False, audio=False)
    with pytest.raises(EngineError) as info:
        await s.load(b"definitely not a save")
    assert info.value.code == "bad_state"
    good = await s.save()
    tampered = bytearray(good)
    tampered[-3] ^= 0xFF
    with pytest.raises(EngineError) as info:
        await s.load(bytes(tampered))
    assert info.value.code == "bad_state"


async def test_engine_keeps_serving_other_sessions_after_bad_input(engine: Running) -> None:
    good = await EngineClient.connect(engine.endpoint)
    bad = await EngineClient.connect(engine.endpoint)
    try:
        s = await good.open_session("marta", "p-survivor", greet=False, audio=False)
        for junk in (b"\xff" * 10, msgpack.packb({"type": "nonsense"}), msgpack.packb({"v": 1, "type": "text"})):
            await bad.send_raw(junk)
        turn = await s.say("Hello?")
        msgs = await turn.collect()
        assert msgs[-1]["type"] == "turn.end" and msgs[-1]["status"] in ("ok", "degraded")
        errors = [await next_error(bad) for _ in range(3)]
        assert [e["code"] for e in errors] == ["bad_message", "unknown_type", "invalid_field"]
    finally:
        await good.close()
        await bad.close()
