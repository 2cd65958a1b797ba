"""Delivery: every engine message goes out through here, per game connection, in order, within
a memory bound per connection.

Each connection (a DEALER identity) has its own FIFO queue. A message goes straight to the
socket when that connection's queue is empty; otherwise it waits in the queue, and one sender
task hands queued messages to ZeroMQ without ever blocking: a send that would block
(``EAGAIN`` under ``ROUTER_MANDATORY``) leaves that connection's queue as it is and is tried
again shortly, while every other connection goes on. So one game that stops reading never
delays another, and nothing is ever dropped silently.

What a game that stops reading costs the engine is bounded in bytes, not messages (a message
may be a 5 s audio chunk or a 40-byte pong):

- *Stream* messages (``reply.text``, ``reply.audio``, ``cue``, partial ``transcript``) may wait
  up to ``max_outbox_bytes`` per connection. Past that the connection is a *slow consumer*:
  its queued stream is thrown away, every turn of it is cut (``TurnHandle.cancel`` through
  ``on_slow``: the model and the voice stop, nobody is listening), and the rest of those
  turns' stream is dropped as it comes.
- *Replies* and the bounds of turns (``pong``, ``error``, ``*.ok``/``opened``/``closed``/
  ``saved``/``loaded``, ``state``, ``turn.start``, ``story``, ``turn.end``) are never dropped.
  They have their own bound, ``max_reply_bytes``: a game only gets past it by sending requests
  and never reading the replies (a ping flood). It is then a slow consumer too, and its
  requests are not read (``admit`` says no) until it reads again.

A cut turn stays well formed on the wire: what of it is still queued or still to come is
renumbered so ``seq`` has no gap, and its ``turn.end`` (exactly one, last) says ``cancelled``
and ``interrupted``. Once the game has read its backlog (below half of both bounds), it
gets one ``slow_consumer`` error that says what was cut. docs/protocol.md, "Delivery".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from npc_engine import prom
from npc_engine.protocol import ErrorCode, encode
from npc_engine.protocol import outgoing as msg

log = logging.getLogger(__name__)

PeerGone = Callable[[bytes], Awaitable[None]]
SlowPeer = Callable[[bytes], None]
TurnKey = tuple[str, int]  # (session, turn)

# Messages libzmq itself may hold per connection, on top of what is counted here. Small, so
# the byte bound is close to the truth (libzmq's own bound counts messages: 10,000 audio
# chunks would be gigabytes), yet enough that a game that reads keeps the pipe full.
SNDHWM = 16
# The OS send buffer per connection (Linux doubles it), fixed rather than auto-tuned up to
# several MB: still far more than a game on loopback or a LAN needs to keep audio flowing.
SNDBUF = 256 << 10
# Replies and turn bounds waiting for one connection: about 80,000 pongs.
MAX_REPLY_BYTES = 4 << 20
# A connection whose send would block is tried again after this, doubling up to the max.
RETRY_FIRST_S = 0.001
RETRY_MAX_S = 0.05
# Messages handed to one connection before the sender lets the others (and the loop) run.
BATCH = 64


def droppable(message: msg.Outgoing) -> bool:
    """What a slow consumer loses: the stream of a turn, never a reply or a turn's bounds."""
    return isinstance(message, msg.ReplyText | msg.ReplyAudio | msg.Cue) or (
        isinstance(message, msg.Transcript) and not message.final
    )


def turn_key(message: msg.Outgoing) -> TurnKey | None:
    if isinstance(message, msg.SessionMessage) and message.session is not None and message.turn is not None:
        return message.session, message.turn
    return None


def cut_version(message: msg.SessionMessage, seq: int) -> msg.SessionMessage:
    """``message`` of a cut turn: renumbered after the dropped ones; its end says it was cut."""
    if isinstance(message, msg.TurnEnd):
        status: msg.TurnStatus = "error" if message.status == "error" else "cancelled"
        return dataclasses.replace(message, seq=seq, status=status, interrupted=True)
    return dataclasses.replace(message, seq=seq)


@dataclass(slots=True)
class _Entry:
    payload: bytes
    stream: bool  # droppable: counted against max_outbox_bytes
    key: TurnKey | None
    seq: int | None
    # Kept only for what may be renumbered (a turn's start, story, errors and end: small).
    # Everything else is held once, as bytes: a queued audio chunk costs its size, not twice.
    message: msg.SessionMessage | None


@dataclass(slots=True)
class _Turn:
    """A turn whose ``turn.end`` has not been queued yet."""

    peer: bytes
    next_seq: int  # the seq its next message goes out with
    cut: bool = False


@dataclass(slots=True)
class _Episode:
    """A connection that stopped reading: from the overflow until it has read its backlog."""

    turns_cut: set[TurnKey] = field(default_factory=set)
    dropped_messages: int = 0
    ignored_requests: int = 0


@dataclass(slots=True)
class _Peer:
    queue: collections.deque[_Entry] = field(default_factory=collections.deque)
    stream_bytes: int = 0
    reply_bytes: int = 0
    retry_at: float = 0.0  # loop time before which a send would block again; 0: not blocked
    backoff: float = RETRY_FIRST_S
    slow: _Episode | None = None

    @property
    def queued_bytes(self) -> int:
        return self.stream_bytes + self.reply_bytes


