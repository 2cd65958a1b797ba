"""Prometheus metrics: stage latencies, turns, errors, barge-ins, sessions.

Collection is always on and costs a few dictionary updates per turn; *serving* is off by
default. ``npc-engine serve --metrics-port 9100`` calls ``start_metrics_server(9100)``,
which serves the text exposition format on http://127.0.0.1:9100/metrics (loopback only:
the numbers describe players' sessions, they are not for the LAN).

The engine calls three hooks, one line each: ``turn_ended`` when a turn's ``turn.end`` is
sent (session.py), ``message_sent`` for every outgoing message (server.py; counts errors
by code), ``barge_in`` when the player speaks over the NPC (voice_input.py);
``watch_server`` lets the sessions gauge read the server's table at scrape time.

The metrics live in one module-level registry (not prometheus_client's global one), so
several in-process engines (tests) share it without registering twice; tests compare
before/after values.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sized
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from npc_engine.metrics import BEFORE, STAGES, TurnLike

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # CPU seconds and memory of the sidecar

# 10 ms .. 10 s: a warm first token is ~50 ms, a cold persona prompt or a loaded TTS
# thread several seconds; finer where the budget is (0.1-1 s).
STAGE_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)

STAGE_SECONDS = Histogram(
    "npc_engine_stage_seconds",
    "Seconds from the end of the player's turn to each stage mark (turn.end timings); "
    "stage=first_audio_sent is time to first audio. end_of_turn_delay is measured before the end.",
    ["stage"], buckets=STAGE_BUCKETS, registry=REGISTRY,
)
TTFA_SECONDS = Histogram(
    "npc_engine_time_to_first_audio_seconds",
    "Seconds from the end of the player's turn to the first reply.audio handed to the socket, by turn source.",
    ["source"], buckets=STAGE_BUCKETS, registry=REGISTRY,
)
TURNS = Counter("npc_engine_turns", "Turns finished, by source (text, voice, greeting, story) and status.",
                ["source", "status"], registry=REGISTRY)
INTERRUPTED = Counter("npc_engine_turns_interrupted", "Turns cut off before they finished (cancel, barge-in, close).",
                      ["source"], registry=REGISTRY)
BARGE_INS = Counter("npc_engine_barge_ins", "Times the player spoke over a speaking NPC and cut its turn.",
                    registry=REGISTRY)
DEGRADATIONS = Counter("npc_engine_degradations", "Stage degradations (over budget or failed; see turn.end degraded).",
                       ["stage"], registry=REGISTRY)
ERRORS = Counter("npc_engine_errors", "error messages sent to games, by code.", ["code"], registry=REGISTRY)
TOKENS = Counter("npc_engine_llm_tokens", "LLM tokens generated in turns.", registry=REGISTRY)
AUDIO_SECONDS = Counter("npc_engine_audio_out_seconds", "Seconds of reply audio sent.", registry=REGISTRY)

_KNOWN_STAGES = frozenset(STAGES) | frozenset(BEFORE)


def turn_ended(turn: TurnLike) -> None:
    """Record a finished turn (called right after its ``turn.end`` is sent)."""
    for stage, ms in turn.clock.timings().items():
        if stage in _KNOWN_STAGES:  # bounded label set whatever a future mark is called
            STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    first_audio = turn.clock.marks.get("first_audio_sent")
    if first_audio is not None:
        TTFA_SECONDS.labels(turn.source).observe(first_audio / 1000.0)
    TURNS.labels(turn.source, turn.status).inc()
    if turn.interrupted:
        INTERRUPTED.labels(turn.source).inc()
    for d in turn.clock.degraded:
        DEGRADATIONS.labels(d.get("stage", "unknown")).inc()
    TOKENS.inc(turn.tokens)
    AUDIO_SECONDS.inc(turn.audio_seconds)


def error_sent(code: str) -> None:
    """Count every ``error`` the server sends, by code."""
    ERRORS.labels(code).inc()


def barge_in() -> None:
    BARGE_INS.inc()


class _Turns(Protocol):
    @property
    def count(self) -> int: ...


class _Engine(Protocol):
    @property
    def turns(self) -> _Turns: ...


class Watched(Protocol):
    """What the gauges read from a running server."""

    @property
    def sessions(self) -> Sized: ...
    @property
    def engine(self) -> _Engine: ...


class _LiveCollector(Collector):
    """Gauges read from the running servers at scrape time (nothing to keep in sync)."""

    def __init__(self) -> None:
        self.servers: weakref.WeakSet[Watched] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        servers = list(self.servers)
        yield GaugeMetricFamily("npc_engine_active_sessions", "Open sessions.",
                                value=sum(len(s.sessions) for s in servers))
        yield GaugeMetricFamily("npc_engine_live_turns", "Turns running now (pre-rendering waits while any are).",
                                value=sum(s.engine.turns.count for s in servers))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return self.collect()


_LIVE = _LiveCollector()
REGISTRY.register(_LIVE)


def watch_server(server: Watched) -> None:
    """Let the gauges read ``server.sessions`` and ``server.engine.turns`` (held weakly)."""
    _LIVE.servers.add(server)


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve /metrics on ``addr:port`` from a daemon thread; returns the HTTP server
    (``.server_port`` is the bound port when ``port`` is 0; ``.shutdown()`` stops it).

    A port that cannot be bound is logged as an error and returns None: the games the
    sidecar serves matter more than its metrics.
    """
    try:
        httpd, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%d (%s); is another process using that port? "
                  "Pick another with --metrics-port. The engine runs on without metrics.",
                  addr, port, exc.strerror or exc)
        return None
    log.info("Prometheus metrics on http://%s:%d/metrics", addr, httpd.server_port)
    return httpd
