"""Fuzzing the wire: 20,800 hostile messages from four connections against a real engine.

Random bytes, mutated valid messages, wrong types, deep nesting, huge ints, oversize
messages and multipart messages, sent in bursts over a real loopback socket. Throughout:
the engine does not crash or hang, every reply is a typed message (an ``error`` has a code
from ``ErrorCode``, and never ``internal``: that is a bug's traceback), each message the
protocol layer refuses gets exactly its one error, and a real session on another connection
keeps talking (real embedded LLM) and the engine keeps answering pings.

Seeded: a failure names the connection, burst and message, and replays the same way. Bounded:
each burst waits, by condition, for the reply to a marker message sent after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from npc_engine.client import EngineClient
from npc_engine.protocol import outgoing
from npc_engine.protocol.errors import ErrorCode, ProtocolError
from npc_engine.protocol.incoming import INCOMING_TYPES, decode
from tests.harness import Running, engine_config, running_engine

SEED = 12
CONNECTIONS = 4
BURSTS = 26
BURST = 200  # messages per burst: 4 x 26 x 200 = 20,800
MAX_MESSAGE_BYTES = 64 * 1024
REPLY_TIMEOUT_S = 120.0  # per burst; only reached if the engine hangs
# Only the protocol layer sends these; any other message gets none of them. So each must come
# back exactly as often as decode() refuses a message with it. (invalid_field also comes from
# the engine, for a message that decodes: counted as "at least".)
DECODE_ONLY = {ErrorCode.BAD_MESSAGE, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNKNOWN_TYPE, ErrorCode.TOO_LARGE}
CODES = {c.value for c in ErrorCode}


def outgoing_types() -> set[str]:
    """Every ``type`` the engine may send: one per ``Outgoing`` subclass."""
    types: set[str] = set()
    todo: list[type[outgoing.Outgoing]] = [outgoing.Outgoing]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if "TYPE" in vars(cls):
            types.add(cls.TYPE)
    return types


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    cfg = engine_config(tmp_path_factory.mktemp("fuzz"), max_message_bytes=MAX_MESSAGE_BYTES)
    async with running_engine(cfg) as running:
        yield running


# --------------------------------------------------------------------------- generation

HUGE_INTS = (2**64 - 1, 2**63, -(2**63), 2**32, -1, 0)


class Fuzzer:
    """Makes one connection's messages: each is a list of frames (the last is the payload)."""

    def __init__(self, rng: random.Random, own_session: str, own_player: str) -> None:
        self.rng = rng
        self.own_session = own_session
        self.own_player = own_player

    def value(self, depth: int = 0) -> Any:
        """Any msgpack value: the wrong type for whatever field it lands in, mostly."""
        r = self.rng
        kind = r.randrange(12 if depth < 3 else 9)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.choice(HUGE_INTS)
        if kind == 3:
            return r.randint(-1000, 1000)
        if kind == 4:
            return r.choice([float("nan"), float("inf"), -float("inf"), -0.0, 1e308, r.uniform(-1e6, 1e6)])
        if kind == 5:
            return self.text()
        if kind == 6:
            return r.randbytes(r.randrange(0, 64))
        if kind == 7:
            return "x" * r.choice([0, 128, 129, 200, 2001, 5000])
        if kind == 8:
            return r.choice(sorted(INCOMING_TYPES))
        if kind == 9:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        if kind == 10:
            return {self.key(): self.value(depth + 1) for _ in range(r.randrange(4))}
        return {r.randint(-5, 5): self.value(depth + 1)}  # a map with a non-string key

    def key(self) -> str:
        return self.rng.choice(["v", "id", "type", "session", "player", "character", "text", "pcm", "name",
                                "data", "vars", "turn", "heard", "blob", "token", "t", "rate", "greet", "mode",
                                "audio", "channels", "format", "client", self.text()])

    def text(self) -> str:
        r = self.rng
        alphabet = "abcxyz-_ 0123456789éß中🙂\x00\n\ud7ff"
        return "".join(r.choice(alphabet) for _ in range(r.randrange(0, 40)))

    def session(self) -> str:
        """A session id: this connection's own open session, or one nobody opened."""
        r = self.rng
        return self.own_session if r.random() < 0.3 else r.choice(["nope", f"s{r.randrange(100)}", self.text() or "z"])

    def valid(self) -> dict[str, Any]:
        """A well-formed message of a random type. Never one that needs the LLM: text only goes
        to sessions nobody opened, and session.open only names characters that do not exist."""
        r = self.rng
        rid: Any = r.choice([None, r.randrange(10**6), f"r{r.randrange(10**6)}"])
        kind = r.choice(["hello", "ping", "session.open", "text", "audio", "audio.end", "event", "cancel",
                         "state.get", "state.save", "state.load", "session.close", "session.resume"])
        m: dict[str, Any] = {"v": 1, "type": kind, "id": rid}
        own = self.session()
        if kind == "hello":
            m["client"] = self.text()
        elif kind == "ping":
            m["t"] = r.uniform(0, 1e9)
        elif kind == "session.open":
            m |= {"character": r.choice(["dragon", "nobody", "Bram "]), "player": self.own_player,
                  "greet": r.random() < 0.5, "audio": False, "vars": {"gold": r.randrange(100)}}
        elif kind == "text":
            m |= {"session": r.choice(["nope", f"s{r.randrange(100)}"]), "text": self.text() or "hi"}
        elif kind == "audio":
            m |= {"session": own, "pcm": r.randbytes(r.choice([0, 1, 320, 640, 641]))}
        elif kind in ("audio.end", "state.save"):
            m["session"] = own
        elif kind == "event":
            m |= {"name": self.text() or "e", "data": {"item": self.text()},
                  "player": r.choice([self.own_player, None]), "session": r.choice([own, None])}
        elif kind == "cancel":
            m |= {"session": own, "turn": r.choice([None, 0, 1, 2**63]), "heard": r.choice([None, 0.5, 1e9])}
        elif kind == "state.get":
            m |= r.choice([{"session": own}, {"player": self.own_player}, {}])
        elif kind == "state.load":
            m |= {"session": own, "blob": r.randbytes(r.randrange(0, 200))}
        elif kind == "session.close":
            m["session"] = r.choice(["nope", f"s{r.randrange(100)}"])
        elif kind == "session.resume":
            m |= {"session": r.choice([own, "nope"]), "token": self.text() or "t"}
        return {k: v for k, v in m.items() if v is not None}

    def mutated(self) -> dict[Any, Any]:
        r = self.rng
        m: dict[Any, Any] = self.valid()
        for _ in range(r.randrange(1, 4)):
            op = r.randrange(5)
            if op == 0 and m:
                del m[r.choice(list(m))]
            elif op == 1:
                m[r.choice(list(m) or ["type"])] = self.value()
            elif op == 2:
                m[self.key()] = self.value()
            elif op == 3:
                m["type"] = r.choice([*INCOMING_TYPES, self.text(), "Ping", "ping ", ""])
            else:
                m["v"] = r.choice([0, 2, "1", 1.0, None, 2**64 - 1])
        return m

    def deep(self) -> bytes:
        """A message nested thousands deep, at the top or inside a field (hand-encoded: msgpack's
        packer refuses to nest that far; an unpacker must cope with it all the same)."""
        r = self.rng
        depth = r.choice([100, 600, 1100, 5000, 100_000])
        nest = (b"\x91" if r.random() < 0.5 else b"\x81\xa1k") * depth + b"\xc0"
        if r.random() < 0.3:
            return nest
        head = {"v": 1, "type": r.choice(["event", "session.open", "ping"]), "name": "deep", "character": "nobody"}
        field_name = r.choice(["data", "vars", "t", "id"])
        body = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in head.items())
        return bytes([0x80 | (len(head) + 1)]) + body + msgpack.packb(field_name) + nest

    def message(self) -> list[bytes]:
        r = self.rng
        kind = r.random()
        if kind < 0.10:
            payload = r.randbytes(r.randrange(0, 300))
        elif kind < 0.55:
            payload = pack(self.mutated())
        elif kind < 0.65:
            payload = pack(self.valid())
        elif kind < 0.72:
            payload = self.deep()
        elif kind < 0.77:  # over the message limit: a long audio frame, or junk
            size = MAX_MESSAGE_BYTES + r.randrange(1, 3 * MAX_MESSAGE_BYTES)
            payload = pack({"v": 1, "type": "audio", "session": self.session(), "pcm": b"\0" * size}) \
                if r.random() < 0.5 else r.randbytes(size)
        elif kind < 0.87:  # huge ints where small ones belong
            m = self.valid()
            for k in ("id", "turn", "rate", "channels", "t", "heard"):
                if r.random() < 0.4:
                    m[k] = r.choice(HUGE_INTS)
            payload = pack(m)
        else:  # truncated or bit-flipped valid msgpack
            raw = bytearray(pack(self.valid()))
            if r.random() < 0.5:
                raw = raw[: r.randrange(len(raw))]
            else:
                for _ in range(r.randrange(1, 4)):
                    raw[r.randrange(len(raw))] ^= 1 << r.randrange(8)
            payload = bytes(raw)
        if r.random() < 0.08:  # multipart: the engine reads the last frame
            return [r.choice([b"", r.randbytes(r.randrange(1, 20))]) for _ in range(r.randrange(1, 4))] + [payload]
        return [payload]


