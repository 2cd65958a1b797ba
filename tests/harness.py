"""Run a real sidecar in-process on a free loopback port, for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npc_engine.config import EngineConfig
from npc_engine.engine import Engine
from npc_engine.pipeline.base import ChatMessage
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
        # Priming every character's persona at start is seconds of model work per engine;
        # tests of it turn it on (tests/test_prime.py).
        "prime_personas": False,
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


# Gossip for the facts tests: Bram's offer_help exit tells a character this about the player.
GOSSIP = "The player offered to find Bram's hammer."
OFFER = "Don't worry, I can help you find your hammer."  # Bram's offer_help intent


def gossip_story(folder: Path, character: str = "marta") -> Path:
    """The shipped story, with Bram's offer_help exit telling ``character`` about it."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO / "story" / "oakhollow.yaml").read_text()
    anchor = "        set: {quest_started: true}\n"
    assert text.count(anchor) == 1, "the shipped story changed: update this test's anchor"
    tell = f'        tell: {{character: {character}, fact: "{GOSSIP}"}}\n'
    (folder / "oakhollow.yaml").write_text(text.replace(anchor, anchor + tell))
    return folder


class Prompts:
    """Records every prompt the engine's model is asked with (by affinity: the session, or a
    scene's ``scene/character``), then lets it answer."""

    def __init__(self, engine: Engine) -> None:
        self.by_session: dict[str | None, list[list[ChatMessage]]] = {}
        real = engine.chat.stream

        def stream(messages: Sequence[ChatMessage], *args: Any, **kwargs: Any) -> Iterator[str]:
            # Called as stream(messages, options, cancel, affinity, usage=...).
            affinity = kwargs.get("affinity", args[2] if len(args) > 2 else None)
            self.by_session.setdefault(str(affinity) if affinity is not None else None, []).append(list(messages))
            return real(messages, *args, **kwargs)

        engine.chat.stream = stream  # type: ignore[method-assign]

    def last_system(self, session: str) -> str:
        return self.by_session[session][-1][0].content

    def asked_with(self, session: str, line: str) -> list[ChatMessage]:
        """The latest prompt of the turn the player said ``line`` in. Warm-ups are recorded too,
        and the one a turn's end starts (the story moved) may be asked before or after a test
        looks: ``last_system`` right after such a turn is a race."""
        for messages in reversed(self.by_session[session]):
            said = [m.content for m in messages if m.role == "user"]
            if said and said[-1].endswith(line):
                return messages
        raise AssertionError(f"no prompt of {session} ends with the player's line {line!r}")

    def last_text(self, session: str) -> str:
        """The whole of the latest prompt for ``session``, as one text."""
        return "\n".join(m.content for m in self.by_session[session][-1])
