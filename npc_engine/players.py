"""Per-player story state kept in memory: bounded, and never dropped while someone uses it.

Every player id any game names gets a story state (and, while it is being changed, a lock),
so both tables would otherwise grow with every id a client invents. The store holds every
player's state; this is only the working set:

- at most ``capacity`` players are kept, least recently used first out;
- a player *in use* is never dropped: one with an open session (``hold``/``release``) or
  with someone inside or waiting for their lock. Dropping such a player would let two
  copies of one state exist at once (the held one and a fresh one read from the store),
  and a change to one of them would be lost;
- a player's lock exists only while someone is inside or waiting for it.

Someone outside any lock and without a session (a ``state.get``) reads the state it was
given and lets go; everyone else reads through ``Engine.story_state`` every time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterator

from npc_engine.story import StoryState


class PlayerStates:
    """``player -> StoryState``, least recently used first, with the dict methods the engine uses."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._states: collections.OrderedDict[str, StoryState] = collections.OrderedDict()
        self._holds: collections.Counter[str] = collections.Counter()  # open sessions per player
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # player -> (lock, users inside or waiting)

    # ------------------------------------------------------------------ the mapping

    def get(self, player: str) -> StoryState | None:
        state = self._states.get(player)
        if state is not None:
            self._states.move_to_end(player)
        return state

    def __getitem__(self, player: str) -> StoryState:
        state = self.get(player)
        if state is None:
            raise KeyError(player)
        return state

    def __setitem__(self, player: str, state: StoryState) -> None:
        self._states[player] = state
        self._states.move_to_end(player)
        self._evict()

    def setdefault(self, player: str, state: StoryState) -> StoryState:
        kept = self.get(player)
        if kept is None:
            self[player] = kept = state
        return kept

    def pop(self, player: str, default: StoryState | None = None) -> StoryState | None:
        return self._states.pop(player, default)

    def __contains__(self, player: object) -> bool:
        return player in self._states

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._states))

    # ------------------------------------------------------------------ in use

    def hold(self, player: str) -> None:
        """A session of ``player`` is open: keep their state until ``release``."""
        self._holds[player] += 1

    def release(self, player: str) -> None:
        if self._holds[player] > 1:
            self._holds[player] -= 1
        else:
            self._holds.pop(player, None)
            self._evict()

    def in_use(self, player: str) -> bool:
        return self._holds[player] > 0 or player in self._locks

    @contextlib.asynccontextmanager
    async def lock(self, player: str) -> AsyncIterator[None]:
        """The player's lock, for a read-change-save of their state."""
        lock, users = self._locks.get(player) or (asyncio.Lock(), 0)
        self._locks[player] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[player]
            if users <= 1:
                # Nobody inside or waiting: nothing refers to this lock, the next user makes a new one.
                del self._locks[player]
                self._evict()
            else:
                self._locks[player] = (lock, users - 1)

    @property
    def locks(self) -> int:
        """Locks alive now (players someone is changing or waiting to change)."""
        return len(self._locks)

    def _evict(self) -> None:
        if len(self._states) <= self.capacity:
            return
        idle = [p for p in self._states if not self.in_use(p)]  # oldest first
        for player in idle[: len(self._states) - self.capacity]:
            del self._states[player]
