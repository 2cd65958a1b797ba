"""Delivery: every engine message goes out through here, per game connection, in order.

One sender task writes to the ROUTER socket, so messages to one game keep the order they
were produced in and no handler ever waits on a slow socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio

from npc_engine import prom
from npc_engine.protocol import encode
from npc_engine.protocol import outgoing as msg

log = logging.getLogger(__name__)

PeerGone = Callable[[bytes], Awaitable[None]]


class Outbox:
    def __init__(self, sock: zmq.asyncio.Socket, on_peer_gone: PeerGone) -> None:
        self._sock = sock
        self._on_peer_gone = on_peer_gone
        self._queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()

    def send(self, peer: bytes, message: msg.Outgoing) -> None:
        if isinstance(message, msg.Error):
            prom.error_sent(message.code)
        self._queue.put_nowait((peer, encode(message)))

    async def run(self) -> None:
        while True:
            peer, payload = await self._queue.get()
            try:
                await self._sock.send_multipart([peer, payload])
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    await self._on_peer_gone(peer)
                else:
                    log.error("send failed: %s", exc)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Until everything queued so far has been handed to the socket."""
        await self._queue.join()
