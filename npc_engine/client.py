"""Async Python client for the npc-engine sidecar (what the demo game and the tests use).

    async with await EngineClient.connect("tcp://127.0.0.1:5555") as client:
        session = await client.open_session("bram", player="p1")
        turn = await session.say("Can you fix my sword?")
        async for msg in turn:            # reply.text, reply.audio, cue, story ... then turn.end
            ...

One DEALER socket carries everything. A reader task routes each incoming message to the
session it names, then to the turn it belongs to, so several sessions and turns can be
in flight at once. Messages of a turn that was cancelled are dropped by turn id.

An engine bound beyond loopback runs ZeroMQ CURVE: pass the public key ``npc-engine keys``
printed as ``server_key``. A client that reconnects takes its sessions back with
``resume_session(session_id, token)`` (``ClientSession.token``, from ``session.opened``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from zmq.utils import z85

from npc_engine.config import DEFAULT_ENDPOINT
from npc_engine.protocol import PROTOCOL_VERSION

TERMINAL = "turn.end"


class EngineError(Exception):
    """An ``error`` message from the engine."""

    def __init__(self, msg: dict[str, Any]) -> None:
        super().__init__(f"{msg.get('code')}: {msg.get('message')}")
        self.code: str = msg.get("code", "")
        self.message: str = msg.get("message", "")
        self.raw = msg


class EngineUnavailable(ConnectionError):
    pass


class Turn:
    """One NPC turn: iterate to get its messages, ending with (and including) ``turn.end``."""

    def __init__(self, session: ClientSession, turn_id: int, start: dict[str, Any] | None = None) -> None:
        self.session = session
        self.id = turn_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.end: dict[str, Any] | None = None
        self.claimed = False  # handed to a caller (by say()); next_turn() skips it
        self.start: dict[str, Any] | None = None  # its turn.start once it came: source, character
        if start is not None:
            self.queue.put_nowait(start)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            msg = await self.queue.get()
            yield msg
            if msg["type"] == TERMINAL:
                self.end = msg
                self.session.turns.pop(self.id, None)
                return

    async def collect(self, timeout: float | None = 120.0) -> list[dict[str, Any]]:
        """All of the turn's messages, waiting for ``turn.end``."""

        async def run() -> list[dict[str, Any]]:
            return [m async for m in self]

        return await asyncio.wait_for(run(), timeout)

    async def cancel(self) -> None:
        await self.session.cancel(self.id)


