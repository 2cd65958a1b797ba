"""Delivery to a game that stops reading (docs/protocol.md, "Delivery").

A real sidecar with real espeak-ng audio, over real ZeroMQ sockets. The slow game is a raw
DEALER written against the wire protocol, with tiny receive buffers, that sends text turns
and pings and reads nothing; then it reads. It must find nothing lost silently: a
``slow_consumer`` error, one ``turn.end`` (last) for every ``turn.start``, a pong for every
ping. Meanwhile a second game on the same engine gets its turns, whole, and the engine never
holds more for the slow one than its byte bounds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from npc_engine.client import EngineClient
from npc_engine.protocol import outgoing as msg
from npc_engine.server.outbox import MAX_REPLY_BYTES, SNDBUF, SNDHWM, Outbox
from tests.harness import Running, engine_config, running_engine

MAX_OUTBOX = 256 << 10
# Before this change the engine let libzmq hold 10,000 messages per game, and the OS socket
# buffer another ~40,000 pongs' worth (measured, a game with tiny receive buffers); past
# that it dropped them. Enough pings to pass both by far: each pong is ~45 bytes, so they
# stay well under the engine's reply bound now.
PINGS = 70_000
SLOW_SESSIONS = 4  # each says one line (~170 KB of audio): together far over MAX_OUTBOX
SLOW_ID = b"slow-game"

Wire = dict[str, Any]


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    cfg = engine_config(tmp_path_factory.mktemp("delivery"), tts="espeak", max_outbox_bytes=MAX_OUTBOX)
    async with running_engine(cfg) as running:
        yield running


class RawGame:
    """A game that speaks the wire protocol on a plain DEALER, and can stop reading."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, SLOW_ID)
        # As little as possible held on the game's side: the engine must feel it stop reading.
        self.sock.setsockopt(zmq.RCVHWM, 1)
        self.sock.setsockopt(zmq.RCVBUF, 4096)
        self.sock.connect(endpoint)
        self.got: list[Wire] = []

    async def send(self, **fields: object) -> None:
        await self.sock.send(msgpack.packb({"v": 1, **fields}, use_bin_type=True))

    async def read_until(self, done: Callable[[Wire], bool], timeout: float = 120.0) -> None:
        """Read until ``done`` says so of a message (a safety timeout, not a timed assertion)."""

        async def read() -> None:
            while True:
                self.got.append(msgpack.unpackb(await self.sock.recv(), raw=False))
                if done(self.got[-1]):
                    return

        await asyncio.wait_for(read(), timeout)

    def close(self) -> None:
        self.sock.close(linger=0)


def check_turns(got: list[Wire]) -> dict[tuple[str, int], list[Wire]]:
    """Every turn well formed: seq 0, 1, 2, ... from turn.start to one turn.end, nothing after;
    turns of one session never interleave."""
    turns: dict[tuple[str, int], list[Wire]] = collections.defaultdict(list)
    running: dict[str, int] = {}
    for m in got:
        if m.get("turn") is None:
            continue
        sid, tid = m["session"], m["turn"]
        if m["type"] == "turn.start":
            assert sid not in running, f"turn {tid} of {sid} started before turn {running.get(sid)} ended"
            running[sid] = tid
        assert running.get(sid) == tid, f"{m['type']} of {sid}/{tid} outside its turn"
        if m["type"] == "turn.end":
            del running[sid]
        turns[sid, tid].append(m)
    for (sid, tid), msgs in turns.items():
        assert [m["seq"] for m in msgs] == list(range(len(msgs))), f"{sid}/{tid}: seq must have no gap"
        assert msgs[0]["type"] == "turn.start", f"{sid}/{tid} did not begin with turn.start"
        assert [m["type"] for m in msgs].count("turn.end") == 1, f"{sid}/{tid}: exactly one turn.end"
        assert msgs[-1]["type"] == "turn.end", f"{sid}/{tid}: turn.end must be last"
    return turns


