"""The ZeroMQ ROUTER loop: receives game messages, dispatches them, streams replies back.

One ROUTER socket serves every game connection (DEALER sockets). Messages are handled in
arrival order, and every handler returns quickly: model work runs in session tasks and on
model threads, so one session's long turn never delays another session's messages. Every
malformed or unknown message is answered with a typed ``error``; no client input can stop
the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Mapping

import zmq
import zmq.asyncio

from npc_engine import __version__, prom
from npc_engine.engine import Engine
from npc_engine.protocol import (
    AUDIO_IN_RATE,
    PROTOCOL_VERSION,
    Audio,
    AudioEnd,
    Cancel,
    ErrorCode,
    Event,
    Hello,
    Incoming,
    Ping,
    ProtocolError,
    SessionClose,
    SessionOpen,
    StateGet,
    StateLoad,
    StateSave,
    Text,
    decode,
    encode,
)
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.incoming import InSession
from npc_engine.session import Session
from npc_engine.session.story import effect_fields, lines_by_character
from npc_engine.store import BadBlob, parse_blob
from npc_engine.tasks import BackgroundTasks
from npc_engine.turns.speech import Speakable

log = logging.getLogger(__name__)

# Hard ceiling enforced by libzmq itself (the peer is disconnected above it). The softer
# `max_message_bytes` limit is checked in Python so the game gets a `too_large` error.
HARD_MAX_BYTES = 64 << 20


class Server:
    def __init__(self, engine: Engine, endpoint: str | None = None) -> None:
        self.engine = engine
        self.endpoint = endpoint or engine.cfg.endpoint
        self.ctx = zmq.asyncio.Context.instance()
        self.sock: zmq.asyncio.Socket | None = None
        self.sessions: dict[str, Session] = {}
        self.peers: dict[str, bytes] = {}  # session id -> the peer that last spoke for it
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._outbox: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        self._tasks = BackgroundTasks("server")
        self._stopping = asyncio.Event()
        self.bound_endpoint: str | None = None
        prom.watch_server(self)

    # ------------------------------------------------------------------ run

    def bind(self) -> str:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished game raises instead of vanishing
        sock.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_BYTES)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self.endpoint}: {exc.strerror} (is another npc-engine running?)") from exc
        self.sock = sock
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.bound_endpoint

    async def serve(self) -> None:
        if self.sock is None:
            self.bind()
        log.info("npc-engine %s listening on %s", __version__, self.bound_endpoint)
        sender = asyncio.create_task(self._send_loop(), name="npc-send")
        receiver = asyncio.create_task(self._recv_loop(), name="npc-recv")
        prerender = asyncio.create_task(self.engine.prerender_lines(), name="npc-prerender")
        await self._stopping.wait()
        prerender.cancel()
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        await self._close_sessions()
        await self._tasks.wait()
        # Let the turn.end / session.closed messages of the shutdown go out.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drain(), timeout=1.0)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        assert self.sock is not None
        self.sock.close(linger=0)

    def stop(self) -> None:
        self._stopping.set()

    async def _drain(self) -> None:
        await self._outbox.join()

    async def _close_sessions(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.close()
        self.sessions.clear()

    # ------------------------------------------------------------------ transport

    def send(self, peer: bytes, message: msg.Outgoing) -> None:
        if isinstance(message, msg.Error):
            prom.error_sent(message.code)
        self._outbox.put_nowait((peer, encode(message)))

    def send_to_session(self, session_id: str, message: msg.Outgoing) -> None:
        peer = self.peers.get(session_id)
        if peer is not None:
            self.send(peer, message)

    async def _send_loop(self) -> None:
        assert self.sock is not None
        while True:
            peer, payload = await self._outbox.get()
            try:
                await self.sock.send_multipart([peer, payload])
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    await self._peer_gone(peer)
                else:
                    log.error("send failed: %s", exc)
            finally:
                self._outbox.task_done()

    async def _peer_gone(self, peer: bytes) -> None:
        # The game disconnected: stop talking to it, but keep its sessions (it may reconnect).
        for sid, p in list(self.peers.items()):
            if p == peer and (s := self.sessions.get(sid)) and s.current is not None:
                log.info("game for session %s went away; cancelling its turn", sid)
                s.current.cancel()

    async def _recv_loop(self) -> None:
        assert self.sock is not None
        while True:
            frames = await self.sock.recv_multipart(copy=True)
            if len(frames) < 2:
                continue
            peer, payload = frames[0], frames[-1]  # a REQ-style empty delimiter frame is tolerated
            request: Incoming | None = None
            try:
                request = decode(payload, max_bytes=self.engine.cfg.max_message_bytes)
                await self.dispatch(peer, request)
            except ProtocolError as exc:
                if request is not None:  # every error names the request it answers
                    exc.request_id = exc.request_id if exc.request_id is not None else request.id
                    exc.request_type = exc.request_type or request.type
                    exc.session = exc.session or _session_of(request)
                log.info("error %s to %s: %s", exc.code.value, peer.hex()[:8], exc.message)
                self.send(peer, msg.Error.of(exc))
            except Exception as exc:  # a bug must not take the server down with it
                log.exception("internal error handling a message")
                self.send(peer, msg.Error(
                    code=ErrorCode.INTERNAL.value, message=f"internal error: {exc}",
                    id=request.id if request is not None else None,
                    request_type=request.type if request is not None else None,
                    session=_session_of(request),
                ))

    # ------------------------------------------------------------------ dispatch

    async def dispatch(self, peer: bytes, request: Incoming) -> None:
        if isinstance(request, Hello):
            self.send(peer, self._hello_ok(request))
        elif isinstance(request, Ping):
            self.send(peer, msg.Pong(id=request.id, t=request.t, server_time=time.time()))
        elif isinstance(request, SessionOpen):
            await self._open(peer, request)
        elif isinstance(request, Event):
            await self._event(peer, request)
        elif isinstance(request, StateGet):
            await self._state_get(peer, request)
        else:
            session = self._session(peer, request)
            if isinstance(request, Text):
                session.start_turn("text", request.text, request_id=request.id)
            elif isinstance(request, Audio):
                self._check_audio(request)
                session.audio_in(request.pcm)
            elif isinstance(request, AudioEnd):
                session.audio_end()
            elif isinstance(request, Cancel):
                session.cancel(request.turn, request.heard)  # its turn.end follows; never block the loop on it
            elif isinstance(request, StateSave):
                await self._state_save(peer, session, request)
            elif isinstance(request, StateLoad):
                await self._state_load(peer, session, request)
            elif isinstance(request, SessionClose):
                # Closed at once for new messages; the reply follows once its turn has ended.
                self.sessions.pop(session.id, None)
                self._remember_closed(session.id)
                self._tasks.spawn(self._close(peer, session, request.id), f"close {session.id}")

    async def _close(self, peer: bytes, session: Session, request_id: str | int | None) -> None:
        await session.close()
        self.send(peer, msg.SessionClosed(id=request_id, session=session.id))

    def _hello_ok(self, request: Hello) -> msg.HelloOk:
        eng = self.engine
        return msg.HelloOk(
            id=request.id,
            engine=f"npc-engine/{__version__}",
            protocol=PROTOCOL_VERSION,
            characters=[{"id": c.id, "name": c.name} for c in eng.characters.values()],
            audio_in={"rate": AUDIO_IN_RATE, "channels": 1, "format": "pcm_s16le", "frame_ms": 20},
            audio_out={"rate": eng.synth.sample_rate, "channels": 1, "format": "pcm_s16le"} if eng.synth else None,
            stt=eng.transcriber is not None,
            max_message_bytes=eng.cfg.max_message_bytes,
        )

    def _session(self, peer: bytes, request: InSession | Event | StateGet) -> Session:
        sid = request.session
        session = self.sessions.get(sid) if sid is not None else None
        if session is None:
            if sid in self._closed:
                raise ProtocolError(
                    ErrorCode.SESSION_CLOSED, f"session {sid!r} is closed; open a new one",
                    request_id=request.id, request_type=request.type, session=sid,
                )
            raise ProtocolError(
                ErrorCode.UNKNOWN_SESSION, f"no open session {sid!r}; send session.open first",
                request_id=request.id, request_type=request.type, session=sid,
            )
        self.peers[session.id] = peer  # a reconnecting game takes its session over
        return session

    def _remember_closed(self, sid: str) -> None:
        self._closed[sid] = None
        while len(self._closed) > 10_000:
            self._closed.popitem(last=False)

    async def _open(self, peer: bytes, request: SessionOpen) -> None:
        eng = self.engine
        character = eng.characters.get(request.character)
        if character is None:
            known = ", ".join(sorted(eng.characters)) or "none loaded"
            raise ProtocolError(
                ErrorCode.UNKNOWN_CHARACTER, f"unknown character {request.character!r}; known characters: {known}",
                request_id=request.id, request_type=request.type,
            )
        sid = request.session or uuid.uuid4().hex[:12]
        if sid in self.sessions:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"session {sid!r} is already open", request_id=request.id,
                request_type=request.type, session=sid,
            )
        self._closed.pop(sid, None)
        self.peers[sid] = peer
        session = Session(
            eng, sid, character, request.player, functools.partial(self.send_to_session, sid),
            audio=request.audio, mode=request.mode, route_lines=self.speak_story_lines,
        )
        self.sessions[sid] = session
        opened = await session.open(dict(request.vars))
        self.send(peer, dataclasses.replace(opened, id=request.id))
        log.info("session %s opened: player %s talks to %s", sid, request.player, character.id)
        if request.greet and character.greetings:
            session.start_turn("greeting", None)

    def _check_audio(self, request: Audio) -> None:
        problem = None
        if request.rate != AUDIO_IN_RATE:
            problem = f"audio must be {AUDIO_IN_RATE} Hz, got {request.rate}"
        elif request.channels != 1:
            problem = f"audio must be mono, got {request.channels} channels"
        elif len(request.pcm) % 2:
            problem = "PCM16 audio must have an even number of bytes"
        if problem:
            raise ProtocolError(
                ErrorCode.BAD_AUDIO, problem, request_id=request.id, request_type=request.type, session=request.session
            )

    def _player_of(self, peer: bytes, request: Event | StateGet) -> str:
        if request.session:
            return self._session(peer, request).player
        if not request.player:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"{request.type} needs either 'session' or 'player'",
                request_id=request.id, request_type=request.type,
            )
        return request.player

    async def _state_get(self, peer: bytes, request: StateGet) -> None:
        """The player's story state, for a quest log: no session (and no model work) needed."""
        player = self._player_of(peer, request)
        state = await self.engine.story_state(player)
        self.send(peer, msg.StateReport(
            id=request.id, session=request.session, player=player, beats=dict(state.current),
            flags=dict(state.flags), vars=dict(state.vars), last_beat=state.last_beat,
        ))

    async def _event(self, peer: bytes, request: Event) -> None:
        eng = self.engine
        player = self._player_of(peer, request)
        async with eng.state_lock(player):
            state = await eng.story_state(player)
            effects = eng.story.on_event(state, request.name, dict(request.data))
            if effects:
                await eng.save_story_state(player)
        self.speak_story_lines(player, lines_by_character(effects))
        self.send(peer, msg.EventOk(id=request.id, name=request.name, effects=[effect_fields(e) for e in effects]))

    def speak_story_lines(self, player: str, lines: Mapping[str, list[Speakable]]) -> None:
        """Start one story turn per character with scripted lines, in that character's open session."""
        for character, said in lines.items():
            speaker = next((s for s in self.sessions.values() if s.player == player and s.character.id == character), None)
            if speaker is not None:
                speaker.start_turn("story", None, scripted=said)

    async def _state_save(self, peer: bytes, session: Session, request: StateSave) -> None:
        await self.engine.save_story_state(session.player)
        blob = await self.engine.store.export_blob(session.player)
        self.send(peer, msg.StateSaved(id=request.id, session=session.id, player=session.player, blob=blob))

    async def _state_load(self, peer: bytes, session: Session, request: StateLoad) -> None:
        eng = self.engine
        player = session.player

        def bad_state(exc: BadBlob) -> ProtocolError:
            return ProtocolError(
                ErrorCode.BAD_STATE, str(exc), request_id=request.id, request_type=request.type, session=session.id
            )

        try:
            parse_blob(request.blob)  # refuse a bad blob before cutting anyone's speech
        except BadBlob as exc:
            raise bad_state(exc) from None
        mine = [s for s in self.sessions.values() if s.player == player]
        for s in mine:
            await s.cancel_and_wait()
        try:
            async with eng.state_lock(player):
                await eng.store.import_blob(player, request.blob)
                eng.forget_player(player)
                state = await eng.story_state(player)
        except BadBlob as exc:
            raise bad_state(exc) from None
        for s in mine:
            await s.memory.load()
        beat = eng.story.active_beat(state, session.character.id)
        self.send(peer, msg.StateLoaded(id=request.id, session=session.id, player=player, beat=beat.id if beat else None))


def _session_of(request: Incoming | None) -> str | None:
    """The session a request names, if any (for error replies)."""
    return request.session if isinstance(request, InSession | Event | StateGet) else None
