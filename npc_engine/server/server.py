"""The ZeroMQ ROUTER loop: receives game messages, dispatches them, streams replies back.

One ROUTER socket serves every game connection (DEALER sockets). Messages are handled in
arrival order, and every handler returns quickly: model work runs in session tasks and on
model threads, so one session's long turn never delays another session's messages. Every
malformed or unknown message is answered with a typed ``error``; no client input can stop
the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Coroutine

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
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.incoming import InSession, check_vars
from npc_engine.scene import Scene
from npc_engine.scene.scene import scene_characters
from npc_engine.server import auth
from npc_engine.server.outbox import SNDBUF, SNDHWM, Outbox
from npc_engine.server.registry import Conversation, SessionRegistry
from npc_engine.server.state import StateRequests
from npc_engine.session import Session
from npc_engine.tasks import BackgroundTasks

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
        self.registry = SessionRegistry()
        self.state = StateRequests(engine, self.registry)
        self.tokens = auth.ResumeTokens()
        self.outbox: Outbox | None = None
        self._tasks = BackgroundTasks("server")
        self._stopping = asyncio.Event()
        self.bound_endpoint: str | None = None
        prom.watch_server(self)

    @property
    def sessions(self) -> dict[str, Conversation]:
        return self.registry.sessions

    # ------------------------------------------------------------------ run

    def bind(self) -> str:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished game raises instead of vanishing
        sock.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_BYTES)
        # A few messages and a fixed OS buffer per game below the socket; the rest wait in the
        # outbox, counted in bytes (docs/protocol.md, Delivery).
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.SNDBUF, SNDBUF)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        cfg = self.engine.cfg
        try:
            # Plain sockets only where nobody else can reach them; CURVE keys otherwise.
            keys = auth.server_keys(self.endpoint, cfg.curve_secret_key, cfg.insecure)
        except OSError:  # refused, or a key file that cannot be used
            sock.close()
            raise
        if keys is not None:
            keys.serve_on(sock)
            log.info("CURVE on: games connect with the server public key %s", keys.public.decode("ascii"))
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self.endpoint}: {exc.strerror} (is another npc-engine running?)") from exc
        self.sock = sock
        self.outbox = Outbox(
            sock, self._peer_gone, max_bytes=self.engine.cfg.max_outbox_bytes, on_slow=self._slow_peer
        )
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.bound_endpoint

    async def serve(self) -> None:
        if self.sock is None:
            self.bind()
        assert self.sock is not None and self.outbox is not None
        log.info("npc-engine %s listening on %s", __version__, self.bound_endpoint)
        sender = asyncio.create_task(self.outbox.run(), name="npc-send")
        receiver = asyncio.create_task(self._recv_loop(), name="npc-recv")
        prerender = asyncio.create_task(self.engine.prerender_lines(), name="npc-prerender")
        if self.engine.cfg.prime_personas:
            self.engine.start_priming()
        expiry = asyncio.create_task(self._expire_idle(), name="npc-expire")
        await self._stopping.wait()
        for task in (expiry, prerender, receiver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.registry.close_all()
        await self._tasks.wait()
        # Let the turn.end / session.closed messages of the shutdown go out.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.outbox.drain(), timeout=1.0)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        self.sock.close(linger=0)

    def stop(self) -> None:
        self._stopping.set()

    # ------------------------------------------------------------------ transport

    def send(self, peer: bytes, message: msg.Outgoing) -> None:
        assert self.outbox is not None, "bind() first"
        self.outbox.send(peer, message)

    def send_to_session(self, session_id: str, message: msg.Outgoing) -> None:
        peer = self.registry.peer_of(session_id)
        if peer is not None:
            self.send(peer, message)

    async def _peer_gone(self, peer: bytes) -> None:
        self.registry.peer_gone(peer)

    def _slow_peer(self, peer: bytes) -> None:
        """The game stopped reading: its turns are cut so nobody works for it (their turn.end
        still goes out, cancelled)."""
        self.registry.cancel_turns_of(peer, "is not reading")

    async def _recv_loop(self) -> None:
        assert self.sock is not None and self.outbox is not None
        while True:
            frames = await self.sock.recv_multipart(copy=True)
            if len(frames) < 2:
                continue
            peer, payload = frames[0], frames[-1]  # a REQ-style empty delimiter frame is tolerated
            if not self.outbox.admit(peer):
                continue  # a game sending without reading its replies: read it once it reads again
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
        reply = functools.partial(self.send, peer)
        if isinstance(request, Hello):
            reply(self._hello_ok(request))
        elif isinstance(request, Ping):
            reply(msg.Pong(id=request.id, t=request.t, server_time=time.time(), warming=self.engine.warming))
        elif isinstance(request, SessionOpen):
            await self._open(peer, request)
        elif isinstance(request, SceneOpen):
            await self._open_scene(peer, request)
        elif isinstance(request, Event):
            await self.state.event(peer, request, reply)
        elif isinstance(request, StateGet):
            await self.state.get(peer, request, reply)
        elif isinstance(request, SessionResume):
            await self._resume(peer, request)
        else:
            session = self.registry.get(request.session, request_id=request.id, request_type=request.type, peer=peer)
            if isinstance(request, Text):
                self._text(session, request)
            elif isinstance(request, SceneUpdate | SceneBanter):
                await self._scene_request(peer, session, request)
            elif isinstance(request, Audio):
                self._check_audio(request)
                session.audio_in(request.pcm)
            elif isinstance(request, AudioEnd):
                session.audio_end()
            elif isinstance(request, Cancel):
                session.cancel(request.turn, request.heard)  # its turn.end follows; never block the loop on it
            elif isinstance(request, StateSave):
                await self.state.save(session, request, reply)
            elif isinstance(request, StateLoad):
                await self.state.load(session, request, reply)
            elif isinstance(request, SessionClose):
                # Closed at once for new messages; the reply follows once its turn has ended.
                self.registry.remove(session.id)
                self._tasks.spawn(self._close(peer, session, request.id), f"close {session.id}")

    async def _close(self, peer: bytes | None, session: Conversation, request_id: str | int | None) -> None:
        try:
            await session.close()
            if peer is not None:
                self.send(peer, msg.SessionClosed(id=request_id, session=session.id))
        finally:
            self.registry.release(session.id)

    async def _expire_idle(self) -> None:
        """Close the sessions nobody has sent anything for in ``session_idle_timeout_s``: a game
        that vanished without ``session.close`` must not hold its sessions (and their memory,
        warm-ups and story states) forever. Their running turns are cancelled like any close."""
        timeout = self.engine.cfg.session_idle_timeout_s
        if timeout <= 0:
            return  # expiry off
        period = min(max(timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(period)
            for session in self.registry.idle(timeout):
                peer = self.registry.peer_of(session.id)
                log.info("session %s expired: nothing from its game for %.0f s; closing it", session.id, timeout)
                self.registry.remove(session.id)
                # The game gets session.closed without an id, if it is still there to read it.
                self._tasks.spawn(self._close(peer, session, None), f"expire {session.id}")

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
            warming=eng.warming,
        )

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
        self._open_checks(peer, sid, request)
        session = Session(
            eng, sid, character, request.player, functools.partial(self.send_to_session, sid),
            audio=request.audio, mode=request.mode, preemptive=request.preemptive, acks=request.acks,
            route_lines=self.registry.speak_story_lines,
            model_admission=functools.partial(
                self.registry.model_admission, sid, eng.cfg.max_queued_turns_per_client
            ),
        )
        await self._register(peer, session, request, session.open(dict(request.vars)))
        log.info("session %s opened: player %s talks to %s", sid, request.player, character.id)
        if request.greet and character.greetings:
            session.start_turn("greeting", None)

    def _text(self, conv: Conversation, request: Text) -> None:
        if isinstance(conv, Scene):
            conv.start_turn("text", request.text, request_id=request.id, character=request.character)
            return
        if request.character is not None and request.character != conv.character.id:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"character: this session is with {conv.character.id!r}, not "
                f"{request.character!r} (open a scene to talk to several characters)", session=conv.id,
            )
        conv.start_turn("text", request.text, request_id=request.id)

    def _open_checks(self, peer: bytes, sid: str, request: SessionOpen | SceneOpen) -> None:
        """What every open must pass: a free id, the connection's session limit, the vars' size."""
        eng = self.engine
        if sid in self.registry:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"session {sid!r} is already open", request_id=request.id,
                request_type=request.type, session=sid,
            )
        limit = eng.cfg.max_sessions_per_client
        if self.registry.open_by(peer) >= limit:
            raise ProtocolError(
                ErrorCode.OVERLOADED, f"this connection already has {limit} open sessions, the most it may have; "
                "close one first", request_id=request.id, request_type=request.type, session=sid,
            )
        check_vars(request.vars, eng.cfg.max_vars_bytes)

    async def _register(
        self, peer: bytes, conv: Conversation, request: SessionOpen | SceneOpen,
        opening: Coroutine[object, object, msg.SessionOpened | msg.SceneOpened],
    ) -> None:
        """Open ``conv`` and register it. Registered only once open succeeded: a failed open
        leaves nothing behind (its id can be opened again at once), and nothing can reach a
        conversation that is not open yet."""
        try:
            opened = await opening
        except Exception:
            await conv.close()
            raise
        if conv.id in self.registry:  # opened meanwhile by another request (open awaits the store)
            await conv.close()
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"session {conv.id!r} is already open", request_id=request.id,
                request_type=request.type, session=conv.id,
            )
        self.registry.add(conv, peer)
        # The token goes to the opener only: it is what lets a reconnected game take it back.
        self.send(peer, dataclasses.replace(opened, id=request.id, token=self.tokens.issue(conv)))

    async def _open_scene(self, peer: bytes, request: SceneOpen) -> None:
        eng = self.engine
        characters = scene_characters(eng, request.characters, request.id, request.type)
        if request.facing is not None and request.facing not in request.characters:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"facing: {request.facing!r} is not one of the scene's characters",
                request_id=request.id, request_type=request.type,
            )
        sid = request.session or uuid.uuid4().hex[:12]
        self._open_checks(peer, sid, request)
        scene = Scene(
            eng, sid, request.player, functools.partial(self.send_to_session, sid),
            audio=request.audio, mode=request.mode, preemptive=request.preemptive, acks=request.acks,
            reactions=request.reactions, route_lines=self.registry.speak_story_lines,
            model_admission=functools.partial(
                self.registry.model_admission, sid, eng.cfg.max_queued_turns_per_client
            ),
        )
        scene.facing = request.facing
        await self._register(peer, scene, request, scene.open(characters, dict(request.vars)))
        log.info("scene %s opened: player %s with %s", sid, request.player, ", ".join(request.characters))
        if request.greet and characters[0].greetings:
            scene.start_turn("greeting", None)

    async def _scene_request(self, peer: bytes, conv: Conversation, request: SceneUpdate | SceneBanter) -> None:
        if not isinstance(conv, Scene):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"session {conv.id!r} is a one-to-one session, not a scene (scene.open)",
                session=conv.id,
            )
        if isinstance(request, SceneBanter):
            conv.banter(
                request_id=request.id, topic=request.topic, beat=request.beat, characters=request.characters,
                lines=request.lines,
            )
            return
        join = scene_characters(self.engine, request.join, request.id, request.type)
        await conv.update(
            facing=request.facing, sets_facing=request.sets_facing, reactions=request.reactions, join=join,
            leave=request.leave,
        )
        updated = await conv.report(msg.SceneUpdated)
        self.send(peer, dataclasses.replace(updated, id=request.id))

    async def _resume(self, peer: bytes, request: SessionResume) -> None:
        """Hand a session to the connection that proves it owns it (a game that reconnected)."""
        session = self.registry.lookup(request.session, request_id=request.id, request_type=request.type)
        if not self.tokens.accepts(session, request.token):
            log.info("session.resume of %s from %s refused: wrong token", session.id, peer.hex()[:8])
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"wrong token for session {session.id!r}", request_id=request.id,
                request_type=request.type, session=session.id,
            )
        eng = self.engine
        limit = eng.cfg.max_sessions_per_client
        if self.registry.peer_of(session.id) != peer and self.registry.open_by(peer) >= limit:
            raise ProtocolError(  # the same limit as session.open: resuming is taking one more
                ErrorCode.OVERLOADED, f"this connection already has {limit} open sessions, the most it may have; "
                "close one first", request_id=request.id, request_type=request.type, session=session.id,
            )
        if isinstance(session, Scene):
            resumed = dataclasses.replace(await session.report(msg.SceneResumed), id=request.id, token=request.token)
            if self.registry.lookup(session.id, request_id=request.id, request_type=request.type) is not session:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN, f"wrong token for session {session.id!r}", request_id=request.id,
                    request_type=request.type, session=session.id,
                )
            self.registry.take_over(session, peer)  # no await since the check: scene.resumed goes first
            self.send(peer, resumed)
            log.info("scene %s resumed by connection %s", session.id, peer.hex()[:8])
            return
        beat = eng.story.active_beat(await eng.story_state(session.player), session.character.id)
        if self.registry.lookup(session.id, request_id=request.id, request_type=request.type) is not session:
            raise ProtocolError(  # closed and opened anew while its state was read: another token
                ErrorCode.FORBIDDEN, f"wrong token for session {session.id!r}", request_id=request.id,
                request_type=request.type, session=session.id,
            )
        # No await from here on: session.resumed must reach the new owner before any message
        # of the session does (a client learns the session from it).
        self.registry.take_over(session, peer)
        self.send(peer, msg.SessionResumed(
            id=request.id, session=session.id, character=session.character.id, name=session.character.name,
            player=session.player, resumed=bool(session.memory.history), beat=beat.id if beat else None,
            audio=session.audio, sample_rate=session.voice_out.voices[0].sample_rate if session.audio else None,
            token=request.token,
        ))
        log.info("session %s resumed by connection %s", session.id, peer.hex()[:8])

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


def _session_of(request: Incoming | None) -> str | None:
    """The session a request names, if any (for error replies)."""
    return request.session if isinstance(request, InSession | Event | StateGet) else None
