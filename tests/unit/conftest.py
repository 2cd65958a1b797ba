"""Fixtures of the unit layer: the repo's real world, an engine assembled from test doubles.

No model is loaded here: the chat model and the voices are the doubles of ``tests/doubles.py``.
Each engine gets its own data dir (SQLite store) under ``tmp_path``; sessions and engines
are closed at teardown, sessions first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from npc_engine.characters import Character
from npc_engine.config import EngineConfig
from npc_engine.engine import Engine
from npc_engine.session.session import Session
from npc_engine.story import Story
from npc_engine.world import load_world
from tests.doubles import ScriptedChat, SilenceSynth
from tests.unit.support import Sent

REPO = Path(__file__).resolve().parents[2]
PLAYER = "p-unit"
# Two sentences, three chunks with the clause chunker: "Hm, the forge is cold" / "today." / "Come back at dawn."
DEFAULT_REPLY = "Hm, the forge is cold today. Come back at dawn."
# Neutral player lines: they fire no story exit for any character.
NEUTRAL = "Nice weather today."

World = tuple[dict[str, Character], Story]


def unit_config(data_dir: Path, **overrides: Any) -> EngineConfig:
    """Generous budgets (a fast double never trips them); tests that test a budget shrink it."""
    base: dict[str, Any] = {
        "characters": REPO / "characters",
        "story": REPO / "story",
        "data_dir": data_dir,
        "tts": "none",
        "stt": "none",
        "llm_slots": 2,  # one stalled stream must not block the next turn's
        "budget_llm_first_token_ms": 5_000,
        "llm_timeout_ms": 10_000,
        "budget_tts_chunk_ms": 5_000,
    }
    base.update(overrides)
    return EngineConfig(**base)


@pytest.fixture(scope="module")
def world() -> World:
    return load_world(REPO / "characters", REPO / "story")


class MakeEngine(Protocol):
    def __call__(
        self, chat: ScriptedChat, voices: Sequence[SilenceSynth] = ..., **cfg: Any
    ) -> Engine: ...


class MakeSession(Protocol):
    async def __call__(
        self, engine: Engine, sent: Sent, *, character: str = ..., audio: bool = ..., player: str = ...
    ) -> Session: ...


@pytest.fixture
async def make_engine(tmp_path: Path, world: World) -> AsyncIterator[MakeEngine]:
    engines: list[Engine] = []
    characters, story = world

    def make(chat: ScriptedChat, voices: Sequence[SilenceSynth] = (), **cfg: Any) -> Engine:
        if len(voices) > 2:
            raise ValueError("an engine has a voice and a fallback voice")
        config = unit_config(tmp_path / f"engine-{len(engines)}", **cfg)
        eng = Engine.assemble(
            config, characters, story, chat,
            synth=voices[0] if voices else None,
            fallback_synth=voices[1] if len(voices) > 1 else None,
        )
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        await eng.close()


@pytest.fixture
async def make_session(make_engine: MakeEngine) -> AsyncIterator[MakeSession]:
    sessions: list[Session] = []

    async def make(
        engine: Engine, sent: Sent, *, character: str = "bram", audio: bool = True, player: str = PLAYER
    ) -> Session:
        session = Session(engine, f"s{len(sessions) + 1}", engine.characters[character], player, sent, audio=audio)
        sessions.append(session)
        await session.open({})
        return session

    yield make
    for session in sessions:
        if not session.closed:
            await session.close()


@dataclass
class Rig:
    """An engine of doubles with one open session and what it sent."""

    engine: Engine
    chat: ScriptedChat
    voices: list[SilenceSynth]
    session: Session
    sent: Sent

    @property
    def character(self) -> Character:
        return self.session.character


class MakeRig(Protocol):
    async def __call__(
        self,
        chat: ScriptedChat,
        *,
        voices: Sequence[SilenceSynth] | None = ...,
        audio: bool = ...,
        character: str = ...,
        **cfg: Any,
    ) -> Rig: ...


@pytest.fixture
def make_rig(make_engine: MakeEngine, make_session: MakeSession) -> MakeRig:
    """``await make_rig(chat, voices=[...], audio=True, character="bram", **config)``."""

    async def make(
        chat: ScriptedChat,
        *,
        voices: Sequence[SilenceSynth] | None = None,
        audio: bool = True,
        character: str = "bram",
        **cfg: Any,
    ) -> Rig:
        chosen = list(voices) if voices is not None else [SilenceSynth("silence-a"), SilenceSynth("silence-b")]
        engine = make_engine(chat, chosen, **cfg)
        sent = Sent()
        session = await make_session(engine, sent, character=character, audio=audio)
        return Rig(engine, chat, chosen, session, sent)

    return make


@pytest.fixture
def chat() -> ScriptedChat:
    return ScriptedChat([DEFAULT_REPLY], ttft_s=0.01, tokens_per_s=500)


@pytest.fixture
def voices() -> list[SilenceSynth]:
    return [SilenceSynth("silence-a"), SilenceSynth("silence-b")]


@pytest.fixture
def engine(make_engine: MakeEngine, chat: ScriptedChat, voices: list[SilenceSynth]) -> Engine:
    return make_engine(chat, voices)


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
async def session(engine: Engine, sent: Sent, make_session: MakeSession) -> Session:
    """An open audio session with Bram, wired to ``sent``."""
    return await make_session(engine, sent)