async def turn_ended_in_engine(engine: Running, sid: str, request_id: str) -> None:
    """Until the engine has run the turn that answers ``request_id`` in session ``sid`` to its end
    (whatever became of its messages)."""
    for _ in range(100_000):  # bounded; each pass waits on the turn, or lets the engine read on
        session = engine.server.sessions.get(sid)
        assert session is not None
        last, current = session.last_turn, session.current
        if last is not None and last.request_id == request_id:
            return
        if current is not None and current.request_id == request_id:
            await current.wait()
        else:
            await asyncio.sleep(0.01)  # the engine has not read that text yet
    raise AssertionError(f"the turn for {request_id} never ended in the engine")


async def test_a_game_that_stops_reading_loses_nothing_silently_and_slows_nobody(engine: Running) -> None:
    outbox = engine.server.outbox
    assert outbox is not None
    slow = RawGame(engine.endpoint)
    fast = await EngineClient.connect(engine.endpoint)
    try:
        fast_session = await fast.open_session("aldric", "fast-player", greet=False)
        fast_turns: list[list[Wire]] = []

        async def fast_game_talks() -> None:
            turn = await fast_session.say("What news from the gate, captain?")
            fast_turns.append(await turn.collect())

        # The slow game opens sessions (each greets it), pings and talks, and reads nothing:
        # the audio of its turns queues behind the pongs.
        characters = itertools.cycle(["bram", "marta", "aldric"])
        sessions = [f"slow-{i}" for i in range(SLOW_SESSIONS)]
        for sid in sessions:
            await slow.send(type="session.open", id=f"open-{sid}", session=sid, character=next(characters),
                            player=f"{sid}-player", greet=True)
        await fast_game_talks()
        for n in range(PINGS):
            await slow.send(type="ping", id=n)
            if n == PINGS // 2:
                await fast_game_talks()  # the other game is served as usual meanwhile
        texts = {sid: f"say-{sid}" for sid in sessions}
        for sid, rid in texts.items():
            await slow.send(type="text", id=rid, session=sid, text="Tell me about this town and its people.")
        await fast_game_talks()
        for sid, rid in texts.items():
            await turn_ended_in_engine(engine, sid, rid)
        await fast_game_talks()

        # It reads again, until every ping is answered, every text it sent has had its turn and
        # every turn has ended; then one more ping, so that anything following would show.
        waiting_pongs = set(range(PINGS))
        waiting_texts = set(texts.values())
        running: set[tuple[str, int]] = set()
        told = False

        def everything_came(m: Wire) -> bool:
            nonlocal told
            if m["type"] == "turn.start":
                running.add((m["session"], m["turn"]))
                waiting_texts.discard(m.get("id"))
            elif m["type"] == "turn.end":
                running.discard((m["session"], m["turn"]))
            elif m["type"] == "pong":
                waiting_pongs.discard(m.get("id"))
            elif m["type"] == "error" and m.get("code") == "slow_consumer":
                told = True
            return told and not waiting_pongs and not waiting_texts and not running

        try:
            await slow.read_until(everything_came, timeout=90)
        except asyncio.TimeoutError:
            pytest.fail(
                f"after reading {len(slow.got)} messages: {len(waiting_pongs)} of {PINGS} pongs never came, "
                f"{len(waiting_texts)} of {len(texts)} texts never started a turn, {len(running)} turns never "
                f"ended, slow_consumer {'sent' if told else 'never sent'}"
            )
        await slow.send(type="ping", id="after")
        await slow.read_until(lambda m: m["type"] == "pong" and m.get("id") == "after")
        assert outbox.queued_bytes(SLOW_ID) == 0
    finally:
        slow.close()
        await fast.close()

    got = slow.got
    pongs = [m["id"] for m in got if m["type"] == "pong"]
    assert pongs == [*range(PINGS), "after"], "a pong for every ping, once, in order"
    notices = [m for m in got if m["type"] == "error" and m["code"] == "slow_consumer"]
    # One notice per time it fell behind. The engine sees "reads again" as the socket taking
    # messages; on a loaded machine OS buffers can open and fill again before this client
    # reads, which the engine rightly counts as a second episode.
    assert notices, "told that it was too slow"
    assert all("turn" in n["message"] for n in notices)
    turns = check_turns(got)
    ends = [msgs[-1] for msgs in turns.values()]
    cut = [e for e in ends if e["status"] == "cancelled"]
    assert cut and all(e["interrupted"] for e in cut), "the cut turns end cancelled and interrupted"

    assert outbox.slow_consumers == len(notices)
    # Bounded: never more stream than max_outbox_bytes waiting for it, replies under their own bound.
    assert outbox.peak_stream_bytes <= MAX_OUTBOX
    assert outbox.peak_reply_bytes <= MAX_REPLY_BYTES

    # The other game got whole turns, with their audio, all the while.
    for msgs in fast_turns:
        assert msgs[-1]["status"] in ("ok", "degraded") and not msgs[-1]["interrupted"]
        assert any(m["type"] == "reply.audio" for m in msgs)
    check_turns([m for msgs in fast_turns for m in msgs])


