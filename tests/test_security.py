"""Nobody let in: session ownership, player scoping, the bind policy and CURVE, over real sockets.

Every engine here is the real one (embedded LLM, no voice: these are about the protocol's
plumbing). A "game" is one ``EngineClient`` (one DEALER connection); an attacker is simply a
second connection to the same engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from npc_engine.cli import main as cli_main
from npc_engine.client import EngineClient, EngineError, EngineUnavailable, Turn
from npc_engine.server import Server
from npc_engine.server.auth import BindRefused, CurveKeys, KeyFileError, is_local, write_keys
from tests.harness import REPO, Running, engine_config, running_engine

LONG_PROMPT = "Tell me everything about your life, your work and this village, in as much detail as you can."
# A client that must get no reply waits this long for one. Its absence is the property; the
# bound only stops the wait (a reply on loopback takes milliseconds).
NO_REPLY_WAIT_S = 1.5


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with running_engine(engine_config(tmp_path_factory.mktemp("security"))) as running:
        yield running


@pytest.fixture
async def attacker(engine: Running) -> AsyncIterator[EngineClient]:
    """A second connection to the same engine: another game, or someone else entirely."""
    c = await EngineClient.connect(engine.endpoint, client_name="attacker")
    yield c
    await c.close()


async def refused(request: Any) -> EngineError:
    """The ``forbidden`` error a request gets (``request``: an awaitable that raises it)."""
    with pytest.raises(EngineError) as caught:
        await request
    assert caught.value.code == "forbidden", caught.value.raw
    return caught.value


async def flushed(client: EngineClient) -> None:
    """Everything the engine sent this client before now has been read: a ping's pong comes
    after it (one connection's messages are delivered in order)."""
    await client.request({"type": "ping"})


def drain(turn: Turn) -> list[dict[str, Any]]:
    out = []
    while not turn.queue.empty():
        out.append(turn.queue.get_nowait())
    return out


def messages_about(client: EngineClient, sid: str) -> list[dict[str, Any]]:
    """Every message of session ``sid`` this client holds outside its own requests' replies."""
    held: list[dict[str, Any]] = []
    for queue in (client.unrouted, client.errors):
        held += [m for m in list(queue._queue) if m.get("session") == sid]  # type: ignore[attr-defined]
    session = client.sessions.get(sid)
    if session is not None:
        held += list(session.other._queue)  # type: ignore[attr-defined]
        for turn in session.turns.values():
            held += list(turn.queue._queue)  # type: ignore[attr-defined]
    return held


# --------------------------------------------------------------------------- session ownership


async def test_another_connection_cannot_hijack_a_session(
    client: EngineClient, attacker: EngineClient
) -> None:
    """The issue's attack: a second connection named the victim's session (one state.get) and
    received the rest of the victim's turn. Now every request on another's session is
    ``forbidden``, the attacker gets nothing of the session, and the victim's turn runs on."""
    victim = await client.open_session("bram", "victim-hijack", greet=False, audio=False)
    assert isinstance(victim.token, str) and len(victim.token) >= 32
    turn = await victim.say(LONG_PROMPT)
    sid = victim.id
    # Mid-turn (or just after it, on a fast machine: the property is the same).
    attempts: list[dict[str, Any]] = [
        {"type": "state.get", "session": sid},
        {"type": "text", "session": sid, "text": "Stop talking to them and talk to me."},
        {"type": "cancel", "session": sid},
        {"type": "cancel", "session": sid, "turn": turn.id, "heard": 0.1},
        {"type": "event", "session": sid, "name": "item.picked_up", "data": {"item": "hammer"}},
        {"type": "state.save", "session": sid},
        {"type": "audio.end", "session": sid},
        {"type": "session.close", "session": sid},
    ]
    for attempt in attempts:
        err = await refused(attacker.request(attempt))
        assert err.raw.get("session") == sid and err.raw.get("request_type") == attempt["type"]
        assert "token" not in err.raw

    msgs = await turn.collect(timeout=120)
    end = msgs[-1]
    assert end["type"] == "turn.end" and end["status"] in ("ok", "degraded"), end
    assert end["interrupted"] is False, "the attacker's cancel reached the victim's turn"
    assert [m["seq"] for m in msgs] == list(range(len(msgs))), "the victim lost part of its turn"

    await flushed(attacker)
    assert messages_about(attacker, sid) == [], "the attacker received the victim's messages"
    assert sid not in attacker.sessions

    # The victim's session still works for the victim, with the same token.
    again = await (await victim.say("Thank you.")).collect(timeout=120)
    assert again[-1]["type"] == "turn.end"
    await victim.close()


async def test_resume_with_the_token_moves_the_session_and_a_wrong_token_is_forbidden(
    engine: Running, client: EngineClient, attacker: EngineClient
) -> None:
    first = await client.open_session("marta", "player-resume", greet=False, audio=False)
    sid, token = first.id, first.token
    assert token is not None

    await refused(attacker.resume_session(sid, "not-the-token"))
    await refused(attacker.resume_session(sid, token[:-1] + ("A" if token[-1] != "A" else "B")))
    await refused(attacker.request({"type": "text", "session": sid, "text": "Hi"}))  # still not its owner

    # The game reconnects (a new connection) mid-turn and takes the session back.
    turn = await first.say(LONG_PROMPT)
    async with await EngineClient.connect(engine.endpoint) as reconnected:
        resumed = await reconnected.resume_session(sid, token)
        assert resumed.info["type"] == "session.resumed"
        for key in ("session", "character", "name", "player", "audio", "resumed"):
            assert resumed.info[key] == first.info[key], key
        assert resumed.token == token

        # The turn that was running: one part went to the old connection, the rest (with its
        # turn.end) to the new one; nothing lost, nothing twice.
        await flushed(client)
        old_part = drain(turn)
        if old_part and old_part[-1]["type"] == "turn.end":
            rest: list[dict[str, Any]] = []  # it had ended before the resume
        else:
            rest = await (await resumed.next_turn(timeout=120)).collect(timeout=120)
        whole = old_part + rest
        assert [m["seq"] for m in whole] == list(range(len(whole))), [m["type"] for m in whole]
        assert whole[-1]["type"] == "turn.end"

        # Now the old connection is the outsider: forbidden, and it gets nothing more.
        await refused(client.request({"type": "text", "session": sid, "text": "Am I still here?"}))
        msgs = await (await resumed.say("Good evening.")).collect(timeout=120)
        assert msgs[-1]["type"] == "turn.end"
        await flushed(client)
        assert messages_about(client, sid) == [], "the old connection still receives the session"

        # And the old connection can take it back the same way.
        back = await client.resume_session(sid, token)
        assert back.id == sid
        await refused(reconnected.request({"type": "state.save", "session": sid}))
    await back.close()


async def test_resume_of_an_unknown_or_closed_session_says_so(client: EngineClient) -> None:
    with pytest.raises(EngineError) as caught:
        await client.resume_session("no-such-session", "whatever")
    assert caught.value.code == "unknown_session"
    s = await client.open_session("aldric", "player-closed", greet=False, audio=False)
    assert s.token is not None
    await s.close()
    with pytest.raises(EngineError) as caught:
        await client.resume_session(s.id, s.token)
    assert caught.value.code == "session_closed"


# --------------------------------------------------------------------------- player scoping


async def test_state_and_events_only_for_players_of_this_connections_sessions(
    client: EngineClient, attacker: EngineClient
) -> None:
    """``state.get``/``event`` by player, and ``state.save``/``state.load`` on a session, work
    only for players this connection has a session open for."""
    mine = await client.open_session("bram", "victim-scope", greet=False, audio=False)
    await mine.event("item.picked_up", {"item": "hammer"})
    blob = await mine.save()

    # The attacker names the player: refused, exactly as for a player that does not exist.
    await refused(attacker.request({"type": "state.get", "player": "victim-scope"}))
    await refused(attacker.request({"type": "state.get", "player": "nobody-at-all"}))
    await refused(attacker.request({"type": "event", "player": "victim-scope", "name": "item.given",
                                    "data": {"item": "hammer", "to": "bram"}}))
    await refused(attacker.request({"type": "state.save", "session": mine.id}))
    await refused(attacker.request({"type": "state.load", "session": mine.id, "blob": blob}))

    # Its own player works; the victim's still does not.
    own = await attacker.open_session("bram", "attacker-own", greet=False, audio=False)
    state = await attacker.request({"type": "state.get", "player": "attacker-own"})
    assert state["type"] == "state" and state["player"] == "attacker-own"
    assert (await attacker.request({"type": "event", "player": "attacker-own", "name": "noop"}))["type"] == "event.ok"
    await refused(attacker.request({"type": "state.get", "player": "victim-scope"}))

    # The owner reads and moves its player by id, and the attacker's tries changed nothing.
    state = await client.request({"type": "state.get", "player": "victim-scope"})
    assert state["flags"].get("has_hammer") is True
    assert (await client.request({"type": "event", "player": "victim-scope", "name": "noop"}))["type"] == "event.ok"
    assert (await mine.load(blob))["type"] == "state.loaded"

    # Only while a session is open: closing the last one ends it.
    await mine.close()
    await refused(client.request({"type": "state.get", "player": "victim-scope"}))
    await own.close()


async def test_the_demo_reads_and_moves_its_player_with_no_conversation_open(engine: Running) -> None:
    """The demo asks for the quest log and sends world events before any conversation: it
    now borrows a session for that (by-player requests need one on the connection)."""
    from demo_game.net import Net, NetMsg

    net = Net()

    async def next_msg(*types: str) -> NetMsg:
        for _ in range(20):  # bounded: a few replies at most come before the one awaited
            m = await asyncio.to_thread(net.inbox.get, timeout=60)
            assert m.type != "error", m.data
            if m.type in types:
                return m
        raise AssertionError(f"no {types} from the demo's network thread")

    try:
        net.connect(engine.endpoint, timeout=10)
        await next_msg("net.connected")
        net.query_beats("demo-player")
        beats = await next_msg("net.beats")
        assert beats.data["beats"].get("bram"), beats.data
        net.event("item.picked_up", {"item": "hammer"}, "demo-player")
        ok = await next_msg("event.ok")
        assert {"kind": "flag_set", "name": "has_hammer", "value": True} in ok.data["effects"], ok.data
        assert not any(s.player == "demo-player" for s in engine.server.registry), "a borrowed session stayed open"
    finally:
        await asyncio.to_thread(net.shutdown)


# --------------------------------------------------------------------------- bind policy


async def test_a_non_loopback_bind_without_keys_is_refused(engine: Running) -> None:
    server = Server(engine.engine, endpoint="tcp://0.0.0.0:*")
    with pytest.raises(BindRefused, match="npc-engine keys"):
        server.bind()
    assert server.sock is None
    for endpoint in ("tcp://*:*", "tcp://[::]:*"):
        with pytest.raises(BindRefused):
            Server(engine.engine, endpoint=endpoint).bind()


def test_serve_refuses_a_non_loopback_endpoint_before_loading_models(tmp_path: Path) -> None:
    """The command line: a clear message and exit status 1, with no model loaded first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPC_ENGINE_")}
    run = subprocess.run(
        [sys.executable, "-m", "npc_engine", "serve", "--endpoint", "tcp://0.0.0.0:0", "--tts", "none",
         "--stt", "none", "--data-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "refusing to listen on tcp://0.0.0.0:0" in run.stderr and "npc-engine keys" in run.stderr
    assert "--insecure" in run.stderr
    assert "loading" not in run.stderr.lower() and "ready" not in run.stdout


async def test_insecure_binds_every_interface_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="npc_engine.server.auth")
    cfg = engine_config(tmp_path, endpoint="tcp://0.0.0.0:*", insecure=True)
    async with running_engine(cfg) as running:
        assert running.endpoint.startswith("tcp://0.0.0.0:")
        assert any("WITHOUT encryption" in r.getMessage() for r in caplog.records)
        port = running.endpoint.rpartition(":")[2]
        async with await EngineClient.connect(f"tcp://127.0.0.1:{port}") as c:
            assert c.hello["type"] == "hello.ok"


async def test_loopback_binds_need_neither_keys_nor_insecure(engine: Running, client: EngineClient) -> None:
    assert engine.endpoint.startswith("tcp://127.0.0.1:")
    assert client.hello["type"] == "hello.ok"
    for endpoint in ("tcp://127.0.0.1:5555", "tcp://127.8.9.10:1", "tcp://[::1]:5555", "tcp://localhost:5555",
                     "ipc:///tmp/npc.sock", "inproc://npc"):
        assert is_local(endpoint), endpoint
    for endpoint in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:5555", "tcp://192.168.1.20:5555",
                     "tcp://eth0:5555", "tcp://game-server:5555", "tcp://127.0.0.1.example.com:5555"):
        assert not is_local(endpoint), endpoint


# --------------------------------------------------------------------------- CURVE


@pytest.fixture(scope="module")
def server_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[CurveKeys, Path]:
    keys, _public, secret = write_keys(tmp_path_factory.mktemp("keys"))
    return keys, secret


async def test_a_curve_engine_talks_to_curve_clients_and_to_nobody_else(
    tmp_path: Path, server_keys: tuple[CurveKeys, Path]
) -> None:
    keys, secret_path = server_keys
    cfg = engine_config(tmp_path, curve_secret_key=secret_path)
    async with running_engine(cfg) as running:
        endpoint = running.endpoint
        async with await EngineClient.connect(endpoint, server_key=keys.public.decode()) as good:
            assert good.hello["type"] == "hello.ok"
            s = await good.open_session("bram", "curve-player", greet=False, audio=False)
            msgs = await (await s.say("Hello!")).collect(timeout=120)
            assert msgs[-1]["type"] == "turn.end"

            # A plain client, and a CURVE client with the wrong server key: no handshake, no reply.
            with pytest.raises(EngineUnavailable):
                await EngineClient.connect(endpoint, timeout=NO_REPLY_WAIT_S)
            wrong = CurveKeys.generate().public.decode()
            with pytest.raises(EngineUnavailable):
                await EngineClient.connect(endpoint, timeout=NO_REPLY_WAIT_S, server_key=wrong)

            # Raw bytes from a plain DEALER, naming the CURVE client's session: nothing back.
            ctx = zmq.asyncio.Context.instance()
            plain = ctx.socket(zmq.DEALER)
            plain.setsockopt(zmq.LINGER, 0)
            plain.connect(endpoint)
            try:
                await plain.send(msgpack.packb({"v": 1, "type": "state.get", "session": s.id, "id": 1}))
                poller = zmq.asyncio.Poller()
                poller.register(plain, zmq.POLLIN)
                assert await poller.poll(int(NO_REPLY_WAIT_S * 1000)) == [], "a plain client got a reply"
            finally:
                plain.close(linger=0)

            # The CURVE client was not disturbed by any of it.
            assert (await good.request({"type": "ping"}))["type"] == "pong"


async def test_a_curve_engine_may_bind_every_interface(tmp_path: Path, server_keys: tuple[CurveKeys, Path]) -> None:
    keys, secret_path = server_keys
    cfg = engine_config(tmp_path, endpoint="tcp://0.0.0.0:*", curve_secret_key=secret_path)
    async with running_engine(cfg) as running:
        port = running.endpoint.rpartition(":")[2]
        async with await EngineClient.connect(f"tcp://127.0.0.1:{port}", server_key=keys.public) as c:
            assert c.hello["type"] == "hello.ok"


def test_a_bad_key_file_is_a_clear_error(tmp_path: Path, server_keys: tuple[CurveKeys, Path]) -> None:
    keys, secret_path = server_keys
    with pytest.raises(KeyFileError, match="no secret key"):
        CurveKeys.load(secret_path.parent / "server.key")  # the public half
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    with pytest.raises(KeyFileError):
        CurveKeys.load(garbage)
    with pytest.raises(KeyFileError, match="cannot read"):
        CurveKeys.load(tmp_path / "missing")
    bare = tmp_path / "bare"
    bare.write_text(keys.secret.decode() + "\n")
    assert CurveKeys.load(bare) == keys
    with pytest.raises(ValueError, match="Z85"):
        EngineClient("tcp://127.0.0.1:1", server_key="too-short")


# --------------------------------------------------------------------------- npc-engine keys


def test_keys_command_writes_a_private_secret_and_prints_the_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "keys"
    assert cli_main(["keys", "--dir", str(directory)]) == 0
    out = capsys.readouterr().out
    secret_path, public_path = directory / "server.key_secret", directory / "server.key"
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) & 0o077 == 0o044  # readable: it is public
    keys = CurveKeys.load(secret_path)
    assert keys.public == zmq.curve_public(keys.secret)
    assert keys.public.decode() in out and str(secret_path) in out and "--curve-secret-key" in out
    assert keys.secret.decode() not in out, "the secret key must never be printed"

    # Never replaced by accident: the games hold the public key.
    assert cli_main(["keys", "--dir", str(directory)]) == 1
    assert "--force" in capsys.readouterr().err
    assert CurveKeys.load(secret_path) == keys
    assert cli_main(["keys", "--dir", str(directory), "--force"]) == 0
    assert CurveKeys.load(secret_path) != keys
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600


def test_serve_flags_reach_the_config(tmp_path: Path) -> None:
    from npc_engine.cli import build_parser
    from npc_engine.cli.serve import config_from_args

    args = build_parser().parse_args(["serve", "--curve-secret-key", str(tmp_path / "k"), "--insecure"])
    cfg = config_from_args(args)
    assert cfg.curve_secret_key == tmp_path / "k" and cfg.insecure is True
    assert config_from_args(build_parser().parse_args(["serve"])).insecure is False

