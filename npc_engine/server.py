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
import logging
import time
import uuid
from typing import Any

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
    error,
    out,
)
from npc_engine.session import Session, effect_message, scripted_speakable
from npc_engine.store import BadBlob, parse_blob

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
        while not self._outbox.empty():
            await asyncio.sleep(0.01)

    async def _close_sessions(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.close()
        self.sessions.clear()

    # ------------------------------------------------------------------ transport

    def send(self, peer: bytes, msg: dict[str, Any]) -> None:
        prom.message_sent(msg)
        self._outbox.put_nowait((peer, encode(msg)))

    def send_to_session(self, session_id: str, msg: dict[str, Any]) -> None:
        peer = self.peers.get(session_id)
        if peer is not None:
            self.send(peer, msg)

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

    async def _peer_gone(self, peer: bytes) -> None:
        # The game disconnected: stop talking to it, but keep its sessions (it may reconnect).
        for sid, p in list(self.peers.items()):
            if p == peer and (s := self.sessions.get(sid)) and s.current is not None:
                log.info("game for session %s went away; cancelling its turn", sid)
                s.current.cancel.set()

    async def _recv_loop(self) -> None:
        assert self.sock is not None
        while True:
            frames = await self.sock.recv_multipart(copy=True)
            if len(frames) < 2:
                continue
            peer, payload = frames[0], frames[-1]  # a REQ-style empty delimiter frame is tolerated
            msg = None
            try:
                msg = decode(payload, max_bytes=self.engine.cfg.max_message_bytes)
                await self.dispatch(peer, msg)
            except ProtocolError as exc:
                if msg is not None:  # every error names the request it answers
                    exc.request_id = exc.request_id if exc.request_id is not None else msg.id
                    exc.request_type = exc.request_type or msg.type
                    exc.session = exc.session or getattr(msg, "session", None)
                log.info("error %s to %s: %s", exc.code.value, peer.hex()[:8], exc.message)
                self.send(peer, error(exc))
            except Exception as exc:  # a bug must not take the server down with it
                log.exception("internal error handling a message")
                self.send(peer, error(ProtocolError(
                    ErrorCode.INTERNAL, f"internal error: {exc}",
                    request_id=getattr(msg, "id", None), request_type=getattr(msg, "type", None),
                    session=getattr(msg, "session", None),
                )))

    # ------------------------------------------------------------------ dispatch

    async def dispatch(self, peer: bytes, msg: Incoming) -> None:
        if isinstance(msg, Hello):
            self.send(peer, self._hello_ok(msg))
        elif isinstance(msg, Ping):
            self.send(peer, out("pong", id=msg.id, t=msg.t, server_time=time.time()))
        elif isinstance(msg, SessionOpen):
            await self._open(peer, msg)
        elif isinstance(msg, Event):
            await self._event(peer, msg)
        elif isinstance(msg, StateGet):
            await self._state_get(peer, msg)
        else:
            session = self._session(peer, msg)
            if isinstance(msg, Text):
                session.start_turn("text", msg.text, request_id=msg.id)
            elif isinstance(msg, Audio):
                self._check_audio(msg)
                session.audio_in(msg.pcm)
            elif isinstance(msg, AudioEnd):
                session.audio_end()
            elif isinstance(msg, Cancel):
                session.cancel_nowait(msg.turn, msg.heard)  # its turn.end follows; never block the loop on it
            elif isinstance(msg, StateSave):
                await self._state_save(peer, session, msg)
            elif isinstance(msg, StateLoad):
                await self._state_load(peer, session, msg)
            elif isinstance(msg, SessionClose):
                # Closed at once for new messages; the reply follows once its turn has ended.
                self.sessions.pop(session.id, None)
                self._remember_closed(session.id)
                asyncio.get_running_loop().create_task(self._close(peer, session, msg.id))

    async def _close(self, peer: bytes, session: Session, request_id: Any) -> None:
        await session.close()
        self.send(peer, out("session.closed", id=request_id, session=session.id))

    def _hello_ok(self, msg: Hello) -> dict[str, Any]:
        eng = self.engine
        return out(
            "hello.ok",
            id=msg.id,
            engine=f"npc-engine/{__version__}",
            protocol=PROTOCOL_VERSION,
            characters=[{"id": c.id, "name": c.name} for c in eng.characters.values()],
            audio_in={"rate": AUDIO_IN_RATE, "channels": 1, "format": "pcm_s16le", "frame_ms": 20},
            audio_out={"rate": eng.synth.sample_rate, "channels": 1, "format": "pcm_s16le"} if eng.synth else None,
            stt=eng.transcriber is not None,
            max_message_bytes=eng.cfg.max_message_bytes,
        )

    def _session(self, peer: bytes, msg: Any) -> Session:
        sid = msg.session
        session = self.sessions.get(sid)
        if session is None:
            if sid in self._closed:
                raise ProtocolError(
                    ErrorCode.SESSION_CLOSED, f"session {sid!r} is closed; open a new one",
                    request_id=msg.id, request_type=msg.type, session=sid,
                )
            raise ProtocolError(
                ErrorCode.UNKNOWN_SESSION, f"no open session {sid!r}; send session.open first",
                request_id=msg.id, request_type=msg.type, session=sid,
            )
        self.peers[sid] = peer  # a reconnecting game takes its session over
        return session

    def _remember_closed(self, sid: str) -> None:
        self._closed[sid] = None
        while len(self._closed) > 10_000:
            self._closed.popitem(last=False)

    async def _open(self, peer: bytes, msg: SessionOpen) -> None:
        eng = self.engine
        character = eng.characters.get(msg.character)
        if character is None:
            known = ", ".join(sorted(eng.characters)) or "none loaded"
            raise ProtocolError(
                ErrorCode.UNKNOWN_CHARACTER, f"unknown character {msg.character!r}; known characters: {known}",
                request_id=msg.id, request_type=msg.type,
            )
        sid = msg.session or uuid.uuid4().hex[:12]
        if sid in self.sessions:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"session {sid!r} is already open", request_id=msg.id,
                request_type=msg.type, session=sid,
            )
        self._closed.pop(sid, None)
        self.peers[sid] = peer
        session = Session(
            eng, sid, character, msg.player, lambda m, sid=sid: self.send_to_session(sid, m),
            audio=msg.audio, mode=msg.mode, speak_elsewhere=self.speak_story_lines,
        )
        self.sessions[sid] = session
        info = await session.open(dict(msg.vars))
        self.send(peer, out("session.opened", id=msg.id, **info))
        log.info("session %s opened: player %s talks to %s", sid, msg.player, character.id)
        if msg.greet and character.greetings:
            session.start_turn("greeting", None)

    def _check_audio(self, msg: Audio) -> None:
        problem = None
        if msg.rate != AUDIO_IN_RATE:
            problem = f"audio must be {AUDIO_IN_RATE} Hz, got {msg.rate}"
        elif msg.channels != 1:
            problem = f"audio must be mono, got {msg.channels} channels"
        elif len(msg.pcm) % 2:
            problem = "PCM16 audio must have an even number of bytes"
        if problem:
            raise ProtocolError(ErrorCode.BAD_AUDIO, problem, request_id=msg.id, request_type=msg.type, session=msg.session)

    def _player_of(self, peer: bytes, msg: Event | StateGet) -> str:
        if msg.session:
            return self._session(peer, msg).player
        if not msg.player:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"{msg.type} needs either 'session' or 'player'", request_id=msg.id, request_type=msg.type
            )
        return msg.player

    async def _state_get(self, peer: bytes, msg: StateGet) -> None:
        """The player's story state, for a quest log: no session (and no model work) needed."""
        eng = self.engine
        player = self._player_of(peer, msg)
        state = await eng.story_state(player)
        self.send(peer, out(
            "state", id=msg.id, session=msg.session, player=player, beats=dict(state.current),
            flags=dict(state.flags), vars=dict(state.vars), last_beat=state.last_beat,
        ))

    async def _event(self, peer: bytes, msg: Event) -> None:
        eng = self.engine
        player = self._player_of(peer, msg)
        async with eng.state_lock(player):
            state = await eng.story_state(player)
            effects = eng.story.on_event(state, msg.name, dict(msg.data))
            if effects:
                await eng.save_story_state(player)
        effects_out = [effect_message(e) for e in effects]
        self.speak_story_lines(player, effects_out)
        self.send(peer, out("event.ok", id=msg.id, name=msg.name, effects=effects_out))

    def speak_story_lines(self, player: str, effects: list[dict[str, Any]], skip: str | None = None) -> None:
        """Start one story turn per character with scripted lines, in that character's open session."""
        by_character: dict[str, list[Any]] = {}
        for eff in effects:
            if eff["kind"] == "say_line" and eff.get("character") != skip:
                by_character.setdefault(eff["character"], []).append(scripted_speakable(eff))
        for character, lines in by_character.items():
            speaker = next((s for s in self.sessions.values() if s.player == player and s.character.id == character), None)
            if speaker is not None:
                speaker.start_turn("story", None, scripted=lines)

    async def _state_save(self, peer: bytes, session: Session, msg: StateSave) -> None:
        await self.engine.save_story_state(session.player)
        blob = await self.engine.store.call("export_blob", session.player)
        self.send(peer, out("state.saved", id=msg.id, session=session.id, player=session.player, blob=blob))

    async def _state_load(self, peer: bytes, session: Session, msg: StateLoad) -> None:
        eng = self.engine
        player = session.player
        try:
            parse_blob(msg.blob)  # refuse a bad blob before cutting anyone's speech
        except BadBlob as exc:
            raise ProtocolError(ErrorCode.BAD_STATE, str(exc), request_id=msg.id, request_type=msg.type, session=session.id) from None
        mine = [s for s in self.sessions.values() if s.player == player]
        for s in mine:
            await s.cancel_current(interrupted=True)
        try:
            async with eng.state_lock(player):
                await eng.store.call("import_blob", player, msg.blob)
                eng.forget_player(player)
                state = await eng.story_state(player)
        except BadBlob as exc:
            raise ProtocolError(ErrorCode.BAD_STATE, str(exc), request_id=msg.id, request_type=msg.type, session=session.id) from None
        for s in mine:
            s.history = await eng.store.call("load_history", player, s.character.id, 2 * eng.cfg.history_turns)
        beat = eng.story.active_beat(state, session.character.id)
        self.send(peer, out("state.loaded", id=msg.id, session=session.id, player=player, beat=beat.id if beat else None))