# --------------------------------------------------------------------------- the outbox alone
# The same bounds, on a real ROUTER/DEALER pair without an engine: a turn's messages as the
# session sends them, a game that has not read yet, then reads.


@contextlib.asynccontextmanager
async def router_and_stalled_game() -> AsyncIterator[tuple[zmq.asyncio.Socket, RawGame]]:
    router = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, SNDHWM)  # as the server sets it
    router.setsockopt(zmq.SNDBUF, SNDBUF)
    router.bind("tcp://127.0.0.1:*")
    game = RawGame(router.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        await game.send(type="hello")
        assert (await router.recv_multipart())[0] == SLOW_ID  # connected: the router can address it
        yield router, game
    finally:
        game.close()
        router.close(linger=0)


def fill_until_queued(outbox: Outbox, pings: itertools.count[int]) -> None:
    """Pongs until ZeroMQ and the OS hold all they will for a game that does not read."""
    for _ in range(1_000_000):
        if outbox.queued_bytes(SLOW_ID):
            return
        outbox.send(SLOW_ID, msg.Pong(id=next(pings), server_time=0.0))
    raise AssertionError("the transport never filled up")


def turn_messages(turn: int, audio_bytes: int) -> list[msg.SessionMessage]:
    """A turn as a session sends it: stamped with session, turn and seq."""
    body: list[msg.SessionMessage] = [
        msg.TurnStart(source="text", input="hi"),
        msg.ReplyText(delta="Hello there."),
        msg.ReplyAudio(chunk=0, pcm=bytes(audio_bytes), rate=24_000, start=0.0, duration=1.0, text="Hello there."),
        msg.StoryMessage(effect={"kind": "flag", "name": "met", "value": True}),
        msg.Cue(kind="gesture", name="nod", chunk=0, at=0.0),
        msg.ReplyAudio(chunk=1, pcm=bytes(audio_bytes), rate=24_000, start=1.0, duration=1.0, text="Bye."),
        msg.TurnEnd(status="ok", interrupted=False, text="Hello there. Bye.", timings={}, tokens=5, audio_seconds=2.0),
    ]
    return [dataclasses.replace(m, session="s1", turn=turn, seq=i) for i, m in enumerate(body)]


async def test_a_cut_turn_keeps_its_bounds_renumbered_and_ends_cancelled() -> None:
    slow_calls: list[bytes] = []
    async with router_and_stalled_game() as (router, game):
        outbox = Outbox(router, _peer_gone_ignored, max_bytes=64 << 10, on_slow=slow_calls.append)
        pings = itertools.count()
        fill_until_queued(outbox, pings)
        first, second = turn_messages(1, 40_000), turn_messages(2, 40_000)
        for m in first[:6]:  # the second audio chunk passes max_bytes: the turn is cut
            outbox.send(SLOW_ID, m)
        assert slow_calls == [SLOW_ID], "the game's turns are cancelled at once"
        assert outbox.peak_stream_bytes <= 64 << 10
        outbox.send(SLOW_ID, msg.Pong(id="mid", server_time=0.0))
        for m in [first[6], *second]:  # its end, then a turn that starts while the game still does not read
            outbox.send(SLOW_ID, m)
        assert outbox.peak_stream_bytes <= 64 << 10
        sent = next(pings)

        sender = asyncio.create_task(outbox.run())
        try:
            await game.read_until(lambda m: m["type"] == "error")
            outbox.send(SLOW_ID, msg.Pong(id="end", server_time=0.0))  # anything more would come before it
            await game.read_until(lambda m: m.get("id") == "end")
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    got = game.got
    assert [m["id"] for m in got if m["type"] == "pong"] == [*range(sent), "mid", "end"]
    turns = check_turns(got)
    assert [m["type"] for m in turns["s1", 1]] == ["turn.start", "story", "turn.end"]
    assert [m["type"] for m in turns["s1", 2]] == ["turn.start", "story", "turn.end"]
    for msgs in turns.values():
        assert msgs[-1]["status"] == "cancelled" and msgs[-1]["interrupted"] is True
    notices = [m for m in got if m["type"] == "error"]
    assert [n["code"] for n in notices] == ["slow_consumer"]
    assert "2 turn(s) were cut" in notices[0]["message"]
    assert outbox.slow_consumers == 1 and outbox.queued_bytes(SLOW_ID) == 0


async def test_a_game_that_floods_requests_without_reading_is_not_read_until_it_reads() -> None:
    max_reply = 64 << 10
    async with router_and_stalled_game() as (router, game):
        outbox = Outbox(router, _peer_gone_ignored, max_bytes=1 << 20, max_reply_bytes=max_reply)
        pings = itertools.count()
        fill_until_queued(outbox, pings)
        for _ in range(1_000_000):  # each request the server admits gets its pong
            if not outbox.admit(SLOW_ID):
                break
            outbox.send(SLOW_ID, msg.Pong(id=next(pings), server_time=0.0))
        assert not outbox.admit(SLOW_ID) and not outbox.admit(SLOW_ID)  # two more, refused
        assert outbox.peak_reply_bytes <= max_reply + 100, "replies bounded (one pong over, at most)"
        sent = next(pings)

        sender = asyncio.create_task(outbox.run())
        try:
            await game.read_until(lambda m: m["type"] == "error")
            assert outbox.admit(SLOW_ID), "read again once the game has read"
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    assert [m["id"] for m in game.got if m["type"] == "pong"] == list(range(sent)), "every admitted request answered"
    assert game.got[-1]["code"] == "slow_consumer"
    assert "3 of your requests were not read" in game.got[-1]["message"]


async def test_what_waited_for_a_game_that_went_away_is_freed() -> None:
    gone: list[bytes] = []
    told = asyncio.Event()

    async def peer_gone(peer: bytes) -> None:
        gone.append(peer)
        told.set()

    async with router_and_stalled_game() as (router, game):
        outbox = Outbox(router, peer_gone, max_bytes=1 << 20)
        fill_until_queued(outbox, itertools.count())
        sender = asyncio.create_task(outbox.run())
        try:
            game.close()  # the game vanishes without reading
            await asyncio.wait_for(told.wait(), 60)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    assert gone == [SLOW_ID], "the server hears of it (its turns are cancelled)"
    assert outbox.queued_bytes(SLOW_ID) == 0, "and nothing is kept for it"


async def _peer_gone_ignored(peer: bytes) -> None:
    """The Outbox's "a connection vanished" callback, for tests where none does."""
