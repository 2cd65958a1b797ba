"""Run a real sidecar in-process on a free loopback port, for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npc_engine.config import EngineConfig
from npc_engine.engine import Engine
from npc_engine.server import Server

REPO = Path(__file__).resolve().parent.parent


def engine_config(data_dir: Path, **overrides: Any) -> EngineConfig:
    """Light defaults for tests: real embedded LLM; voice stages only where a test asks."""
    base: dict[str, Any] = {
        "endpoint": "tcp://127.0.0.1:*",
        "characters": REPO / "characters",
        "story": REPO / "story",
        "data_dir": data_dir,
        "tts": "none",
        "stt": "none",
        "llm_slots": 2,
        "llm_ctx": 4096,
        "temperature": 0.7,
    }
    base.update(overrides)
    return EngineConfig(**base)


@dataclass
class Running:
    endpoint: str
    engine: Engine
    server: Server


@contextlib.asynccontextmanager
async def running_engine(cfg: EngineConfig) -> AsyncIterator[Running]:
    engine = await Engine.start(cfg)
    server = Server(engine)
    endpoint = server.bind()
    task = asyncio.create_task(server.serve())
    try:
        yield Running(endpoint, engine, server)
    finally:
        server.stop()
        await task
        await engine.close()
