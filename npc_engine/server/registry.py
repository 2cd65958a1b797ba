"""The open sessions: lookup by id, the connection each one answers to, closed ids, and
routing scripted story lines to the session of the character who says them.

It also knows what each game connection has (its open sessions, its turns waiting for the
model) and when a game last spoke for each session, for the per-client limits and the idle
expiry (docs/protocol.md, Limits)."""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence

from npc_engine.protocol import ErrorCode, ProtocolError
from npc_engine.scene import Scene
from npc_engine.session import Session
from npc_engine.session.story import by_character
from npc_engine.turns.speech import Speakable

# What a session id names: a one-to-one conversation, or a scene (several characters).
Conversation = Session | Scene

log = logging.getLogger(__name__)

# Closed ids are remembered (to answer `session_closed` rather than `unknown_session`) up to this many.
MAX_CLOSED_IDS = 10_000


class SessionRegistry:
    def __init__(self) -> None:
        self.sessions: dict[str, Conversation] = {}
        self.peers: dict[str, bytes] = {}  # session id -> the connection that owns it (opened or resumed it)
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()
        # session id -> when its game last sent anything for it (time.monotonic)
        self._last_seen: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[Conversation]:
        return iter(list(self.sessions.values()))

    def __contains__(self, sid: str) -> bool:
        return sid in self.sessions

    def add(self, session: Conversation, peer: bytes) -> None:
        self._closed.pop(session.id, None)
        self.sessions[session.id] = session
        self.peers[session.id] = peer
        self._last_seen[session.id] = time.monotonic()

    def remove(self, sid: str) -> Conversation | None:
        """Closed at once for new messages (the session itself may still be finishing a turn:
        its peer stays known until ``release``, so that turn's ``turn.end`` still goes out)."""
        session = self.sessions.pop(sid, None)
        self._last_seen.pop(sid, None)
        self._closed[sid] = None
        while len(self._closed) > MAX_CLOSED_IDS:
            self._closed.popitem(last=False)
        return session

    def get(self, sid: str | None, *, request_id: str | int | None, request_type: str, peer: bytes) -> Conversation:
        """The open session ``sid`` if ``peer`` owns it, or a typed error.

        A session belongs to the connection that opened (or last resumed) it. Any other
        connection gets ``forbidden`` and is not made its peer: naming a session must never
        be enough to receive its messages (a game that reconnected sends ``session.resume``).
        """
        session = self.lookup(sid, request_id=request_id, request_type=request_type)
        if self.peers.get(session.id) != peer:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"session {sid!r} belongs to another connection; a game that reconnected takes its "
                "session back with session.resume and the token from session.opened",
                request_id=request_id, request_type=request_type, session=sid,
            )
        self._last_seen[session.id] = time.monotonic()
        return session

    def release(self, sid: str) -> None:
        """A removed session has finished closing: forget its connection too (unless the id
        has been opened again since)."""
        if sid not in self.sessions:
            self.peers.pop(sid, None)

    def lookup(self, sid: str | None, *, request_id: str | int | None, request_type: str) -> Conversation:
        """The open session ``sid`` whoever owns it, or ``unknown_session`` / ``session_closed``."""
        session = self.sessions.get(sid) if sid is not None else None
        if session is None:
            code, why = (
                (ErrorCode.SESSION_CLOSED, f"session {sid!r} is closed; open a new one")
                if sid in self._closed
                else (ErrorCode.UNKNOWN_SESSION, f"no open session {sid!r}; send session.open first")
            )
            raise ProtocolError(code, why, request_id=request_id, request_type=request_type, session=sid)
        return session

    def take_over(self, session: Conversation, peer: bytes) -> None:
        """``peer`` owns ``session`` from now on (a resume with the right token): the rest of
        its messages go there, and the connection that had it gets nothing more."""
        self.peers[session.id] = peer
        self._last_seen[session.id] = time.monotonic()

    def peer_of(self, sid: str) -> bytes | None:
        return self.peers.get(sid)

    def open_by(self, peer: bytes) -> int:
        """How many open sessions ``peer`` owns."""
        return sum(1 for sid in self.sessions if self.peers.get(sid) == peer)

    def model_admission(self, sid: str, limit: int) -> str | None:
        """Whether session ``sid`` may queue one more turn for the model: None, or why not
        (its connection already has ``limit`` turns waiting for the model, over all its sessions)."""
        peer = self.peers.get(sid)
        waiting = sum(s.waiting_for_model for s in self.sessions.values() if self.peers.get(s.id) == peer)
        if waiting < limit:
            return None
        return f"this game already has {waiting} turns waiting for the model (the limit is {limit})"

    def idle(self, timeout_s: float) -> list[Conversation]:
        """Open sessions nobody has sent anything for in ``timeout_s`` seconds."""
        cutoff = time.monotonic() - timeout_s
        return [self.sessions[sid] for sid, seen in list(self._last_seen.items()) if seen < cutoff]

    def of_player(self, player: str) -> list[Conversation]:
        return [s for s in self.sessions.values() if s.player == player]

    def peer_gone(self, peer: bytes) -> None:
        """The game disconnected: stop its turns, but keep its sessions (it may reconnect)."""
        self.cancel_turns_of(peer, "went away")

    def cancel_turns_of(self, peer: bytes, why: str) -> None:
        """Cancel the running turn of every session ``peer`` owns (each still ends with turn.end)."""
        for sid, p in list(self.peers.items()):
            if p == peer and (s := self.sessions.get(sid)) and s.current is not None and not s.current.cancelled:
                log.info("game for session %s %s; cancelling its turn", sid, why)
                s.current.cancel()

    def speak_story_lines(self, player: str, lines: Sequence[tuple[str, Speakable]]) -> None:
        """Scripted lines for characters of ``player``'s open conversations: a scene with the
        speaker in it plays them in order; else one story turn per character, in its session."""
        for scene in (s for s in self.sessions.values() if isinstance(s, Scene) and s.player == player):
            here = [(c, line) for c, line in lines if scene.has_character(c)]
            if here:
                scene.say_lines(here)
                lines = [(c, line) for c, line in lines if not scene.has_character(c)]
        for character, said in by_character(lines).items():
            speaker = next(
                (s for s in self.sessions.values()
                 if isinstance(s, Session) and s.player == player and s.character.id == character), None,
            )
            if speaker is not None:
                speaker.start_turn("story", None, scripted=said)

    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.close()
        self.sessions.clear()
        self.peers.clear()
        self._last_seen.clear()
