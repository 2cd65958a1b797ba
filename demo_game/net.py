"""The engine connection, on its own thread: an asyncio loop running ``npc_engine.client``.

The game loop must never wait on the network, so every call here is fire-and-forget:
it schedules a coroutine on the network thread, and whatever comes back (engine messages,
replies, failures) lands in :attr:`Net.inbox`, a thread-safe queue the game drains once a
frame. This is the shape a Unity/Godot integration takes too: a socket thread, a queue,
and the main thread reading it.

Every item in the inbox is a :class:`NetMsg`: the engine's own message (``type`` as on the
wire: ``turn.start``, ``reply.audio``, ``cue``, ``story``, ``turn.end``, ``event.ok`` ...)
tagged with the character who speaks (the message's own ``character``), or a local ``net.*``
message about the connection itself.

Conversations are keyed: a one-to-one session by its character, a scene (several
characters, one conversation) by its session id, which the game picks. Every call that
talks to a conversation takes that key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from npc_engine.client import ClientSession, EngineClient, EngineError, EngineUnavailable, Turn

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.02
HEARTBEAT_S = 5.0
HEARTBEAT_MISSES = 3  # a busy 2-core machine can be slow to answer once; three in a row is a dead engine


@dataclass
class NetMsg:
    type: str
    character: str | None = None  # who speaks (a turn's messages), or whose session it is
    data: dict[str, Any] = field(default_factory=dict)
    conv: str | None = None  # the conversation's key: a character, or a scene's session id


class Net:
    def __init__(self) -> None:
        self.inbox: queue.Queue[NetMsg] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.client: EngineClient | None = None
        self.hello: dict[str, Any] = {}
        self.sessions: dict[str, ClientSession] = {}  # by key: a character, or a scene's session id
        self.scenes: set[str] = set()  # the keys that are scenes
        self._pumps: dict[str, list[asyncio.Task[None]]] = {}
        self._feeds: dict[str, asyncio.Task[None]] = {}
        self._consumed: dict[str, set[int]] = {}  # session id -> turn ids already forwarded
        self._heartbeat: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="npc-net", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _post(self, type_: str, character: str | None = None, data: dict[str, Any] | None = None, **fields: Any) -> None:
        self.inbox.put(NetMsg(type_, character, {**(data or {}), **fields}))

    def drain(self) -> list[NetMsg]:
        out: list[NetMsg] = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    # ------------------------------------------------------------------ game-facing calls

    def connect(self, endpoint: str, timeout: float = 2.0) -> None:
        """Posts ``net.connected`` (with the engine's hello.ok) or ``net.unavailable``."""
        self._submit(self._connect(endpoint, timeout))

    def open_session(self, character: str, player: str, vars: dict[str, Any], audio: bool = True, greet: bool = True) -> None:
        self._submit(self._guard(character, "session.open", self._open(character, player, vars, audio, greet)))

    def open_scene(
        self, key: str, characters: list[str], player: str, vars: dict[str, Any], audio: bool = True,
        greet: bool = True, facing: str | None = None,
    ) -> None:
        """Open a scene whose session id is ``key``: posts ``scene.opened`` or ``session.failed``."""
        self._submit(self._guard(key, "scene.open", self._open_scene(key, characters, player, vars, audio, greet, facing)))

    def scene_update(self, key: str, facing: str | None) -> None:
        """Tell the engine whom the player faces now (answers a line that names nobody; None: nobody)."""
        self._submit(self._guard(key, "scene.update", self._scene_update(key, facing)))

    def banter(self, key: str, beat: str | None, topic: str, characters: list[str]) -> None:
        """Characters of the scene talk among themselves: the story ``beat``'s exchange if the
        engine knows it, else a model dialogue about ``topic``. ``banter.end`` says when it is over."""
        self._submit(self._guard(key, "scene.banter", self._banter(key, beat, topic, characters)))

    def close_session(self, character: str) -> None:
        self._submit(self._close(character))

    def say(self, character: str, text: str) -> None:
        self._submit(self._guard(character, "text", self._say(character, text)))

    def cancel(self, character: str, turn: int | None, heard: float | None = None) -> None:
        self._submit(self._guard(character, "cancel", self._cancel(character, turn, heard)))

    def audio_frames(self, character: str, frames: list[bytes]) -> None:
        self._submit(self._guard(character, "audio", self._audio(character, frames)))

    def audio_end(self, character: str) -> None:
        self._submit(self._guard(character, "audio.end", self._audio_end(character)))

    def send_wav(self, character: str, frames: list[bytes]) -> None:
        """Stream prepared 20 ms frames at real-time pace, then ``audio.end`` (as a mic would)."""
        self._submit(self._start_feed(character, frames))

    def stop_wav(self, character: str) -> None:
        self._submit(self._stop_feed(character))

    def event(self, name: str, data: dict[str, Any], player: str, character: str | None = None) -> None:
        """A game event; the reply comes back as ``event.ok`` with the story's ``effects``."""
        self._submit(self._guard(character, "event", self._event(name, data, player, character)))

    def save(self, player: str) -> None:
        """Posts ``state.saved`` with the engine's ``blob`` for this player."""
        self._submit(self._guard(None, "state.save", self._save(player)))

    def load(self, player: str, blob: bytes) -> None:
        """Posts ``state.loaded`` once the engine has restored the player's story and memory."""
        self._submit(self._guard(None, "state.load", self._load(player, blob)))

    def query_beats(self, player: str) -> None:
        """Posts ``net.beats`` with every character's current beat (to draw the quest log)."""
        # Its errors say "state.get" (the read of the beats), so the game knows the quest log
        # is what failed and can ask again.
        self._submit(self._guard(None, "state.get", self._post_beats(player)))

    def shutdown(self, timeout: float = 3.0) -> None:
        """Close the sessions politely and stop the thread."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._submit(self._shutdown()).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ coroutines (network thread)

    async def _guard(self, key: str | None, what: str, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except EngineError as exc:
            self._post_error(key, what, exc.code, exc.message)
        except (asyncio.TimeoutError, TimeoutError):
            self._post_error(key, what, "timeout", f"the engine did not answer the {what} in time")
        except KeyError:
            self._post_error(key, what, "no_session", "that conversation is already over")
        except Exception as exc:
            log.exception("net: %s failed", what)
            self._post_error(key, what, "client", f"{what} failed: {exc}")

    def _post_error(self, key: str | None, what: str, code: str, message: str) -> None:
        # A scene's errors name its session (its key), as the engine's own errors do.
        if key is not None and key in self.scenes:
            self._post("error", None, {"session": key}, code=code, message=message, request_type=what)
        else:
            self._post("error", key, code=code, message=message, request_type=what)

    async def _connect(self, endpoint: str, timeout: float) -> None:
        if self.client is not None:
            await self._drop_client()
        try:
            self.client = await EngineClient.connect(endpoint, timeout=timeout, client_name="oakhollow-demo")
        except EngineUnavailable as exc:
            self._post("net.unavailable", reason=str(exc), endpoint=endpoint)
            return
        self.hello = self.client.hello
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        self._post("net.connected", None, dict(self.hello))

    async def _drop_client(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for character, session in list(self.sessions.items()):
            self._stop_pumps(character, session)
        self.sessions.clear()
        self.scenes.clear()
        if self.client is not None:
            await self.client.close()
        self.client = None

    async def _beat(self) -> None:
        """Notice an engine that stopped answering (ZeroMQ itself never says so)."""
        misses = 0
        while self.client is not None:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.client.request({"type": "ping", "t": time.time()}, timeout=2 * HEARTBEAT_S)
                misses = 0
            except (asyncio.TimeoutError, TimeoutError):
                misses += 1
                if misses >= HEARTBEAT_MISSES:
                    self._post("net.lost", reason=f"no answer to {misses} pings in a row")
                    return
            except Exception:  # an error reply still proves the engine is alive
                misses = 0

    def _need_client(self) -> EngineClient:
        if self.client is None:
            raise EngineError({"code": "not_connected", "message": "not connected to an engine"})
        return self.client

    async def _open(self, character: str, player: str, vars: dict[str, Any], audio: bool, greet: bool) -> None:
        client = self._need_client()
        if character in self.sessions:
            await self._close(character)
        try:
            session = await client.open_session(character, player, greet=greet, audio=audio, vars=vars)
        except EngineError as exc:
            self._post("session.failed", character, code=exc.code, message=exc.message)
            return
        except (asyncio.TimeoutError, TimeoutError):
            self._post("session.failed", character, code="timeout", message="the engine did not open the conversation in time")
            return
        self.sessions[character] = session
        self._start_pumps(character, session)
        self._post("session.opened", character, dict(session.info))

    async def _open_scene(
        self, key: str, characters: list[str], player: str, vars: dict[str, Any], audio: bool, greet: bool,
        facing: str | None,
    ) -> None:
        client = self._need_client()
        if key in self.sessions:
            await self._close(key)
        self.scenes.add(key)
        try:
            session = await client.open_scene(
                characters, player, greet=greet, audio=audio, vars=vars, session=key, facing=facing,
            )
        except (EngineError, asyncio.TimeoutError, TimeoutError) as exc:
            self.scenes.discard(key)
            code, message = (exc.code, exc.message) if isinstance(exc, EngineError) else (
                "timeout", "the engine did not open the scene in time")
            self._post("session.failed", None, {"session": key}, code=code, message=message)
            return
        self.sessions[key] = session
        self._start_pumps(key, session)
        self._post("scene.opened", None, dict(session.info))

    async def _scene_update(self, key: str, facing: str | None) -> None:
        reply = await self.sessions[key].update(facing=facing)  # a None goes out as nil: faces nobody
        self._post("scene.updated", None, dict(reply))

    async def _banter(self, key: str, beat: str | None, topic: str, characters: list[str]) -> None:
        session = self.sessions[key]
        client = self._need_client()
        base = {"type": "scene.banter", "session": session.id, "characters": characters}
        try:
            start = await client.request({**base, "beat": beat} if beat else {**base, "topic": topic}, timeout=60)
        except EngineError:
            if not beat:
                raise
            # This story has no such beat (or it cannot be played here): talk about the topic.
            log.info("banter: beat %s refused, falling back to the topic", beat)
            start = await client.request({**base, "topic": topic}, timeout=60)
        self._post("banter.started", None, {"session": session.id, "beat": beat, "topic": topic})
        if start.get("type") == "banter.end":  # over at once (nothing to say): the reply is the end
            self.inbox.put(NetMsg("banter.end", None, start, key))
        elif start.get("turn") is not None and start["turn"] in session.turns:
            # The first line's turn.start echoes our id: the client marked that turn as ours.
            self._consume(key, session, session.turns[start["turn"]])

    def _start_pumps(self, key: str, session: ClientSession) -> None:
        loop = asyncio.get_running_loop()
        self._pumps[key] = [
            loop.create_task(self._pump_turns(key, session)),
            loop.create_task(self._pump_other(key, session)),
        ]

    async def _pump_turns(self, character: str, session: ClientSession) -> None:
        """Turns nobody asked for: greetings, voice replies, story lines after a game event."""
        while True:
            self._consume(character, session, await session.next_turn(timeout=None))

    def _consume(self, character: str, session: ClientSession, turn: Turn) -> None:
        """Forward one turn's messages, in order, with exactly one reader per turn.

        A turn can reach us twice: say() returns the turn of a typed line, and next_turn()
        may hand out the same turn if it was waiting when that turn started.
        """
        seen = self._consumed.setdefault(session.id, set())
        if turn.id in seen:
            return
        seen.add(turn.id)
        tasks = [t for t in self._pumps.get(character, []) if not t.done()]
        tasks.append(asyncio.get_running_loop().create_task(self._forward(character, turn)))
        self._pumps[character] = tasks

    async def _forward(self, key: str, turn: Turn) -> None:
        async for msg in turn:
            self.inbox.put(NetMsg(msg["type"], self._speaker(key, msg), msg, key))

    async def _pump_other(self, key: str, session: ClientSession) -> None:
        while True:
            msg = await session.other.get()
            self.inbox.put(NetMsg(msg["type"], self._speaker(key, msg), msg, key))

    def _speaker(self, key: str, msg: dict[str, Any]) -> str | None:
        """Who a message is about: the turn's ``character`` (who speaks: audio, lips and subtitles
        go to that actor), else the session's character; a scene-wide message names nobody."""
        who = msg.get("character")
        if isinstance(who, str) and who:
            return who
        return None if key in self.scenes else key

    def _stop_pumps(self, character: str, session: ClientSession | None) -> None:
        if session is not None:
            self._consumed.pop(session.id, None)
        for task in self._pumps.pop(character, []):
            task.cancel()
        feed = self._feeds.pop(character, None)
        if feed is not None:
            feed.cancel()

    async def _close(self, key: str) -> None:
        session = self.sessions.pop(key, None)
        self._stop_pumps(key, session)
        if session is not None:
            with contextlib.suppress(EngineError, asyncio.TimeoutError, TimeoutError):
                await session.close()
        if key in self.scenes:
            self.scenes.discard(key)
            self._post("session.closed", None, {"session": key})
        else:
            self._post("session.closed", key)

    async def _say(self, character: str, text: str) -> None:
        session = self.sessions[character]
        self._consume(character, session, await session.say(text))

    async def _cancel(self, character: str, turn: int | None, heard: float | None) -> None:
        await self.sessions[character].cancel(turn, heard)

    async def _audio(self, character: str, frames: list[bytes]) -> None:
        session = self.sessions[character]
        for frame in frames:
            await session.send_audio(frame)

    async def _audio_end(self, character: str) -> None:
        await self.sessions[character].end_audio()

    async def _start_feed(self, character: str, frames: list[bytes]) -> None:
        await self._stop_feed(character)
        self._feeds[character] = asyncio.get_running_loop().create_task(
            self._guard(character, "audio", self._feed(character, frames))
        )

    async def _stop_feed(self, character: str) -> None:
        feed = self._feeds.pop(character, None)
        if feed is not None:
            feed.cancel()

    async def _feed(self, character: str, frames: list[bytes]) -> None:
        session = self.sessions[character]
        t0 = time.monotonic()
        for i, frame in enumerate(frames):
            await session.send_audio(frame)
            # Real-time pace, the way a microphone delivers it (the engine's VAD expects that).
            delay = t0 + (i + 1) * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await session.end_audio()
        self._feeds.pop(character, None)
        self._post("net.wav_sent", character, seconds=len(frames) * FRAME_SECONDS)

    async def _event(self, name: str, data: dict[str, Any], player: str, character: str | None) -> None:
        client = self._need_client()
        session = self.sessions.get(character) if character else None
        if session is not None:
            reply = await session.event(name, data)
        else:
            # The engine takes an event by player only from a connection with a session open for
            # that player (docs/protocol.md, Security): borrow one, or open a silent one.
            session, temporary = await self._any_session(player)
            try:
                reply = await client.request({"type": "event", "player": player, "name": name, "data": data})
            finally:
                if temporary:
                    await session.close()
        self._post("event.ok", character, reply)

    async def _any_session(self, player: str) -> tuple[ClientSession, bool]:
        """An open session of this player, or a silent temporary one (state.save/load need one)."""
        for session in self.sessions.values():
            if session.info.get("player") == player:
                return session, False
        client = self._need_client()
        characters = [c["id"] for c in self.hello.get("characters", [])]
        if not characters:
            raise EngineError({"code": "no_characters", "message": "the engine has no characters loaded"})
        return await client.open_session(characters[0], player, greet=False, audio=False), True

    async def _save(self, player: str) -> None:
        session, temporary = await self._any_session(player)
        try:
            blob = await session.save()
        finally:
            if temporary:
                await session.close()
        self._post("state.saved", None, blob=blob, player=player)

    async def _load(self, player: str, blob: bytes) -> None:
        session, temporary = await self._any_session(player)
        try:
            reply = await session.load(blob)
        finally:
            if temporary:
                await session.close()
        self._post("state.loaded", None, reply, beats=await self._beats(player))

    async def _beats(self, player: str) -> dict[str, str | None]:
        """Each character's current story beat for this player (``state.get``; like an event by
        player, it needs a session of that player open on this connection)."""
        session, temporary = await self._any_session(player)
        try:
            state = await self._need_client().request({"type": "state.get", "player": player})
        finally:
            if temporary:
                await session.close()
        return {c["id"]: state["beats"].get(c["id"]) for c in self.hello.get("characters", [])}

    async def _post_beats(self, player: str) -> None:
        self._post("net.beats", None, beats=await self._beats(player))

    async def _shutdown(self) -> None:
        for character in list(self.sessions):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._close(character), 1.0)
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        for task in others:  # a connect still waiting, feeds, pumps
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._drop_client()
