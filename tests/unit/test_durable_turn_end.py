"""``turn.end`` goes out only once the turn's history is committed, and the session's
bookkeeping around that commit keeps its order: a turn that cuts in still ends second, and a
cancel with ``heard`` that lands during the commit still trims what is remembered."""

from __future__ import annotations

import asyncio

import pytest

from npc_engine.protocol import outgoing as msg
from npc_engine.store import HistoryEntry
from tests.doubles import ScriptedChat
from tests.unit.conftest import DEFAULT_REPLY, NEUTRAL, PLAYER, MakeRig, Rig
from tests.unit.support import TIMEOUT, end_of

# What SilenceSynth (0.2 s a word) makes of DEFAULT_REPLY's first chunk, "Hm, the forge is cold".
HEARD_HALF_SECOND = "Hm, the forge"


class GatedAppend:
    """Test double around the real store's ``append_history``: each commit waits for ``release``."""

    def __init__(self, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
        self._real = rig.engine.store.append_history
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        monkeypatch.setattr(rig.engine.store, "append_history", self)

    async def __call__(self, player: str, character: str, entries: list[HistoryEntry]) -> None:
        self.started.set()
        await self.release.wait()
        await self._real(player, character, entries)

    async def committing(self) -> None:
        await asyncio.wait_for(self.started.wait(), TIMEOUT)


async def test_turn_end_waits_for_the_history_commit(make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]))
    gate = GatedAppend(rig, monkeypatch)
    turn = rig.session.start_turn("text", NEUTRAL)
    await gate.committing()
    assert rig.sent.of(msg.TurnEnd) == [], "turn.end went out before the turn's history was committed"
    assert await rig.engine.store.load_history(PLAYER, "bram") == []
    gate.release.set()
    await turn.wait()
    end = end_of(rig.sent, 1)
    stored = await rig.engine.store.load_history(PLAYER, "bram")
    assert stored == [HistoryEntry("user", NEUTRAL), HistoryEntry("assistant", DEFAULT_REPLY)]
    assert (end.status, end.text) == ("ok", DEFAULT_REPLY)
    assert "total" in end.timings


async def test_a_line_during_the_commit_starts_its_turn_after_turn_end(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY, "Off with you."]))
    gate = GatedAppend(rig, monkeypatch)
    first = rig.session.start_turn("text", NEUTRAL)
    await gate.committing()
    second = rig.session.start_turn("text", "Where is the mill?")
    gate.release.set()
    await second.wait()
    assert first.done
    end = end_of(rig.sent, 1)
    msgs = rig.sent.messages
    assert msgs.index(end) < msgs.index(rig.sent.of(msg.TurnStart, 2)[0])
    # The reply had been delivered whole: the cut that came during the commit stopped nothing.
    assert (end.status, end.interrupted, end.text) == ("ok", False, DEFAULT_REPLY)
    assert rig.session.memory.history[:2] == [HistoryEntry("user", NEUTRAL), HistoryEntry("assistant", DEFAULT_REPLY)]


async def test_a_cancel_with_heard_during_the_commit_trims_the_reply(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]))
    gate = GatedAppend(rig, monkeypatch)
    turn = rig.session.start_turn("text", NEUTRAL)
    await gate.committing()
    rig.session.cancel(turn_id=1, heard=0.5)  # the game cut the line as turn.end was on its way
    gate.release.set()
    await turn.wait()
    trimmed = HistoryEntry("assistant", HEARD_HALF_SECOND, interrupted=True)
    assert rig.session.memory.history[-1] == trimmed
    assert (await rig.engine.store.load_history(PLAYER, "bram"))[-1] == trimmed
    end = end_of(rig.sent, 1)
    assert (end.status, end.interrupted, end.text) == ("ok", False, HEARD_HALF_SECOND)


async def test_a_failed_commit_still_ends_the_turn_and_says_so(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig(ScriptedChat([DEFAULT_REPLY]))

    async def disk_full(player: str, character: str, entries: list[HistoryEntry]) -> None:  # a failing store
        raise OSError("database or disk is full")

    monkeypatch.setattr(rig.engine.store, "append_history", disk_full)
    await rig.session.start_turn("text", NEUTRAL).wait()
    end = end_of(rig.sent, 1)
    assert end.status == "error"
    errors = rig.sent.of(msg.Error, 1)
    assert len(errors) == 1 and errors[0].code == "internal" and "could not be saved" in errors[0].message
