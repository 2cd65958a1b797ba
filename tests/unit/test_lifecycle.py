"""Lifecycle and limits of model work, on the unit layer: warm-ups of closed sessions, the
first-token clock, the per-game limit on turns waiting for the model, the bounded player cache.

The socket-level side of the same work (expiry, vanished games, per-client session limit,
the real model under a burst of sessions) is in ``tests/test_limits.py``.
"""

from __future__ import annotations

import asyncio
import functools
import threading

from npc_engine.engine import Engine
from npc_engine.players import PlayerStates
from npc_engine.protocol import outgoing as msg
from npc_engine.server.registry import SessionRegistry
from npc_engine.session.session import Session
from npc_engine.story import StoryState
from tests.doubles import GatedWarmChat, ScriptedChat
from tests.unit.conftest import DEFAULT_REPLY, NEUTRAL, MakeEngine, MakeSession
from tests.unit.support import TIMEOUT, Sent, end_of, eventually


def fallback_texts(session: Session) -> set[str]:
    return {line.text for line in session.character.fallbacks}


def llm_reasons(end: msg.TurnEnd) -> list[str]:
    return [d["reason"] for d in end.degraded or [] if d["stage"] == "llm"]


# --------------------------------------------------------------------------- warm-ups


async def test_a_session_closed_at_once_never_warms_the_model(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    chat = ScriptedChat([DEFAULT_REPLY])
    engine = make_engine(chat)
    closed = []
    for _ in range(5):
        session = await make_session(engine, Sent(), audio=False)
        await session.close()
        closed.append(session.id)
    # Anything still queued on the LLM thread has run once this has (one thread per slot: fill them all).
    await asyncio.gather(*(engine.llm_worker.run(lambda: None) for _ in range(engine.cfg.llm_slots)))
    warmed = [affinity for _, affinity in chat.warm_ups]
    assert not set(warmed) & set(closed), f"warm-ups of closed sessions reached the model: {warmed}"


async def test_closing_does_not_wait_for_a_warm_up_on_the_model_and_the_engine_does_before_unloading(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    # Behind the voice (nice 10), a warm-up on the model took 22 s on a busy machine, and the
    # demo's quest log, which closes a silent session it opened to ask, timed out waiting.
    chat = GatedWarmChat([DEFAULT_REPLY], gated={"s1"})
    engine = make_engine(chat)
    session = await make_session(engine, Sent(), audio=False)
    await eventually(chat.entered.is_set, what="the open's warm-up on the model")
    await asyncio.wait_for(session.close(), TIMEOUT)  # returns with the warm-up still on the model
    assert not chat.let_go.is_set() and len(engine.lingering) == 1
    # Its KV cache is handed on (ChatModel.release) only once nothing of it runs there.
    assert chat.released == []
    closing = asyncio.ensure_future(engine.close())
    await eventually(lambda: engine.closed, what="the engine's close to begin")
    # Only the test's release lets the warm-up end: close cannot be done whatever the time.
    assert not closing.done() and not chat.closed.is_set(), "the model unloaded under a running warm-up"
    chat.let_go.set()
    await asyncio.wait_for(closing, TIMEOUT)
    assert chat.closed.is_set() and ("warm-up done", "s1") in chat.order and len(engine.lingering) == 0
    assert chat.released == ["s1"]


async def test_a_closed_sessions_cache_is_handed_on(make_engine: MakeEngine, make_session: MakeSession) -> None:
    chat = ScriptedChat([DEFAULT_REPLY])
    engine = make_engine(chat)
    session = await make_session(engine, Sent(), audio=False)
    await eventually(lambda: not session.warming, what="the open's warm-up")
    assert chat.released == []
    await session.close()
    assert chat.released == [session.affinity]


async def test_a_burst_of_opening_sessions_queues_one_warm_up_at_a_time(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    chat = ScriptedChat([DEFAULT_REPLY])
    engine = make_engine(chat)
    release = threading.Event()
    # The LLM threads are busy (a long model call of someone else's) while ten sessions open.
    blockers = [asyncio.ensure_future(engine.llm_worker.run(release.wait, TIMEOUT)) for _ in range(engine.cfg.llm_slots)]
    try:
        sessions = [await make_session(engine, Sent(), audio=False) for _ in range(10)]
        await asyncio.sleep(0)  # let every warm-up task reach its queue
        queued = engine.llm_worker.queued
        assert queued <= 1, f"{queued} warm-ups queued on the LLM threads ahead of any turn"
    finally:
        release.set()
        await asyncio.gather(*blockers)
    await eventually(lambda: not any(s.warming for s in sessions), what="every open session's warm-up to end")
    assert [s.warm_ups for s in sessions] == [1] * len(sessions), "every open session warmed up"
    assert {a for _, a in chat.warm_ups} == {s.id for s in sessions}


# --------------------------------------------------------------------------- the first-token clock


async def test_the_budget_counts_waiting_for_a_model_thread_and_the_abandoned_call_never_runs(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    # One LLM thread, held by someone else's long call: the turn can only wait for it.
    chat = ScriptedChat([DEFAULT_REPLY])
    engine = make_engine(chat, llm_slots=1, budget_llm_first_token_ms=300, llm_timeout_ms=60_000)
    sent = Sent()
    session = await make_session(engine, sent, audio=False)
    await eventually(lambda: len(chat.warm_ups) == 1, what="the session's warm-up")
    release = threading.Event()
    blocker = asyncio.ensure_future(engine.llm_worker.run(release.wait, TIMEOUT))
    try:
        turn = session.start_turn("text", NEUTRAL)
        # The player is not kept waiting for the thread: a fallback line at the budget.
        await asyncio.wait_for(turn.wait(), TIMEOUT)
    finally:
        release.set()
        await blocker
    end = end_of(sent, 1)
    assert end.status == "degraded" and end.text in fallback_texts(session)
    assert any("300 ms budget" in r for r in llm_reasons(end)), end.degraded
    # Once the thread is free, the abandoned request is skipped: the model never saw it.
    await engine.llm_worker.run(lambda: None)
    assert chat.calls == []


async def test_the_budget_counts_from_the_end_of_the_players_turn(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    from npc_engine.metrics import TurnClock

    chat = ScriptedChat([DEFAULT_REPLY], ttft_s=0.05)
    engine = make_engine(chat, budget_llm_first_token_ms=500, llm_timeout_ms=60_000)
    sent = Sent()
    session = await make_session(engine, sent, audio=False)
    # The player finished speaking a second ago (a voice turn's clock starts at that decision).
    clock = TurnClock()
    clock.t0 -= 1.0
    turn = session.start_turn("voice", NEUTRAL, clock=clock)
    await asyncio.wait_for(turn.wait(), TIMEOUT)
    end = end_of(sent, 1)
    assert end.text in fallback_texts(session) and any("500 ms budget" in r for r in llm_reasons(end))
    await engine.llm_worker.run(lambda: None)
    assert chat.calls == [], "a turn already past its budget does not queue model work"


# --------------------------------------------------------------------------- turns waiting for the model


def _session(engine: Engine, registry: SessionRegistry, sid: str, peer: bytes, sent: Sent, limit: int) -> Session:
    session = Session(
        engine, sid, engine.characters["bram"], f"player-{sid}", sent, audio=False,
        model_admission=functools.partial(registry.model_admission, sid, limit),
    )
    registry.add(session, peer)
    return session


async def test_a_game_past_its_queued_turns_limit_gets_a_fallback_line_at_once(make_engine: MakeEngine) -> None:
    chat = ScriptedChat(["never said"], never_first_token=True)
    engine = make_engine(chat, llm_slots=2, budget_llm_first_token_ms=60_000, llm_timeout_ms=60_000)
    registry = SessionRegistry()
    game, other = b"game", b"other-game"
    sent = {sid: Sent() for sid in ("a1", "a2", "b1")}
    sessions = {
        "a1": _session(engine, registry, "a1", game, sent["a1"], limit=1),
        "a2": _session(engine, registry, "a2", game, sent["a2"], limit=1),
        "b1": _session(engine, registry, "b1", other, sent["b1"], limit=1),
    }
    try:
        for s in sessions.values():
            await s.open({})
        waiting = sessions["a1"].start_turn("text", NEUTRAL)
        await eventually(lambda: sessions["a1"].waiting_for_model == 1, what="the first turn waiting for the model")
        # Same game, second session: over its limit of 1, so a fallback line now, no model work.
        over = sessions["a2"].start_turn("text", NEUTRAL)
        await asyncio.wait_for(over.wait(), TIMEOUT)
        end = end_of(sent["a2"], 1)
        assert end.status == "degraded" and end.text in fallback_texts(sessions["a2"]) and end.tokens == 0
        assert any("waiting for the model" in r for r in llm_reasons(end)), end.degraded
        assert [m.delta for m in sent["a2"].of(msg.ReplyText)] == [end.text]
        # Another game is not limited by this one's queue.
        sessions["b1"].start_turn("text", NEUTRAL)
        await eventually(lambda: sessions["b1"].waiting_for_model == 1, what="the other game's turn queued for the model")
        assert len(chat.calls) <= 2 and all(c.affinity in ("a1", "b1") for c in chat.calls)
        # Once the first turn ends, the game may queue again.
        waiting.cancel()
        await waiting.wait()
        assert sessions["a1"].waiting_for_model == 0
        assert registry.model_admission("a2", 1) is None
    finally:
        for s in sessions.values():
            await s.close()


# --------------------------------------------------------------------------- the player cache


async def test_player_states_are_bounded_and_never_drop_a_player_in_use() -> None:
    states = PlayerStates(capacity=3)
    held = StoryState()
    states.hold("held")
    states["held"] = held
    for i in range(10):
        states[f"p{i}"] = StoryState()
    assert len(states) == 3 and "held" in states, "the oldest idle players went, not the held one"
    assert states.get("held") is held
    async with states.lock("locked"):
        states["locked"] = StoryState()
        for i in range(10, 20):
            states[f"p{i}"] = StoryState()
        assert "locked" in states, "a player someone is changing stays"
        assert states.locks == 1
    assert states.locks == 0, "an unused lock is dropped"
    states.release("held")
    for i in range(20, 30):
        states[f"p{i}"] = StoryState()
    assert len(states) == 3 and "held" not in states and "locked" not in states


async def test_two_users_of_a_player_lock_share_one_lock(make_engine: MakeEngine) -> None:
    engine = make_engine(ScriptedChat([DEFAULT_REPLY]))
    order: list[str] = []
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def first() -> None:
        async with engine.state_lock("p"):
            order.append("first in")
            inside.set()
            await leave.wait()
            order.append("first out")

    async def second() -> None:
        await inside.wait()
        async with engine.state_lock("p"):
            order.append("second in")

    tasks = [asyncio.ensure_future(first()), asyncio.ensure_future(second())]
    await inside.wait()
    await asyncio.sleep(0)
    leave.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "first out", "second in"]
    assert engine.story_states.locks == 0
