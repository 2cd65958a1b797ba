"""Run a real sidecar in-process on a free loopback port, for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
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
        # Plumbing tests run on the smallest profile whatever the default becomes: a heavier
        # default model would only slow them down. Tests of model quality pick their profile.
        "llm_model": "fast",
        "llm_slots": 2,
        "llm_ctx": 4096,
        "temperature": 0.7,
        # At the first-token budget a turn gives up on the model and says a fallback line, and
        # on a loaded machine the real model can take seconds: tests that look at the model's
        # reply must not depend on the machine's speed. Tests of the budget set their own.
        "budget_llm_first_token_ms": 60_000,
        "llm_timeout_ms": 60_000,
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


async def eventually(pred: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    """Wait for an engine-side condition that no message or event signals (checked every few
    milliseconds); ``timeout`` is only a safety net."""

    async def watch() -> None:
        while not pred():  # noqa: ASYNC110 - nothing to wait on: the state is polled
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(watch(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
