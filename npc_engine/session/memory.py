"""A conversation's memory: what was said between one player and one character.

The history the prompt is built from lives here and in the store. It records only what the
player actually got from a turn (heard, or read in a text-only session), so a reply cut off
by barge-in is remembered as cut; a ``cancel`` with ``heard`` that arrives after the turn
ended trims the remembered reply to the words the player heard.

The prompt shows a window of the latest exchanges, trimmed in blocks (``prompt_history``):
it grows to ``window + block - 1`` exchanges, then the oldest ``block`` go at once. Between
trims a turn's prompt is the previous one plus the last reply and the new line, so llama.cpp
serves everything else from its KV cache; a window sliding by one exchange every turn would
change the prompt right after the persona and have the whole history evaluated again.
"""

from __future__ import annotations

import logging

from npc_engine.store import AsyncStore, HistoryEntry
from npc_engine.turns.handle import TurnHandle

log = logging.getLogger(__name__)


class Memory:
    def __init__(
        self, store: AsyncStore, player: str, character: str, window_turns: int, block_turns: int = 1
    ) -> None:
        self._store = store
        self.player = player
        self.character = character
        self._window = window_turns
        self._block = max(1, block_turns)
        self.history: list[HistoryEntry] = []
        # Where the prompt's window begins in ``history``: it moves only a whole block at a time.
        self._start = 0

    @property
    def prompt_turns(self) -> int:
        """The most exchanges the prompt's window holds."""
        return self._window + self._block - 1

    def prompt_history(self) -> list[HistoryEntry]:
        """The entries the prompt is built from: the window (once trimmed, it starts with a
        player's line; ``build_messages`` drops a reply without its question before that)."""
        return self.history[self._start:]

    def _trim(self) -> None:
        if len(self.history) - self._start <= 2 * self.prompt_turns:  # two entries an exchange
            return
        start = len(self.history) - 2 * self._window
        # Whole exchanges only: the model never sees an answer without its question.
        while start < len(self.history) and self.history[start].role != "user":
            start += 1
        self._start = start

    async def load(self) -> None:
        # Twice the prompt's window: user and assistant entries count separately.
        self.history = await self._store.load_history(self.player, self.character, 2 * self._window)
        self._start = 0
        self._trim()

    def remember(self, turn: TurnHandle, *, audio: bool) -> list[HistoryEntry]:
        """Record a finished turn in memory (not yet on disk); returns the new entries."""
        entries = []
        if turn.user_text:
            entries.append(HistoryEntry("user", turn.user_text))
        spoken = turn.delivered.spoken(audio, turn.heard)
        if spoken:
            entries.append(HistoryEntry("assistant", spoken, interrupted=turn.interrupted))
        self.history.extend(entries)
        self._trim()
        return entries

    async def hear(self, text: str) -> None:
        """A line the character overheard (a scene: the player talking to another character,
        another character speaking): a player-side entry, on disk when this returns."""
        entry = HistoryEntry("user", text)
        # Not trimmed here: a trim changes the prompt's beginning, and the character's own turn
        # end is where the session evaluates a changed prompt in the background (a trim made
        # now would be paid by its next answer). Its next turn's ``remember`` trims.
        self.history.append(entry)
        await self._store.append_history(self.player, self.character, [entry])

    async def persist(self, entries: list[HistoryEntry]) -> None:
        """Commit a turn's entries; returns once they are on disk (the session sends turn.end after)."""
        if entries:
            await self._store.append_history(self.player, self.character, entries)

    async def trim_heard(self, turn: TurnHandle, heard: float) -> None:
        """A late cancel: the player heard only ``heard`` seconds of a turn that already ended."""
        got = turn.delivered
        if not got.heard_marks or got.audio_seconds <= heard:
            return  # heard it all (or nothing to go by)
        last = self.history[-1] if self.history else None
        if last is None or last.role != "assistant":
            return
        text = got.heard_text(heard)
        self.history[-1] = HistoryEntry("assistant", text, interrupted=True)
        # Queued on the store's one thread after the turn's own append: it lands after it.
        await self._store.trim_last_reply(self.player, self.character, text)
        log.info("turn %s: the player heard %.1f of %.1f s; memory trimmed", turn.id, heard, got.audio_seconds)
