"""TTS test fixtures: each synthesizer loads once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from npc_engine.config import EngineConfig
from npc_engine.pipeline.tts_espeak import EspeakSynthesizer
from npc_engine.pipeline.tts_kokoro import KokoroConfig, KokoroSynthesizer


@pytest.fixture(scope="session")
def kokoro() -> Iterator[KokoroSynthesizer]:
    """The real Kokoro model from the PyPI parts (cache: $NPC_ENGINE_CACHE_DIR or ~/.cache/npc-engine),
    loaded on one and on two threads as the engine loads it (``tts_threads``)."""
    synth = KokoroSynthesizer(KokoroConfig(intra_op_threads=EngineConfig().tts_threads))
    synth.warm_up()
    yield synth
    synth.close()


@pytest.fixture(scope="session")
def espeak() -> EspeakSynthesizer:
    synth = EspeakSynthesizer()
    synth.warm_up()
    return synth

