"""Helpers for the unit layer: a recorder for what a session sends, and waits on conditions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.outgoing import Outgoing, SessionMessage
from tests.doubles import ChatCall
from tests.harness import eventually

__all__ = ["eventually"]  # re-exported: the unit tests import their helpers from here

M = TypeVar("M", bound=Outgoing)

TIMEOUT = 15.0  # a safety net only: every wait here ends on a condition, long before this


class Sent:
    """The game's side of a ``Session``: every message its ``send`` callback got, in order."""

    def __init__(self) -> None:
        self.messages: list[Outgoing] = []
        self._changed = asyncio.Event()

    def __call__(self, message: Outgoing) -> None:
        self.messages.append(message)
        self._changed.set()

    async def until(self, pred: Callable[[list[Outgoing]], bool], timeout: float = TIMEOUT) -> None:
        """Wait until ``pred(messages)`` holds (checked after every message)."""

        async def watch() -> None:
            while not pred(self.messages):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(watch(), timeout)

    async def first(self, kind: type[M], turn: int | None = None, timeout: float = TIMEOUT) -> M:
        """Wait for the first message of type ``kind`` (of turn ``turn``, if given)."""
        await self.until(lambda ms: bool(self.of(kind, turn)), timeout)
        return self.of(kind, turn)[0]

    def of(self, kind: type[M], turn: int | None = None) -> list[M]:
        return [m for m in self.messages if isinstance(m, kind) and (turn is None or getattr(m, "turn", None) == turn)]

    def turn(self, turn_id: int | None) -> list[SessionMessage]:
        return [m for m in self.messages if isinstance(m, SessionMessage) and m.turn == turn_id and m.seq is not None]

    def types(self, turn_id: int | None = None) -> list[str]:
        return [m.TYPE for m in (self.turn(turn_id) if turn_id is not None else self.messages)]


def end_of(sent: Sent, turn_id: int) -> msg.TurnEnd:
    ends = sent.of(msg.TurnEnd, turn_id)
    assert len(ends) == 1, f"turn {turn_id} has {len(ends)} turn.end messages: {sent.types(turn_id)}"
    return ends[0]


async def finished(call: ChatCall, timeout: float = TIMEOUT) -> None:
    """Wait until the chat double's stream call is over (it runs on the LLM worker thread)."""
    assert await asyncio.to_thread(call.wait_finished, timeout), "the chat double's stream never ended"
