"""Shared fixtures. Models load once per test session; engines bind free loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from npc_engine.client import EngineClient
from tests.harness import Running

# No test may reach a model hub (design notes: weights come from registry packages only).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
async def client(engine: Running) -> AsyncIterator[EngineClient]:
    """A connected client for the module's ``engine`` fixture (each module picks its config)."""
    c = await EngineClient.connect(engine.endpoint)
    yield c
    await c.close()
