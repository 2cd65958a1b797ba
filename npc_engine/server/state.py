"""Requests about a player's story state: ``state.get``, ``state.save``, ``state.load``, ``event``.

None of them needs model work; ``state.load`` cuts off the player's running turns first.
"""

from __future__ import annotations

from collections.abc import Callable

from npc_engine.engine import Engine
from npc_engine.protocol import ErrorCode, Event, ProtocolError, StateGet, StateLoad, StateSave
from npc_engine.protocol import outgoing as msg
from npc_engine.server.registry import SessionRegistry
from npc_engine.session import Session
from npc_engine.session.story import effect_fields, lines_by_character
from npc_engine.store import BadBlob, parse_blob

Reply = Callable[[msg.Outgoing], None]


class StateRequests:
    def __init__(self, engine: Engine, registry: SessionRegistry) -> None:
        self.engine = engine
        self.registry = registry

    def player_of(self, peer: bytes, request: Event | StateGet) -> str:
        if request.session:
            return self.registry.get(request.session, request_id=request.id, request_type=request.type, peer=peer).player
        if not request.player:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"{request.type} needs either 'session' or 'player'",
                request_id=request.id, request_type=request.type,
            )
        return request.player

    async def get(self, peer: bytes, request: StateGet, reply: Reply) -> None:
        """The player's story state, for a quest log: no session (and no model work) needed."""
        player = self.player_of(peer, request)
        state = await self.engine.story_state(player)
        reply(msg.StateReport(
            id=request.id, session=request.session, player=player, beats=dict(state.current),
            flags=dict(state.flags), vars=dict(state.vars), last_beat=state.last_beat,
        ))

    async def event(self, peer: bytes, request: Event, reply: Reply) -> None:
        eng = self.engine
        player = self.player_of(peer, request)
        async with eng.state_lock(player):
            state = await eng.story_state(player)
            effects = eng.story.on_event(state, request.name, dict(request.data))
            if effects:
                await eng.save_story_state(player)
        self.registry.speak_story_lines(player, lines_by_character(effects))
        reply(msg.EventOk(id=request.id, name=request.name, effects=[effect_fields(e) for e in effects]))

    async def save(self, session: Session, request: StateSave, reply: Reply) -> None:
        await self.engine.save_story_state(session.player)
        blob = await self.engine.store.export_blob(session.player)
        reply(msg.StateSaved(id=request.id, session=session.id, player=session.player, blob=blob))

    async def load(self, session: Session, request: StateLoad, reply: Reply) -> None:
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
        mine = self.registry.of_player(player)
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
        reply(msg.StateLoaded(id=request.id, session=session.id, player=player, beat=beat.id if beat else None))
