"""The sidecar's network side: one ROUTER socket, dispatch, the session registry, delivery.

* ``server``: the socket's receive loop and the dispatch of each request;
* ``outbox``: delivery of engine messages to each game connection, in order;
* ``registry``: the open sessions, who they belong to, and routing between them;
* ``state``: the requests about a player's story state (``state.*``, ``event``).
"""

from npc_engine.server.server import Server

__all__ = ["Server"]
