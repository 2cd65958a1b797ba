"""First audio vs first-fragment length: how long Kokoro takes to render a first fragment of n words.

    python bench/first_fragment.py [--runs 3] [--threads 1] [--llm-load] [--llm-nice 10]

Prints one row per fragment: words, characters, synthesis time (median of ``--runs``), the
audio it makes, and when the rest of the sentence would have to be ready for playback not to
stall ("slack" = audio length - synthesis time of that fragment: positive means the fragment
buys the next chunk time). The chunker's first-fragment rule (``pipeline/chunker.py``) is
chosen from this table.

``--llm-load`` runs the embedded LLM (fast profile, one thread) generating without pause on
another thread meanwhile, as another session's reply would; ``--llm-nice N`` lowers that
LLM's threads' priority by N (Linux), to see whether an LLM that yields the CPU helps the
first chunk (``--threads 2`` gives Kokoro both cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npc_engine.pipeline.base import ChatMessage, GenOptions, Voice
from npc_engine.pipeline.scheduling import lower_priority, native_threads
from npc_engine.pipeline.tts_kokoro import KokoroConfig, KokoroSynthesizer

FRAGMENTS = [
    "Hm.",
    "Well,",
    "Well, traveller,",
    "Ah, you made it,",
    "Listen, nobody goes there,",
    "The gate is shut until dawn,",
    "Ah, traveller, the gate is shut,",
    "Well, the old mill is north of the river.",
    "Listen, nobody goes into the woods at night, not even me.",
]


class LlmLoad:
    """The LLM decoding without pause on its own threads until stopped."""

    def __init__(self, nice: int) -> None:
        from npc_engine.pipeline.llm_llamacpp import LlamaCppChat

        before = native_threads()
        self.chat = LlamaCppChat("fast", n_parallel=1, threads=1)
        self.native = native_threads() - before  # llama.cpp's own threads (its decode loop among them)
        self.stop = threading.Event()
        self.tokens = 0
        self.decoding = threading.Event()  # the first token came (and the threads were lowered)
        self.thread = threading.Thread(target=self._run, name="bench-llm", daemon=True)
        self.nice = nice
        self.thread.start()

    def _run(self) -> None:
        msgs = [ChatMessage("system", "You are a storyteller."),
                ChatMessage("user", "Tell me a very long story about a dragon and a blacksmith.")]
        opts = GenOptions(max_tokens=400, temperature=0.8)
        while not self.stop.is_set():
            for _ in self.chat.stream(msgs, opts, self.stop, "bench"):
                self.tokens += 1
                if self.tokens == 1:
                    if self.nice:  # as the engine does (LlamaCppChat's ``nice``)
                        lower_priority(self.native, self.nice)
                    self.decoding.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.chat.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="Kokoro intra-op threads")
    ap.add_argument("--voice", default="am_michael")
    ap.add_argument("--llm-load", action="store_true", help="the LLM decodes on another thread meanwhile")
    ap.add_argument("--llm-nice", type=int, default=0, help="with --llm-load: renice the LLM's threads by this")
    args = ap.parse_args()

    synth = KokoroSynthesizer(KokoroConfig(intra_op_threads=args.threads))
    synth.warm_up()
    voice = Voice(args.voice)
    load = LlmLoad(args.llm_nice) if args.llm_load else None
    try:
        if load is not None:
            load.decoding.wait()
        print(f"kokoro threads={args.threads} llm_load={bool(load)} llm_nice={args.llm_nice} cpus={os.cpu_count()}")
        print(f"{'words':>5} {'chars':>5} {'synth_s':>8} {'audio_s':>8} {'slack_s':>8}  fragment")
        for text in FRAGMENTS:
            times: list[float] = []
            audio = 0.0
            for _ in range(args.runs):
                t0 = time.perf_counter()
                chunk = synth.synthesize(text, voice)
                times.append(time.perf_counter() - t0)
                audio = chunk.duration
            synth_s = statistics.median(times)
            print(f"{len(text.split()):>5} {len(text):>5} {synth_s:>8.3f} {audio:>8.3f} {audio - synth_s:>8.3f}  {text}")
        if load is not None:
            print(f"LLM tokens meanwhile: {load.tokens}")
    finally:
        if load is not None:
            load.close()


if __name__ == "__main__":
    main()
