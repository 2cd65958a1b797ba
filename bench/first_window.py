"""First words first: Kokoro's first window against the whole render of a reply's first fragment.

    python bench/first_window.py [--runs 2] [--threads 2] [--head-s 0.5] [--no-wer]

The fragments are the first five words of 20 NPC lines (the chunker's longest first
fragment), in four voices. Per fragment it times ``synthesize`` (the whole) and
``synthesize_head`` (encoder on the whole, decoder on the first window), median of
``--runs`` each, interleaved so the machine's load hits both alike, and prints where the
join fell and how long the rest took against the head's playing time (the rest must be
ready before the head has played). Then the medians and the ratio head / whole, and
Whisper tiny.en's WER on the whole render and on head + rest joined (``--no-wer`` skips it).
About two minutes on 2 cores. docs/tts.md, First words first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npc_engine.pipeline.base import Voice
from npc_engine.pipeline.tts_espeak import resample
from npc_engine.pipeline.tts_kokoro import KokoroConfig, KokoroSynthesizer
from npc_engine.pipeline.wer import corpus_wer

LINES = [
    "Well, traveller, what brings you to the forge today?", "Aye, the blade is sharp enough for any wolf.",
    "Hm. The mayor keeps his keys close, I hear.", "Mind your step, the floor is slick with ale.",
    "Soup's on the fire, and the bread is fresh this morning.", "I have not seen the miller's boy since Tuesday.",
    "Silver talks louder than words in this town.", "Sit down, stranger, and tell me your name.",
    "The road north is closed until the thaw.", "My father built this inn with his own two hands.",
    "Keep your voice down, the walls have ears.", "That will cost you three silver pieces, friend.",
    "Don't touch that hammer, it was my grandfather's.", "Look, I just fix swords, I don't ask questions.",
    "Stew is four coppers, with ale it's six.", "Thank you kindly, that means a great deal to me.",
    "Nobody crosses the bridge after dark anymore.", "Ask Marta at the inn, she hears everything.",
    "Fire burns hot when the bellows sing.", "Perhaps. Or perhaps not, who can say?",
]
VOICES = ["am_michael", "af_heart", "bf_emma", "bm_george"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="Kokoro's intra-op threads (the engine's tts_threads)")
    parser.add_argument("--head-s", type=float, default=KokoroConfig().head_s)
    parser.add_argument("--no-wer", action="store_true")
    args = parser.parse_args()

    kokoro = KokoroSynthesizer(KokoroConfig(intra_op_threads=args.threads, head_s=args.head_s))
    kokoro.warm_up()
    whisper = None
    if not args.no_wer:
        from npc_engine.pipeline.stt_whisper import WhisperTranscriber

        whisper = WhisperTranscriber()
    print(f"load average at start: {os.getloadavg()}")
    whole_ms: list[float] = []
    head_ms: list[float] = []
    late = 0
    pairs_whole: list[tuple[str, str]] = []
    pairs_joined: list[tuple[str, str]] = []
    for i, line in enumerate(LINES):
        text, voice = " ".join(line.split()[:5]), Voice(VOICES[i % len(VOICES)])
        took_whole, took_head, took_rest = [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            whole = kokoro.synthesize(text, voice)
            took_whole.append(time.perf_counter() - started)
            started = time.perf_counter()
            head = kokoro.synthesize_head(text, voice)
            took_head.append(time.perf_counter() - started)
            rest = None
            if head.rest is not None:
                started = time.perf_counter()
                rest = head.rest()
                took_rest.append(time.perf_counter() - started)
        w, h = statistics.median(took_whole) * 1000, statistics.median(took_head) * 1000
        whole_ms.append(w)
        head_ms.append(h)
        if rest is None:
            split = "whole"
            joined = head.chunk.pcm
        else:
            r = statistics.median(took_rest)
            late += r > head.chunk.duration
            split = f"{head.chunk.text!r} | {rest.text!r}: rest {r * 1000:.0f} ms, head plays {head.chunk.duration:.2f} s"
            joined = np.concatenate([head.chunk.pcm, rest.pcm])
        print(f"{text!r:36} whole {w:5.0f} ms  head {h:5.0f} ms  {split}", flush=True)
        if whisper is not None:
            for pairs, pcm in ((pairs_whole, whole.pcm), (pairs_joined, joined)):
                audio = resample(pcm.astype(np.float32) / 32768.0, whole.sample_rate, 16_000)
                pairs.append((text, whisper.transcribe((np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16))))
    ratio = statistics.median(h / w for h, w in zip(head_ms, whole_ms, strict=True))
    print(f"\nmedian: whole {statistics.median(whole_ms):.0f} ms, head {statistics.median(head_ms):.0f} ms; "
          f"head / whole {ratio:.2f}; rests later than their head's playback: {late}")
    if whisper is not None:
        print(f"WER (whisper tiny.en): whole {corpus_wer(pairs_whole):.3f}, head + rest {corpus_wer(pairs_joined):.3f}")


if __name__ == "__main__":
    main()
