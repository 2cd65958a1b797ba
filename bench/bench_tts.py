"""TTS latency: time to first audio (TTFA) and real-time factor, first-fragment vs whole-sentence chunking.

    python bench/bench_tts.py [--runs 20] [--threads 1] [--word-ms 10]

Each run streams a reply into the ClauseChunker word by word, as an LLM would
(one word every ``--word-ms``: the default is SmolLM2's measured ~129 tok/s),
and synthesizes each chunk with Kokoro as soon as it is released and the
synthesizer is free. TTFA is the time from the first text delta to the first
chunk synthesized. Both chunking modes run in every run, alternating which goes
first; the chunks the two modes share (every sentence after the first) are
synthesized once per run and their measured times used in both timelines.

RTF is synthesis time over audio duration for the whole reply; "stall" is how
long playback would wait for a chunk that is not ready yet (RTF near 1 shows
up here). The espeak-ng fallback voice gets the same treatment, for scale.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npc_engine.pipeline.base import Voice
from npc_engine.pipeline.chunker import ChunkerConfig, ClauseChunker
from npc_engine.pipeline.tts_espeak import EspeakSynthesizer
from npc_engine.pipeline.tts_kokoro import KokoroConfig, KokoroSynthesizer

SHORT = [
    "Ah, traveller, the gate is shut until dawn.",
    "Hm, you need something forged for the road?",
    "Well, the old mill is north of the river.",
    "Listen, nobody goes into the woods at night.",
]
LONG = [
    "Ah, traveller, you look tired from the road. The inn is just past the well, "
    "and Marta keeps a warm fire burning until late.",
    "Well, I cannot open the gate for you tonight. Captain's orders are clear, and "
    "the wolves have been bold since the snow came down.",
    "Listen, my hammer was stolen from the forge last night. I saw muddy boot prints "
    "leading north, toward the old mill by the river.",
    "Hm, you want a sword? I can make you one by tomorrow evening, but good steel "
    "costs ten silver, and I do not haggle.",
]
MODES = {
    "first-fragment": ChunkerConfig(),
    "whole-sentence": ChunkerConfig(first_min_words=10**6, first_max_words=10**6),
}


@dataclass
class Run:
    ttfa: float
    rtf: float
    stall: float
    audio: float
    chunks: list[str] = field(default_factory=list)


def chunk_stream(text: str, config: ChunkerConfig, word_s: float) -> list[tuple[float, str]]:
    """(time the chunk's last delta arrived, chunk), for a reply streamed one word per ``word_s``."""
    chunker = ClauseChunker(config)
    words = text.split(" ")
    out: list[tuple[float, str]] = []
    for i, word in enumerate(words):
        delta = word + (" " if i + 1 < len(words) else "")
        out += [(i * word_s, c) for c in chunker.feed(delta)]
    out += [((len(words) - 1) * word_s, c) for c in chunker.flush()]
    return out


def timeline(chunks: list[tuple[float, str]], cost: dict[str, tuple[float, float]]) -> Run:
    """Replay the measured synthesis times: one synthesizer, chunks in order, playback back to back."""
    free = 0.0
    first_done = None
    play_at = 0.0
    stall = 0.0
    synth_total = audio_total = 0.0
    for ready, text in chunks:
        seconds, duration = cost[text]
        done = max(ready, free) + seconds
        free = done
        if first_done is None:
            first_done = play_at = done
        elif done > play_at:
            stall += done - play_at
            play_at = done
        play_at += duration
        synth_total += seconds
        audio_total += duration
    assert first_done is not None
    return Run(first_done, synth_total / audio_total, stall, audio_total, [c for _, c in chunks])


def measure(synth: KokoroSynthesizer | EspeakSynthesizer, text: str, voice: Voice, cost: dict[str, tuple[float, float]]) -> None:
    if text in cost:
        return
    started = time.perf_counter()
    chunk = synth.synthesize(text, voice)
    cost[text] = (time.perf_counter() - started, chunk.duration)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per reply length (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--word-ms", type=float, default=10.0, help="LLM pace: ms per word (default 10)")
    parser.add_argument("--voice", default="af_heart")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--no-espeak", action="store_true", help="skip the espeak-ng fallback rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_tts: {os.cpu_count()} cores, load {load:.2f}, python {platform.python_version()}, "
          f"onnxruntime threads {args.threads}, LLM pace {args.word_ms:g} ms/word, voice {args.voice}, "
          f"{args.runs} runs per reply length")
    started = time.perf_counter()
    synth = KokoroSynthesizer(KokoroConfig(intra_op_threads=args.threads))
    synth.warm_up()
    print(f"model load + warm-up: {time.perf_counter() - started:.2f} s")
    voice = Voice(args.voice)
    espeak = None if args.no_espeak else EspeakSynthesizer()
    if espeak is not None:
        espeak.warm_up()
    word_s = args.word_ms / 1000.0

    results: dict[str, dict[str, list[Run]]] = {}
    for length, replies in (("short", SHORT), ("long", LONG)):
        results[length] = {mode: [] for mode in MODES}
        for run in range(args.runs):
            text = replies[run % len(replies)]
            cost: dict[str, tuple[float, float]] = {}  # fresh each run: every chunk is timed in this run
            plans = {mode: chunk_stream(text, config, word_s) for mode, config in MODES.items()}
            order = list(MODES) if run % 2 == 0 else list(reversed(MODES))
            for mode in order:
                for _, chunk in plans[mode]:
                    measure(synth, chunk, voice, cost)
            for mode in MODES:
                results[length][mode].append(timeline(plans[mode], cost))
            print(f"  {length} run {run + 1}/{args.runs}: " + ", ".join(
                f"{m} TTFA {results[length][m][-1].ttfa:.2f} s" for m in MODES), flush=True)
        if espeak is not None:
            # The fallback voice, same streaming and chunking (first fragment), for scale.
            runs = results[length]["espeak fallback"] = []
            for run in range(args.runs):
                plan = chunk_stream(replies[run % len(replies)], MODES["first-fragment"], word_s)
                cost: dict[str, tuple[float, float]] = {}
                for _, chunk in plan:
                    measure(espeak, chunk, voice, cost)
                runs.append(timeline(plan, cost))

    print()
    print(f"{'reply':6} {'chunking':15} {'TTFA med':>9} {'p95':>7} {'RTF med':>8} {'p95':>6} "
          f"{'stall med':>10} {'p95':>6} {'audio':>7}  first chunk (example)")
    for length, modes in results.items():
        for mode, runs in modes.items():
            ttfa = [r.ttfa for r in runs]
            rtf = [r.rtf for r in runs]
            stall = [r.stall for r in runs]
            print(f"{length:6} {mode:15} {statistics.median(ttfa):8.3f}s {pct(ttfa, 0.95):6.3f}s "
                  f"{statistics.median(rtf):8.2f} {pct(rtf, 0.95):6.2f} {statistics.median(stall):9.3f}s "
                  f"{pct(stall, 0.95):5.2f}s {statistics.median(r.audio for r in runs):6.2f}s  "
                  f"{runs[0].chunks[0]!r}")
    print()
    for length, modes in results.items():
        frag = statistics.median(r.ttfa for r in modes["first-fragment"])
        whole = statistics.median(r.ttfa for r in modes["whole-sentence"])
        print(f"{length}: median TTFA whole-sentence / first-fragment = {whole / frag:.2f}x "
              f"({whole:.3f} s vs {frag:.3f} s)")
    print(f"total bench time {time.perf_counter() - started:.0f} s")

    if args.json:
        args.json.write_text(json.dumps({
            length: {mode: [r.__dict__ for r in runs] for mode, runs in modes.items()}
            for length, modes in results.items()
        }, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
