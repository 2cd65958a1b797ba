"""Who has the floor: the turn running in a conversation, the last one that ended, turn ids.

A one-to-one session has its own floor. The characters of a scene share one: turn ids are
unique across the scene, one character speaks at a time, and a new turn cuts off whoever is
speaking (its ``turn.end`` still goes first), whichever character it belongs to.
"""

from __future__ import annotations

import itertools

from npc_engine.turns.handle import TurnHandle


class Floor:
    def __init__(self) -> None:
        self.current: TurnHandle | None = None  # the running turn (cut off or not)
        self.last_turn: TurnHandle | None = None  # the latest finished turn, for a late cancel
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def take(self, turn: TurnHandle) -> TurnHandle | None:
        """``turn`` has the floor now: the turn that had it is cut off and returned (the new
        one waits for its end, so its ``turn.end`` and memory go first)."""
        previous = self.current
        if previous is not None:
            previous.cancel()
        self.current = turn
        return previous

    def release(self, turn: TurnHandle) -> None:
        """``turn`` has ended (its memory recorded)."""
        if self.current is turn:
            self.current = None
        self.last_turn = turn