class ClientSession:
    def __init__(self, client: EngineClient, info: dict[str, Any]) -> None:
        self.client = client
        self.id: str = info["session"]
        self.info = info
        # Keep it to take the session back from a new connection (resume_session).
        self.token: str | None = info.get("token")
        self.turns: dict[int, Turn] = {}
        self._new_turns: asyncio.Queue[Turn] = asyncio.Queue()
        self.other: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # transcripts, errors, story outside turns
        self.cancelled: set[int] = set()
        self.started: list[dict[str, Any]] = []  # every turn.start, in order (who spoke, from what)

    # routing ---------------------------------------------------------------

    def _route(self, msg: dict[str, Any], claimed: bool = False) -> None:
        tid = msg.get("turn")
        if tid is None:
            self.other.put_nowait(msg)
            return
        if tid in self.cancelled and msg["type"] not in (TERMINAL, "error"):
            return  # stale chunk of a turn we cancelled
        turn = self.turns.get(tid)
        if turn is None:
            turn = Turn(self, tid)
            turn.claimed = claimed  # a say() is waiting for exactly this turn
            self.turns[tid] = turn
            self._new_turns.put_nowait(turn)
        if msg["type"] == "turn.start":
            turn.start = msg
            self.started.append(msg)
        turn.queue.put_nowait(msg)
        # A finished turn is forgotten once read to its end; bound those nobody reads.
        while len(self.turns) > 64:
            self.turns.pop(next(iter(self.turns)))

    # requests ----------------------------------------------------------------

    async def next_turn(self, timeout: float | None = 120.0) -> Turn:
        """The next turn the engine starts for this session that no say() call took already
        (a greeting, a voice turn, a scripted story line)."""

        async def unclaimed() -> Turn:
            while True:
                turn = await self._new_turns.get()
                if not turn.claimed:
                    turn.claimed = True
                    return turn

        return await asyncio.wait_for(unclaimed(), timeout)

    async def say(self, text: str, timeout: float | None = 120.0, *, character: str | None = None) -> Turn:
        """Send a typed player line; returns the turn that answers it. ``character``: who must
        answer (a scene's)."""
        # The engine's turn.start echoes this request's id, which is how we find our turn.
        start = await self.client.request(
            {"type": "text", "session": self.id, "text": text, "character": character}, timeout=timeout
        )
        return self.turns[start["turn"]]  # routed as claimed, so next_turn() never hands it out

    # scenes ------------------------------------------------------------------

    async def update(self, **fields: Any) -> dict[str, Any]:
        """``scene.update`` (facing=, reactions=, join=[...], leave=[...]); returns ``scene.updated``.
        ``facing=None`` is sent as nil (faces nobody)."""
        msg = {"v": PROTOCOL_VERSION, "type": "scene.update", "session": self.id, **fields}
        return await self.client.request_exact(msg)

    async def banter(self, timeout: float | None = 120.0, **fields: Any) -> Turn | None:
        """``scene.banter`` (topic=, beat=, characters=, lines=); returns its first line's turn
        (the rest come through ``next_turn``, then ``banter.end`` in ``other``), or None when
        the banter ended before any line (its ``banter.end`` is the reply, also put in ``other``)."""
        reply = await self.client.request({"type": "scene.banter", "session": self.id, **fields}, timeout=timeout)
        if reply.get("turn") is None:
            self.other.put_nowait(reply)
            return None
        return self.turns[reply["turn"]]

    async def send_audio(self, pcm: bytes, rate: int = 16_000) -> None:
        await self.client.send({"type": "audio", "session": self.id, "pcm": pcm, "rate": rate})

    async def end_audio(self) -> None:
        await self.client.send({"type": "audio.end", "session": self.id})

    async def cancel(self, turn: int | None = None, heard: float | None = None) -> None:
        """Stop the NPC. ``heard``: seconds of the turn's audio the player heard (memory keeps those words)."""
        if turn is not None:
            self.cancelled.add(turn)
        await self.client.send({"type": "cancel", "session": self.id, "turn": turn, "heard": heard})

    async def event(self, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.client.request({"type": "event", "session": self.id, "name": name, "data": data or {}})

    async def save(self) -> bytes:
        reply = await self.client.request({"type": "state.save", "session": self.id})
        return reply["blob"]

    async def load(self, blob: bytes) -> dict[str, Any]:
        return await self.client.request({"type": "state.load", "session": self.id, "blob": blob})

    async def close(self) -> None:
        await self.client.request({"type": "session.close", "session": self.id})
        self.client.sessions.pop(self.id, None)


class EngineClient:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, server_key: str | bytes | None = None) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if server_key is not None:
            # CURVE: this client's own key pair is throw-away; the engine is known by its key.
            public, secret = zmq.curve_keypair()
            self.sock.curve_serverkey = _server_key(server_key)
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
        self.sock.connect(endpoint)
        self.sessions: dict[str, ClientSession] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.errors: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # errors not tied to a request or session
        self.unrouted: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.hello: dict[str, Any] = {}

    @classmethod
    async def connect(
        cls, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 5.0, client_name: str = "python",
        *, server_key: str | bytes | None = None,
    ) -> EngineClient:
        """Connect and handshake; raises ``EngineUnavailable`` if no engine answers in time.

        ``server_key``: the engine's CURVE public key (Z85, 40 characters), for an engine started
        with ``--curve-secret-key``. A wrong key (or none, against such an engine) also ends in
        ``EngineUnavailable``: the handshake fails silently, by ZeroMQ's design.
        """
        client = cls(endpoint, server_key=server_key)
        try:
            client.hello = await client.request({"type": "hello", "client": client_name}, timeout=timeout)
        except asyncio.TimeoutError:
            await client.close()
            hint = "" if server_key is None else " (is server_key the engine's public key?)"
            raise EngineUnavailable(f"no npc-engine answered at {endpoint} within {timeout:.0f} s{hint}") from None
        return client

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, msg: dict[str, Any]) -> None:
        msg = {"v": PROTOCOL_VERSION, **{k: v for k, v in msg.items() if v is not None}}
        await self.sock.send(msgpack.packb(msg, use_bin_type=True))

    async def send_raw(self, payload: bytes) -> None:
        await self.sock.send(payload)

    async def request(self, msg: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
        """Send a message with a fresh ``id`` and wait for the reply (or error) that echoes it."""
        return await self._request(msg, timeout, self.send)

    async def request_exact(self, msg: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
        """``request``, with nil fields kept (a nil that means something, like ``facing``)."""

        async def send(m: dict[str, Any]) -> None:
            await self.sock.send(msgpack.packb(m, use_bin_type=True))

        return await self._request(msg, timeout, send)

    async def _request(
        self, msg: dict[str, Any], timeout: float | None, send: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> dict[str, Any]:
        rid = f"r{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await send({**msg, "id": rid})
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(rid, None)
        if reply["type"] == "error":
            raise EngineError(reply)
        return reply

    async def wait_warm(self, timeout: float = 300.0, poll_s: float = 0.5) -> float:
        """Wait until the engine's start-up work (pre-rendering scripted lines, priming personas)
        is over: ``pong.warming`` false (an engine that does not say is taken as warm). Returns
        the seconds waited; ``TimeoutError`` if it is still warming after ``timeout``."""
        if "warming" not in self.hello:  # an engine from before the field: nothing to wait for
            return 0.0
        started = time.monotonic()
        while (await self.request({"type": "ping"})).get("warming", False):
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the engine was still warming up after {timeout:.0f} s")
            await asyncio.sleep(poll_s)  # a poll interval: the condition is the engine's answer
        return time.monotonic() - started

    async def open_session(
        self, character: str, player: str = "player", *, greet: bool = True, audio: bool = True,
        vars: dict[str, Any] | None = None, session: str | None = None, mode: str | None = None,
        preemptive: bool | None = None, acks: bool | None = None,
    ) -> ClientSession:
        msg = {"type": "session.open", "character": character, "player": player, "greet": greet, "audio": audio,
               "vars": vars or {}, "session": session, "mode": mode, "preemptive": preemptive,
               "acks": acks}
        # Register before the reply can race the greeting turn's first message.
        rid = f"r{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.send({**msg, "id": rid})
            reply = await asyncio.wait_for(fut, 30.0)
        finally:
            self._pending.pop(rid, None)
        if reply["type"] == "error":
            raise EngineError(reply)
        return self.sessions[reply["session"]]

    async def open_scene(
        self, characters: list[str], player: str = "player", *, greet: bool = False, audio: bool = True,
        vars: dict[str, Any] | None = None, session: str | None = None, reactions: bool | None = None,
        facing: str | None = None, mode: str | None = None, acks: bool | None = None,
        preemptive: bool | None = None,
    ) -> ClientSession:
        """``scene.open``: one player with several characters; the scene is used like a session."""
        reply = await self.request({
            "type": "scene.open", "characters": characters, "player": player, "greet": greet, "audio": audio,
            "vars": vars or {}, "session": session, "reactions": reactions, "facing": facing, "mode": mode,
            "acks": acks, "preemptive": preemptive,
        })
        return self.sessions[reply["session"]]

    async def resume_session(self, session: str, token: str, timeout: float | None = 30.0) -> ClientSession:
        """Take over a session opened on another connection (this game before it reconnected).

        The engine sends the rest of the session's messages here from now on; a wrong token
        raises ``EngineError`` with code ``forbidden``.
        """
        reply = await self.request({"type": "session.resume", "session": session, "token": token}, timeout=timeout)
        return self.sessions[reply["session"]]

    async def _read(self) -> None:
        while True:
            try:
                payload = await self.sock.recv()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            msg = msgpack.unpackb(payload, raw=False)
            rid = msg.get("id")
            if msg.get("type") in ("session.opened", "session.resumed", "scene.opened", "scene.resumed"):
                self.sessions[msg["session"]] = ClientSession(self, msg)
            fut = self._pending.get(rid) if rid is not None else None
            claimed = False
            if fut is not None and not fut.done():
                fut.set_result(msg)
                if msg.get("turn") is None:
                    continue  # a plain reply; a turn.start is also routed to its turn below
                claimed = True
            session = self.sessions.get(msg.get("session", ""))
            if session is not None:
                session._route(msg, claimed)
            elif msg.get("type") == "error":
                self.errors.put_nowait(msg)
            else:
                self.unrouted.put_nowait(msg)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.sock.close(linger=0)


def _server_key(key: str | bytes) -> bytes:
    """A CURVE public key as ZeroMQ takes it (Z85 bytes), checked here so that a typo is an
    error now rather than a connection that silently never completes its handshake."""
    try:
        raw = key.strip().encode("ascii") if isinstance(key, str) else key.strip()
        if len(raw) == 40 and len(z85.decode(raw)) == 32:
            return raw
    except (ValueError, KeyError):  # not ASCII, or a character outside Z85
        pass
    raise ValueError(f"server_key must be the engine's 40-character Z85 CURVE public key, not {key[:50]!r}")
