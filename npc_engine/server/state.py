"""Requests about a player's story state: ``state.get``, ``state.save``, ``state.load``, ``event``.

None of them needs model work; ``state.load`` cuts off the player's running turns first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from npc_engine.engine import Engine
from npc_engine.facts import learned_from_effects
from npc_engine.protocol import ErrorCode, Event, ProtocolError, StateGet, StateLoad, StateSave
from npc_engine.protocol import outgoing as msg
from npc_engine.scene import Scene
from npc_engine.server.registry import Conversation, SessionRegistry
from npc_engine.session.story import effect_fields, story_lines
from npc_engine.store import BadBlob, parse_blob
from npc_engine.story import Story
from npc_engine.story.state import StoryState, UnreadableState

Reply = Callable[[msg.Outgoing], None]


def checked_story_state(story: Story, data: dict[str, Any] | None) -> StoryState | None:
    """A save's story state, migrated to this engine's version and checked against the loaded
    story; UnreadableState saying what does not fit. (A state already in the store is read
    more leniently: a beat the story lost leaves that character without one, see Story.active_beat.)"""
    if data is None:
        return None
    try:
        state = StoryState.from_dict(data)
    except UnreadableState as exc:
        raise UnreadableState(f"the save's {exc}") from None
    problems = []
    for character, beat_id in sorted(state.current.items()):
        beat = story.beats.get(beat_id)
        if beat is None:
            problems.append(f"{character!r:.40} in beat {beat_id!r:.60}, which the loaded story does not have")
        elif character not in beat.characters:
            problems.append(f"{character!r:.40} in beat {beat_id!r}, which is not one of theirs")
    if state.last_beat is not None and state.last_beat not in story.beats:
        problems.append(f"its last beat at {state.last_beat!r:.60}, which the loaded story does not have")
    if problems:
        raise UnreadableState(
            f"the save's story state does not fit the loaded story ({story.title or 'untitled'}): it puts "
            + "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            + ". Was it made with another story?"
        )
    return state


class StateRequests:
    def __init__(self, engine: Engine, registry: SessionRegistry) -> None:
        self.engine = engine
        self.registry = registry

    def player_of(self, peer: bytes, request: Event | StateGet) -> str:
        """The player a request is about, if this connection may act for them.

        By ``session``: the session's player, if this connection owns the session. By
        ``player``: only a player this connection has a session open (or resumed) for; the
        same ``forbidden`` whether the player is unknown or another game's, so player ids
        cannot be probed.
        """
        if request.session:
            return self.registry.get(request.session, request_id=request.id, request_type=request.type, peer=peer).player
        if not request.player:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"{request.type} needs either 'session' or 'player'",
                request_id=request.id, request_type=request.type,
            )
        if not any(self.registry.peer_of(s.id) == peer for s in self.registry.of_player(request.player)):
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"{request.type} for player {request.player!r}: this connection has no session open for "
                "that player; open (or resume) one first",
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
        if effects:
            # An event sent for a session happened in front of its character (a scene: all of
            # them); sent by player, before nobody.
            conv = next((s for s in self.registry.of_player(player) if s.id == request.session), None)
            witnesses: list[str | None] = (
                [None] if conv is None else [*conv.present_ids()] if isinstance(conv, Scene) else [conv.character.id]
            )
            for witness in witnesses:
                await eng.facts.learn(player, learned_from_effects(effects, witness))
        self.registry.speak_story_lines(player, story_lines(effects))
        reply(msg.EventOk(id=request.id, name=request.name, effects=[effect_fields(e) for e in effects]))

    async def save(self, session: Conversation, request: StateSave, reply: Reply) -> None:
        await self.engine.save_story_state(session.player)
        blob = await self.engine.store.export_blob(session.player)
        reply(msg.StateSaved(id=request.id, session=session.id, player=session.player, blob=blob))

    async def load(self, session: Conversation, request: StateLoad, reply: Reply) -> None:
        eng = self.engine
        player = session.player

        def bad_state(exc: ValueError) -> ProtocolError:
            return ProtocolError(
                ErrorCode.BAD_STATE, str(exc), request_id=request.id, request_type=request.type, session=session.id
            )

        # Everything is checked before anyone's speech is cut or anything is written.
        try:
            save = parse_blob(request.blob, eng.store.save_key, accept_unsigned=eng.cfg.accept_unsigned_saves)
            story = checked_story_state(eng.story, save.story)
        except (BadBlob, UnreadableState) as exc:
            raise bad_state(exc) from None
        mine = self.registry.of_player(player)
        for s in mine:
            await s.cancel_and_wait()
        async with eng.state_lock(player):
            # One transaction: the player has the old state and memory, or the blob's, never a mix.
            await eng.store.replace_player(player, story.to_dict() if story else None, save.history, save.facts)
            eng.forget_player(player)
            await eng.facts.reload(player)
            state = await eng.story_state(player)
        for s in mine:
            await s.reload_memory()
        first = session.present_ids()[0] if isinstance(session, Scene) else session.character.id
        beat = eng.story.active_beat(state, first)
        reply(msg.StateLoaded(id=request.id, session=session.id, player=player, beat=beat.id if beat else None))