def pack(m: dict[Any, Any]) -> bytes:
    packed: bytes = msgpack.packb(m, use_bin_type=True)
    return packed


def refused(payload: bytes) -> ErrorCode | None:
    """The error the protocol layer answers ``payload`` with, or None if it decodes."""
    try:
        decode(payload, max_bytes=MAX_MESSAGE_BYTES)
    except ProtocolError as exc:
        return exc.code
    return None


# --------------------------------------------------------------------------- one connection


@dataclass
class Connection:
    """A raw DEALER socket (multipart and junk need one) and everything it received."""

    sock: zmq.asyncio.Socket
    replies: list[dict[str, Any]] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)  # of the error replies
    ids: set[object] = field(default_factory=set)  # the ids the replies echo
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        while True:
            payload = await self.sock.recv()
            reply = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            assert isinstance(reply, dict), f"a reply that is not a map: {payload[:80]!r}"
            self.replies.append(reply)
            if reply.get("type") == "error":
                self.codes[str(reply.get("code"))] += 1
            if isinstance(reply.get("id"), str | int):
                self.ids.add(reply["id"])
            self.arrived.set()

    async def until(self, done: Callable[[], bool], what: str) -> None:
        async def wait() -> None:
            while not done():
                self.arrived.clear()
                await self.arrived.wait()

        try:
            await asyncio.wait_for(wait(), REPLY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise AssertionError(f"no answer in {REPLY_TIMEOUT_S:.0f} s: {what}") from None


async def fuzz_connection(endpoint: str, k: int) -> int:
    """Open one real session, then send BURSTS bursts of hostile messages; returns how many."""
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    conn = Connection(sock)
    reader = asyncio.get_running_loop().create_task(conn.read())
    known_types = outgoing_types()
    own_session, own_player = f"fuzz-{k}", f"fuzz-player-{k}"
    expected: Counter[str] = Counter()
    sent = 0
    try:
        await sock.send(pack({"v": 1, "type": "session.open", "id": "open", "character": "bram",
                              "player": own_player, "session": own_session, "greet": False, "audio": False}))
        await conn.until(lambda: "open" in conn.ids, "session.open")
        opened = next(r for r in conn.replies if r.get("id") == "open")
        assert opened["type"] == "session.opened", opened
        fuzzer = Fuzzer(random.Random(SEED * 1000 + k), own_session, own_player)
        checked = 0
        for burst in range(BURSTS):
            for n in range(BURST):
                frames = fuzzer.message()
                code = refused(frames[-1])
                if code is not None:
                    expected[code.value] += 1
                try:
                    await sock.send_multipart(frames)
                except zmq.ZMQError as exc:  # our own socket: never expected
                    raise AssertionError(f"connection {k} burst {burst} message {n}: send failed: {exc}") from exc
                sent += 1
            # A marker the engine refuses with an error echoing its id, after the burst's replies.
            marker = f"burst-{k}-{burst}"
            await sock.send(pack({"v": 1, "type": "fuzz.marker", "id": marker}))
            expected[ErrorCode.UNKNOWN_TYPE.value] += 1
            await conn.until(
                lambda marker=marker: marker in conn.ids
                and all(conn.codes[c.value] >= expected[c.value] for c in DECODE_ONLY),
                f"connection {k} burst {burst}: the marker's reply, and at least {dict(expected)}",
            )
            for reply in conn.replies[checked:]:
                where = f"connection {k} burst {burst}: {reply}"
                assert reply.get("v") == 1 and reply.get("type") in known_types, where
                if reply["type"] == "error":
                    assert reply.get("code") in CODES and isinstance(reply.get("message"), str), where
                    assert reply["code"] != ErrorCode.INTERNAL.value, where
            checked = len(conn.replies)
        codes = conn.codes
        for c in DECODE_ONLY:
            assert codes[c.value] == expected[c.value], (k, c.value, codes, expected)
        assert codes[ErrorCode.INVALID_FIELD.value] >= expected[ErrorCode.INVALID_FIELD.value], (k, codes, expected)
        return sent
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        sock.close(linger=0)


# --------------------------------------------------------------------------- the test

LINES = ["Good morning! Any news from the road?", "What do you have to eat today?", "Is the inn busy tonight?"]


async def real_conversation(endpoint: str, fuzzing: asyncio.Event) -> tuple[int, int]:
    """A game on its own connection talks to Marta while the fuzzers run, and pings the engine
    over and over; returns its turns and the pongs it got while the fuzzing went on."""
    client = await EngineClient.connect(endpoint)

    async def ping_while_fuzzing() -> int:
        pongs = 0
        while fuzzing.is_set():
            pong = await client.request({"type": "ping", "t": 1.0}, timeout=REPLY_TIMEOUT_S)
            assert pong["type"] == "pong", pong
            pongs += 1
        return pongs

    pinger = asyncio.get_running_loop().create_task(ping_while_fuzzing())
    try:
        s = await client.open_session("marta", "fuzz-bystander", greet=False, audio=False)
        turns = 0
        while turns < 2 or (fuzzing.is_set() and turns < 30):
            msgs = await (await s.say(LINES[turns % len(LINES)], timeout=REPLY_TIMEOUT_S)).collect(
                timeout=REPLY_TIMEOUT_S)
            end = msgs[-1]
            assert end["type"] == "turn.end" and end["status"] in ("ok", "degraded"), end
            assert any(m["type"] == "reply.text" for m in msgs), msgs
            turns += 1
        return turns, await pinger
    finally:
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger
        await client.close()


@pytest.mark.slow
async def test_fuzzed_messages_get_typed_replies_and_the_engine_keeps_serving(engine: Running) -> None:
    fuzzing = asyncio.Event()
    fuzzing.set()
    bystander = asyncio.create_task(real_conversation(engine.endpoint, fuzzing))
    try:
        sent = await asyncio.gather(*(fuzz_connection(engine.endpoint, k) for k in range(CONNECTIONS)))
    except BaseException:
        bystander.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bystander
        raise
    finally:
        fuzzing.clear()
    turns, pongs = await bystander
    assert sum(sent) >= 20_000
    assert turns >= 2 and pongs >= 1
    # Still serving: a new game connects and gets its pong.
    client = await EngineClient.connect(engine.endpoint)
    try:
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    finally:
        await client.close()
