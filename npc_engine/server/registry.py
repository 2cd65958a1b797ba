"""The open sessions: lookup by id, the connection each one answers to, closed ids, and
routing scripted story lines to the session of the character who says them."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator, Mapping

from npc_engine.protocol import ErrorCode, ProtocolError
from npc_engine.session import Session
from npc_engine.turns.speech import Speakable

log = logging.getLogger(__name__)

# Closed ids are remembered (to answer `session_closed` rather than `unknown_session`) up to this many.
MAX_CLOSED_IDS = 10_000


class SessionRegistry:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.peers: dict[str, bytes] = {}  # session id -> the connection that last spoke for it
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.sessions.values()))

    def __contains__(self, sid: str) -> bool:
        return sid in self.sessions

    def add(self, session: Session, peer: bytes) -> None:
        self._closed.pop(session.id, None)
        self.sessions[session.id] = session
        self.peers[session.id] = peer

    def remove(self, sid: str) -> Session | None:
        """Closed at once for new messages (the session itself may still be finishing a turn)."""
        session = self.sessions.pop(sid, None)
        self._closed[sid] = None
        while len(self._closed) > MAX_CLOSED_IDS:
            self._closed.popitem(last=False)
        return session

    def get(self, sid: str | None, *, request_id: str | int | None, request_type: str, peer: bytes) -> Session:
        """The open session ``sid``, or a typed error; the asking connection becomes its peer."""
        session = self.sessions.get(sid) if sid is not None else None
        if session is None:
            code, why = (
                (ErrorCode.SESSION_CLOSED, f"session {sid!r} is closed; open a new one")
                if sid in self._closed
                else (ErrorCode.UNKNOWN_SESSION, f"no open session {sid!r}; send session.open first")
            )
            raise ProtocolError(code, why, request_id=request_id, request_type=request_type, session=sid)
        self.peers[session.id] = peer  # a reconnecting game takes its session over
        return session

    def peer_of(self, sid: str) -> bytes | None:
        return self.peers.get(sid)

    def of_player(self, player: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.player == player]

    def peer_gone(self, peer: bytes) -> None:
        """The game disconnected: stop its turns, but keep its sessions (it may reconnect)."""
        for sid, p in list(self.peers.items()):
            if p == peer and (s := self.sessions.get(sid)) and s.current is not None:
                log.info("game for session %s went away; cancelling its turn", sid)
                s.current.cancel()

    def speak_story_lines(self, player: str, lines: Mapping[str, list[Speakable]]) -> None:
        """Start one story turn per character with scripted lines, in that character's open session."""
        for character, said in lines.items():
            speaker = next((s for s in self.sessions.values() if s.player == player and s.character.id == character), None)
            if speaker is not None:
                speaker.start_turn("story", None, scripted=said)

    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.close()
        self.sessions.clear()