class Outbox:
    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        on_peer_gone: PeerGone,
        *,
        max_bytes: int,
        on_slow: SlowPeer | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self._sock = sock
        self._on_peer_gone = on_peer_gone
        self._on_slow = on_slow
        self.max_bytes = max_bytes
        self.max_reply_bytes = max_reply_bytes
        self._peers: dict[bytes, _Peer] = {}
        self._turns: dict[TurnKey, _Turn] = {}
        self._gone: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # What a test (or an operator) can read: the most ever queued for one connection,
        # and how many times a connection was found not reading.
        self.peak_stream_bytes = 0
        self.peak_reply_bytes = 0
        self.slow_consumers = 0

    # ------------------------------------------------------------------ producers

    def send(self, peer: bytes, message: msg.Outgoing) -> None:
        """Queue ``message`` for ``peer`` (or hand it to the socket at once); never blocks."""
        if isinstance(message, msg.Error):
            prom.error_sent(message.code)
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer()
        stream = droppable(message)
        key = turn_key(message)
        out: msg.Outgoing | None = message
        newly_cut = False
        if key is not None and isinstance(message, msg.SessionMessage):
            turn = self._turns.get(key)
            if turn is None:
                turn = self._turns[key] = _Turn(peer, message.seq or 0)
            turn.peer = peer
            if p.slow is not None and not turn.cut:
                # A turn still running (or just started) for a game we are cutting off.
                turn.cut = newly_cut = True
                p.slow.turns_cut.add(key)
            if turn.cut and stream:
                self._dropped(p)
                out = None
            elif turn.cut:
                out = message = cut_version(message, turn.next_seq)
            if out is not None:
                turn.next_seq = (message.seq or 0) + 1
            if isinstance(message, msg.TurnEnd):
                del self._turns[key]
        elif stream and p.slow is not None:
            self._dropped(p)
            out = None
        if out is not None:
            self._put(peer, p, out, stream, key)
        if newly_cut and self._on_slow is not None:
            self._on_slow(peer)
        if not p.queue and p.slow is None and self._peers.get(peer) is p:
            del self._peers[peer]

    def admit(self, peer: bytes) -> bool:
        """Whether to read a request from ``peer``: not while the replies it has not read are
        over their bound (it would only add one more). A refused request is counted, for the
        ``slow_consumer`` error."""
        p = self._peers.get(peer)
        if p is None or p.reply_bytes <= self.max_reply_bytes:
            return True
        if p.slow is not None:
            p.slow.ignored_requests += 1
        return False

    def queued_bytes(self, peer: bytes) -> int:
        p = self._peers.get(peer)
        return p.queued_bytes if p is not None else 0

    def _put(self, peer: bytes, p: _Peer, message: msg.Outgoing, stream: bool, key: TurnKey | None) -> None:
        payload = encode(message)
        if not p.queue and not p.retry_at:
            # Nothing of this connection is waiting: straight to the socket (order holds).
            sent = self._try_send(peer, p, payload)
            if sent is not None:
                if sent:
                    self._sent(peer, p)
                return
        keep = message if key is not None and not stream and isinstance(message, msg.SessionMessage) else None
        seq = message.seq if isinstance(message, msg.SessionMessage) else None
        # The sender must hear of a queue that was empty (it may be waiting with no deadline),
        # and of every message for a connection not blocked; a blocked one has its retry time.
        wake = not p.queue or not p.retry_at
        p.queue.append(_Entry(payload, stream, key, seq, keep))
        if stream:
            p.stream_bytes += len(payload)
        else:
            p.reply_bytes += len(payload)
        if p.stream_bytes > self.max_bytes:
            self._overflow(peer, p, f"over {self.max_bytes} bytes of audio and text waiting")
        elif p.reply_bytes > self.max_reply_bytes and p.slow is None:
            self._overflow(peer, p, f"over {self.max_reply_bytes} bytes of replies waiting")
        self.peak_stream_bytes = max(self.peak_stream_bytes, p.stream_bytes)
        self.peak_reply_bytes = max(self.peak_reply_bytes, p.reply_bytes)
        self._idle.clear()
        if wake:
            self._wake.set()

    # ------------------------------------------------------------------ a slow consumer

    def _overflow(self, peer: bytes, p: _Peer, why: str) -> None:
        """``peer`` stopped reading: drop its queued stream, cut every turn of it."""
        if p.slow is None:
            p.slow = _Episode()
            self.slow_consumers += 1
            log.warning("connection %s is not reading (%s): cutting its turns", peer.hex()[:8], why)
        episode = p.slow
        cut = {e.key for e in p.queue if e.stream and e.key is not None}
        cut.update(k for k, t in self._turns.items() if t.peer == peer)
        episode.turns_cut |= cut
        # Nothing queued has reached the wire: a cut turn goes on from its first queued seq.
        next_seq: dict[TurnKey, int] = {}
        for e in p.queue:
            if e.key is not None and e.key in cut and e.seq is not None:
                next_seq.setdefault(e.key, e.seq)
        kept: collections.deque[_Entry] = collections.deque()
        for e in p.queue:
            if e.stream:
                self._dropped(p)
                continue
            if e.key is not None and e.key in cut and e.message is not None:
                e.seq = next_seq[e.key]
                next_seq[e.key] = e.seq + 1
                e.message = cut_version(e.message, e.seq)
                e.payload = encode(e.message)
            kept.append(e)
        for key in cut:
            turn = self._turns.get(key)
            if turn is not None:
                turn.cut = True
                turn.next_seq = next_seq.get(key, turn.next_seq)
        p.queue = kept
        p.stream_bytes = 0
        p.reply_bytes = sum(len(e.payload) for e in kept)
        if self._on_slow is not None:
            self._on_slow(peer)

    def _dropped(self, p: _Peer) -> None:
        if p.slow is not None:
            p.slow.dropped_messages += 1

    def _sent(self, peer: bytes, p: _Peer) -> None:
        """After a message reached the socket: a slow consumer that has read its backlog is
        told, once, what it missed."""
        episode = p.slow
        if episode is None or p.stream_bytes > self.max_bytes // 2 or p.reply_bytes > self.max_reply_bytes // 2:
            return
        p.slow = None
        what = f"{len(episode.turns_cut)} turn(s) were cut (their turn.end says cancelled)"
        if episode.dropped_messages:
            what += f" and {episode.dropped_messages} audio, text and cue messages dropped"
        if episode.ignored_requests:
            what += f"; {episode.ignored_requests} of your requests were not read"
        notice = msg.Error(
            code=ErrorCode.SLOW_CONSUMER.value,
            message=f"this connection stopped reading and its queue passed its limit: {what}. "
            "Read the socket on a thread of its own, all the time.",
        )
        prom.error_sent(notice.code)
        self._put(peer, p, notice, stream=False, key=None)

    # ------------------------------------------------------------------ the socket

    def _try_send(self, peer: bytes, p: _Peer, payload: bytes) -> bool | None:
        """True: handed to ZeroMQ. None: it would block (retry later). False: the message is
        gone (the connection vanished, or libzmq refused it for good)."""
        # Through the asyncio socket with NOBLOCK: the future is done at once, and pyzmq keeps
        # the receive side's edge-triggered wake-ups straight (a raw shadow send would not).
        future = self._sock.send_multipart([peer, payload], flags=zmq.NOBLOCK)
        assert isinstance(future, asyncio.Future) and future.done(), "the outbox is the socket's only sender"
        exc = future.exception()
        if exc is None:
            p.retry_at = 0.0
            p.backoff = RETRY_FIRST_S
            return True
        if isinstance(exc, zmq.Again):
            p.retry_at = asyncio.get_running_loop().time() + p.backoff
            p.backoff = min(p.backoff * 2, RETRY_MAX_S)
            return None
        if isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EHOSTUNREACH:
            self._forget(peer)
        else:
            log.error("send to %s failed: %s", peer.hex()[:8], exc)
        return False

    def _forget(self, peer: bytes) -> None:
        """The connection is gone: what waited for it goes (the registry cancels its turns)."""
        self._peers.pop(peer, None)
        if peer not in self._gone:
            self._gone.append(peer)
            self._wake.set()

    def _flush(self, peer: bytes, p: _Peer) -> bool:
        """Hand ``peer``'s queue to the socket, up to ``BATCH`` messages; True if more is ready."""
        for _ in range(BATCH):
            if not p.queue:
                return False
            entry = p.queue[0]
            sent = self._try_send(peer, p, entry.payload)
            if sent is None:
                return False
            p.queue.popleft()
            if entry.stream:
                p.stream_bytes -= len(entry.payload)
            else:
                p.reply_bytes -= len(entry.payload)
            if self._peers.get(peer) is not p:
                return False  # gone
            if sent:
                self._sent(peer, p)
        return bool(p.queue)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._gone:
                try:
                    await self._on_peer_gone(self._gone.popleft())
                except Exception:  # the sender must outlive it: everyone's messages go through here
                    log.exception("handling a vanished connection failed")
            now = loop.time()
            more = False
            next_retry: float | None = None
            for peer, p in list(self._peers.items()):
                if p.retry_at > now:
                    next_retry = p.retry_at if next_retry is None else min(next_retry, p.retry_at)
                    continue
                more = self._flush(peer, p) or more
                if p.queue and p.retry_at:
                    next_retry = p.retry_at if next_retry is None else min(next_retry, p.retry_at)
                elif not p.queue and p.slow is None and self._peers.get(peer) is p:
                    del self._peers[peer]
            if not any(p.queue for p in self._peers.values()):
                self._idle.set()
            if more or self._gone:
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            timeout = None if next_retry is None else max(0.0, next_retry - loop.time())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def drain(self) -> None:
        """Until everything queued so far has been handed to the socket."""
        while any(p.queue for p in self._peers.values()):
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()
