"""End of turn by silence vs by meaning: false cuts and delay on the same clips.

Every clip is streamed in 20 ms frames through the open-mic path the session uses
(``TurnRecognizer``: Silero VAD, the end-of-turn detector, Whisper's speculative final at
``silence_start`` feeding the text check), once per configuration:

* ``silence 600``: the old rule, the turn ends after 600 ms of silence (``smart_turn=False``);
* ``smart 200->600/1200`` (the engine's default): Smart Turn asked at 200 ms of silence;
  complete, the turn ends at 600 ms; mid-thought (or a transcript ending on "and"/"um"), at
  1200 ms;
* ``smart 200/1200``: the same, but complete ends the turn at once (200 ms);
* ``--sweep`` adds Smart Turn asked at 100 and 300 ms, complete at 400 ms, mid-thought at
  1000 ms, and the old rule at 400 and 1000 ms; ``--threshold P`` another cut-off for complete.

Clips (the same for every configuration):

* lines: the English line fixtures (tests/fixtures/speech) and ten more Kokoro lines, each
  said whole; 2.5 s of room noise is appended so a turn judged mid-thought can still end.
  Measured: the end-of-turn delay (true end of speech -> the decision, stream time) and lines
  split into two turns.
* pauses: ``pause_mid_sentence.wav`` (two halves synthesized apart, 350 ms apart), and the ten
  Kokoro lines with a pause of 400, 700 or 1000 ms spliced in at the middle word boundary
  (Kokoro's word timings) of a whole-sentence synthesis, so the voice is mid-sentence there.
  A false cut is an end of turn decided inside the pause.

Stream time, not wall time: the delays are what the detector decides, the same on any CPU.
Smart Turn's own cost per call (wall, this machine) is printed too. A minute or two.

    python bench/end_of_turn.py [--sweep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_fixtures import KOKORO_SPEED, KOKORO_VOICES, LINES, NOISE_STD, resample  # noqa: E402

from npc_engine.pipeline.base import STT_SAMPLE_RATE as SR  # noqa: E402
from npc_engine.pipeline.base import Transcriber, Voice  # noqa: E402
from npc_engine.pipeline.smart_turn import SmartTurn  # noqa: E402
from npc_engine.pipeline.stt_turns import TurnRecognizer  # noqa: E402
from npc_engine.pipeline.vad import EndOfTurnDetector, SileroVad, TurnConfig  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "speech"
FRAME = 320
TAIL_S = 2.5  # room noise after each clip: longer than the longest wait
PAUSES_S = (0.4, 0.7, 1.0)


@dataclass(slots=True)
class Clip:
    name: str
    kind: str  # "line" | "pause"
    pcm: np.ndarray  # int16
    speech_end_s: float
    pause: tuple[float, float] | None = None  # [start, end) of the spliced silence, seconds


@dataclass(slots=True)
class Setup:
    label: str
    config: TurnConfig
    smart: bool


@dataclass(slots=True)
class Result:
    delays: list[float] = field(default_factory=list)  # lines: end of speech -> decision, s
    split: int = 0  # lines cut into two turns or more
    never: int = 0  # lines (or paused lines) whose turn never ended
    cut: int = 0  # pauses: an end of turn decided inside the pause
    pauses: int = 0
    lines: int = 0
    cut_names: list[str] = field(default_factory=list)


def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, NOISE_STD, n).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def fixture_clips(rng: np.random.Generator) -> list[Clip]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    out = []
    for c in manifest["clips"]:
        if c["lang"] != "en" or c["kind"] not in ("line", "pause"):
            continue
        with wave.open(str(FIXTURES / c["file"])) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        tail = to_int16(noise(int(TAIL_S * SR), rng))
        pause = tuple(c["pauses"][0]) if c["pauses"] else None
        out.append(Clip(c["file"], c["kind"], np.concatenate([pcm, tail]), c["speech_end_s"], pause))  # type: ignore[arg-type]
    return out


def kokoro_clips(rng: np.random.Generator) -> list[Clip]:
    """Each line said whole by Kokoro, then the same with pauses spliced mid-sentence."""
    from npc_engine.pipeline.tts_kokoro import KokoroSynthesizer

    tts = KokoroSynthesizer()
    out = []
    for i, text in enumerate(LINES):
        voice = KOKORO_VOICES[(i + 1) % len(KOKORO_VOICES)]  # not the fixtures' voice for the line
        chunk = tts.synthesize(text, Voice(voice, speed=KOKORO_SPEED))
        x = resample(chunk.pcm.astype(np.float32) / 32768.0, chunk.sample_rate)
        x = x / (float(np.max(np.abs(x))) or 1.0) * 0.6
        words = chunk.words
        k = max(len(words) // 2 - 1, 0)  # the pause goes after this word
        split = int((words[k].end + words[k + 1].start) / 2 * SR)
        end_s = 0.5 + words[-1].end
        lead = np.zeros(int(0.5 * SR), np.float32)
        out.append(Clip(f"kokoro_{voice}_{i:02d} whole", "line",
                        to_int16(np.concatenate([lead, x]) + noise(len(lead) + len(x), rng)),
                        end_s))
        for p in PAUSES_S:
            gap = np.zeros(int(p * SR), np.float32)
            y = np.concatenate([lead, x[:split], gap, x[split:]])
            out.append(Clip(f"kokoro_{voice}_{i:02d} '{' '.join(w.label for w in words[: k + 1])} | ' +{p:.1f}s",
                            "pause", to_int16(y + noise(len(y), rng)), end_s + p,
                            (0.5 + split / SR, 0.5 + split / SR + p)))
    tail = [np.concatenate([c.pcm, to_int16(noise(int(TAIL_S * SR), rng))]) for c in out]
    return [Clip(c.name, c.kind, t, c.speech_end_s, c.pause) for c, t in zip(out, tail, strict=True)]


class TimedModel:
    """Smart Turn, with the wall time of every call kept."""

    def __init__(self, model: SmartTurn) -> None:
        self.model = model
        self.costs: list[float] = []

    def predict(self, pcm: np.ndarray) -> float:
        p = self.model.predict(pcm)
        self.costs.append(self.model.last_seconds)
        return p


def run_clip(vad: SileroVad, transcriber: Transcriber, model: TimedModel, setup: Setup, clip: Clip,
             res: Result) -> None:
    detector = EndOfTurnDetector(vad, setup.config, model if setup.smart else None)
    rec = TurnRecognizer(detector, transcriber.open_stream())
    ends: list[float] = []
    for i in range(0, len(clip.pcm), FRAME):
        update = rec.feed(clip.pcm[i : i + FRAME])
        ends += [e.decided_at / SR for e in update.events if e.kind == "end_of_turn"]
    if not ends:
        res.never += 1
    if clip.kind == "pause":
        assert clip.pause is not None
        res.pauses += 1
        # A decision in the pause, or just after it: Silero hears the speech resume a little late.
        if any(clip.pause[0] < t < clip.pause[1] + 0.3 for t in ends):
            res.cut += 1
            res.cut_names.append(clip.name)
    else:
        res.lines += 1
        if len(ends) > 1:
            res.split += 1
            res.cut_names.append(f"{clip.name} (split)")
        after = [t for t in ends if t > clip.speech_end_s]
        if after:
            res.delays.append(after[0] - clip.speech_end_s)
            if after[0] - clip.speech_end_s > 1.0:
                res.cut_names.append(f"{clip.name} (waited {after[0] - clip.speech_end_s:.2f} s)")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="also other ask points and silences")
    ap.add_argument("--show-cuts", action="store_true", help="name the clips each setup cut or made wait > 1 s")
    ap.add_argument("--threshold", type=float, action="append", default=[],
                    help="also Smart Turn at 200/1200 with this probability threshold for complete (repeatable)")
    args = ap.parse_args(argv)

    from npc_engine.pipeline.stt_whisper import WhisperTranscriber

    rng = np.random.default_rng(20261202)
    clips = fixture_clips(rng) + kokoro_clips(rng)
    vad = SileroVad()
    whisper = WhisperTranscriber()
    whisper.warm_up()
    smart_turn = SmartTurn()
    smart_turn.warm_up()
    model = TimedModel(smart_turn)

    setups = [Setup("silence 600 (before)", TurnConfig(end_of_turn_ms=600), False),
              Setup("smart 200->600/1200 (default)", TurnConfig(complete_ms=600), True),
              Setup("smart 200/1200", TurnConfig(complete_ms=None), True)]
    if args.sweep:
        setups += [Setup("silence 400", TurnConfig(end_of_turn_ms=400), False),
                   Setup("silence 1000", TurnConfig(end_of_turn_ms=1000), False),
                   Setup("smart 100/1200", TurnConfig(smart_turn_ms=100, incomplete_ms=1200), True),
                   Setup("smart 300/1200", TurnConfig(smart_turn_ms=300, incomplete_ms=1200), True),
                   Setup("smart 200/1000", TurnConfig(smart_turn_ms=200, incomplete_ms=1000), True),
                   Setup("smart 200->400/1200", TurnConfig(complete_ms=400), True)]
    setups += [Setup(f"smart 200/1200 p>={t:g}", TurnConfig(complete_threshold=t), True) for t in args.threshold]
    n_lines = sum(c.kind == "line" for c in clips)
    n_pauses = len(clips) - n_lines
    print(f"{n_lines} whole lines, {n_pauses} lines with a mid-sentence pause "
          f"(fixture + Kokoro x {', '.join(f'{p:.1f}' for p in PAUSES_S)} s)\n")
    print(f"{'setup':<30} {'false cuts':>11} {'delay p50':>10} {'p90':>6} {'max':>6} {'split':>6} {'never':>6}")
    for setup in setups:
        res = Result()
        for clip in clips:
            run_clip(vad, whisper, model, setup, clip, res)
        print(f"{setup.label:<30} {res.cut:>3}/{res.pauses:<3} {res.cut / res.pauses:4.0%} "
              f"{statistics.median(res.delays):>9.2f}s {pct(res.delays, 0.9):>5.2f}s {max(res.delays):>5.2f}s "
              f"{res.split:>6} {res.never:>6}", flush=True)
        if args.show_cuts and res.cut_names:
            for name in res.cut_names:
                print(f"    {name}")
    if costs := model.costs:
        print(f"\nSmart Turn per call (wall, this machine): p50 {statistics.median(costs) * 1000:.0f} ms, "
              f"p90 {pct(costs, 0.9) * 1000:.0f} ms over {len(costs)} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
