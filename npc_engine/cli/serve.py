"""``npc-engine serve``: load everything once, then serve games until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from npc_engine.cli.parent import ParentWatch
from npc_engine.config import DEFAULT_ENDPOINT, EngineConfig, baseline
from npc_engine.pipeline.llm_profiles import DEFAULT_PROFILE, PROFILES

if TYPE_CHECKING:  # imported lazily at run time: `--help` stays fast
    from npc_engine.server import Server

log = logging.getLogger("npc_engine")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", help=f"ZeroMQ endpoint to bind (default {DEFAULT_ENDPOINT})")
    p.add_argument("--characters", type=Path, help="directory of character YAML (default ./characters)")
    p.add_argument("--story", type=Path, help="directory of story YAML (default ./story)")
    p.add_argument("--data-dir", type=Path, help="where the SQLite state and audio cache live (default ~/.local/share/npc-engine)")
    g = p.add_argument_group("LLM")
    g.add_argument("--llm", choices=["embedded", "ollama"], help="embedded llama.cpp (default) or your Ollama")
    g.add_argument("--llm-model", help=f"embedded model: a profile ({', '.join(PROFILES)}; default {DEFAULT_PROFILE}) "
                   "or a GGUF file; `npc-engine models` lists the profiles, docs/models.md compares them")
    g.add_argument("--llm-threads", type=int, help="llama.cpp threads (default 1: leaves a core for TTS/STT)")
    g.add_argument("--llm-slots", type=int, help="sessions that can decode at once (default 4)")
    g.add_argument("--ollama-model", help="Ollama model name (default llama3.2)")
    g.add_argument("--ollama-host", help="Ollama URL (default $OLLAMA_HOST or http://127.0.0.1:11434)")
    g = p.add_argument_group("speech")
    g.add_argument("--tts", choices=["kokoro", "espeak", "none"], help="speech synthesis (default kokoro)")
    g.add_argument("--stt", choices=["whisper", "moonshine", "vosk", "none"], help="speech recognition (default whisper)")
    g.add_argument("--vosk-model", help="directory of a Vosk model (with --stt vosk)")
    g.add_argument("--end-of-turn-ms", type=int, help="trailing silence that ends an open-mic turn (default 600)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (off by default)")
    p.add_argument("--baseline", action="store_true",
                   help="the engine as it was before the latency work of issue #10, to compare against (npc-engine bench "
                        "runs one): no acknowledgements, no preemptive replies, open-mic turns end on silence alone, "
                        "the history slides by one exchange a turn, Kokoro and Whisper run one thread, a reply's first "
                        "chunk is rendered whole, Whisper's finals take 30 s windows")
    p.add_argument("--parent-pid", type=int, metavar="PID",
                   help="stop (cleanly) once process PID exits: for a game that starts its own engine, "
                        "so that the engine does not outlive a game that crashed")
    p.add_argument("--no-guard", dest="guard", action="store_false", default=None,
                   help="switch off the guard stage: replies are spoken as the model wrote them, with no check for "
                        "AI talk, secrets told too soon, speaker labels, loops or repeats (for measuring; the same as "
                        "NPC_ENGINE_GUARD=0; docs/quality.md)")
    g = p.add_argument_group("limits")
    g.add_argument("--session-idle-timeout", type=float, dest="session_idle_timeout_s", metavar="SECONDS",
                   help="close a session nobody has sent anything for in this long (default 1800; 0: never)")
    g.add_argument("--max-sessions-per-client", type=int, metavar="N",
                   help="open sessions one game connection may have (default 64)")
    g.add_argument("--max-queued-turns-per-client", type=int, metavar="N",
                   help="turns of one game connection waiting for the model at once; beyond, a fallback line (default 8)")
    g.add_argument("--max-players-cached", type=int, metavar="N",
                   help="players' story states kept in memory (default 1024; the store keeps them all)")
    g.add_argument("--max-outbox-bytes", type=int, metavar="BYTES",
                   help="audio and text waiting for one game that is not reading; past it its turns are cut "
                        "and it gets a slow_consumer error (default 16777216)")
    g = p.add_argument_group("security")
    g.add_argument("--curve-secret-key", type=Path, metavar="FILE",
                   help="encrypt and authenticate with ZeroMQ CURVE, with this secret key (from `npc-engine keys`); "
                        "required to bind anything but loopback")
    g.add_argument("--insecure", action="store_true", default=None,
                   help="allow a non-loopback endpoint without CURVE keys (a trusted network only; logged as a warning)")
    g.add_argument("--accept-unsigned-saves", action="store_true", default=None,
                   help="let state.load take unsigned saves from engines before 0.2 (they cannot be checked for edits)")


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    keys = ("endpoint", "characters", "story", "data_dir", "llm", "llm_model", "llm_threads", "llm_slots",
            "ollama_model", "ollama_host", "tts", "stt", "vosk_model", "end_of_turn_ms", "metrics_port",
            "session_idle_timeout_s", "max_sessions_per_client", "max_queued_turns_per_client", "max_players_cached",
            "curve_secret_key", "insecure", "max_outbox_bytes", "accept_unsigned_saves",
            "guard")
    cfg = EngineConfig.from_env(**{k: getattr(args, k, None) for k in keys})
    return baseline(cfg) if getattr(args, "baseline", False) else cfg


async def serve(cfg: EngineConfig, ready: asyncio.Event | None = None, parent_pid: int | None = None) -> int:
    from npc_engine.engine import Engine
    from npc_engine.server import Server
    from npc_engine.server.auth import bind_problem

    # An unsafe endpoint or an unusable key file is refused now, not after the models have loaded.
    if (problem := bind_problem(cfg.endpoint, cfg.curve_secret_key, cfg.insecure)) is not None:
        log.error("cannot start: %s", problem)
        return 1
    watch = ParentWatch(parent_pid) if parent_pid is not None else None
    if watch is not None:
        watch.start()  # from before the models load: a game can die while they do
    try:
        engine = await Engine.start(cfg)
    except asyncio.CancelledError:
        if watch is None or not watch.gone:
            raise
        return 0  # the game that started us is gone: nobody to serve
    server = Server(engine)
    if watch is not None:
        watch.serving(server)
    try:
        server.bind()
    except OSError as exc:
        log.error("%s", exc)
        await engine.close()
        return 1
    if cfg.metrics_port:
        from npc_engine.prom import start_metrics_server

        start_metrics_server(cfg.metrics_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows' default loop
            loop.add_signal_handler(sig, _on_signal, server, sig)
    task = asyncio.create_task(server.serve())
    if ready is not None:
        ready.set()
    print(f"npc-engine ready on {server.bound_endpoint} (Ctrl-C to stop)", flush=True)
    await task
    if watch is not None:
        await watch.close()
    log.info("shutting down: saving state and unloading models")
    await engine.close()
    log.info("stopped cleanly")
    return 0


def _on_signal(server: Server, sig: signal.Signals) -> None:
    log.info("received %s", signal.Signals(sig).name)
    server.stop()


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"npc-engine serve: {exc}", file=sys.stderr)
        return 2
    try:
        code = asyncio.run(serve(cfg, parent_pid=getattr(args, "parent_pid", None)))
    except Exception as exc:
        from npc_engine.pipeline.base import ModelError
        from npc_engine.store import SaveKeyError

        if isinstance(exc, ModelError | FileNotFoundError | SaveKeyError):
            log.error("cannot start: %s", exc)
            return 1
        raise
    # State is saved and the store closed. A model thread may still be finishing background
    # work (a warm-up, a line pre-render) that nobody needs now; Python would wait for it at
    # exit (seconds, on a busy machine), so leave at once.
    logging.shutdown()
    with contextlib.suppress(OSError):  # a game that died (--parent-pid) took our stdout pipe with it
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
