"""``npc-engine bench``: what the player feels, new engine vs ``serve --baseline``, under concurrency.

    npc-engine bench                      # two sidecars (new, --baseline), 10-turn conversations, N = 1, 2, 4
    npc-engine bench --quick              # a ~5-minute version
    npc-engine bench --only scenes        # the scene phase alone (issue #13): a scene against one-to-one, ~3.5 min
    npc-engine bench --endpoint tcp://127.0.0.1:5555 --baseline-endpoint tcp://127.0.0.1:5556 --json out.json

The library is ``npc_engine.benchmark``; ``bench/ttfa.py`` runs the same thing as a script.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from npc_engine.config import EngineConfig

if TYPE_CHECKING:  # the benchmark library loads only when the bench runs
    from npc_engine.benchmark.runner import BenchConfig


def configure(p: argparse.ArgumentParser) -> None:
    from npc_engine.benchmark.workload import DEFAULT_CLIPS, REPO

    p.add_argument("--endpoint", help="benchmark a running sidecar here (default: spawn one on a free port with a temp data dir)")
    p.add_argument("--baseline-endpoint",
                   help="with --endpoint: a running `npc-engine serve --baseline` to compare against (default: spawned)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the `serve --baseline` sidecar (today's behaviour) that every conversation is also played on")
    p.add_argument("--quick", action="store_true",
                   help="a ~5 minute run: one push-to-talk and one open-mic conversation of 3 turns per side, "
                        "a 3-turn scene, N = 1, 2")
    p.add_argument("--turns", type=int,
                   help="push-to-talk and typed turns per side (default 30: three conversations; --quick 3)")
    p.add_argument("--turns-per-session", type=int,
                   help="turns of one conversation, a fresh player each (default 10; --quick 3)")
    p.add_argument("--open-mic-turns", type=int, help="open-mic voice turns per side (default 10; --quick 3; 0: none)")
    p.add_argument("--voice-share", type=float, default=2 / 3,
                   help="share of push-to-talk turns in the push-to-talk conversations; the rest are typed (default 0.67)")
    p.add_argument("--concurrency", default=None, help="simultaneous sessions to try, comma-separated (default 1,2,4; --quick 1,2)")
    p.add_argument("--concurrent-turns", type=int, help="turns per concurrency level, at least one per session (default 12; --quick 2)")
    p.add_argument("--no-scenes", action="store_true",
                   help="skip the scene phase (a Marta and Bram scene against one-to-one sessions with the same lines)")
    p.add_argument("--scene-turns", type=int,
                   help="scene phase: turns in the scene, and as many one-to-one, interleaved (default 10; --quick 3)")
    p.add_argument("--only", choices=["scenes"],
                   help="run only this phase, on the new sidecar (no baseline sidecar, no other phase)")
    p.add_argument("--naive", action="store_true", help="also run the naive sequential pipeline in this process (off by default)")
    p.add_argument("--no-naive", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("--naive-every", type=int, help="with --naive: on every k-th voice and typed input (default 3; --quick 2)")
    p.add_argument("--full-turns", action="store_true",
                   help="conversations: let every reply finish (default: stop each turn after its second chunk of content)")
    p.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help=f"speech clips with a manifest.json (default {DEFAULT_CLIPS})")
    p.add_argument("--budget-min", type=float,
                   help="stop starting turns so the timed phases end within this many minutes (default 12.5, "
                        "+2.75 with the scene phase; --quick 2.25, +1; --only scenes 2.75); "
                        "starting the sidecars (1-3 minutes) comes on top")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every result (per turn and summaries) here")
    p.add_argument("--plot", type=Path, help="write a PNG: per-stage medians, felt and content TTFA distributions, concurrency curve")
    p.add_argument("--keep", type=Path, help="keep the spawned sidecars' data dirs and logs in this directory")
    g = p.add_argument_group("models (the spawned sidecars and the naive baseline)")
    g.add_argument("--characters", type=Path, default=REPO / "characters" if (REPO / "characters").is_dir() else None)
    g.add_argument("--story", type=Path, default=REPO / "story" if (REPO / "story").is_dir() else None)
    g.add_argument("--stt", choices=["whisper", "moonshine", "vosk"], help="speech recognition (default whisper)")
    g.add_argument("--tts", choices=["kokoro", "espeak"], help="speech synthesis (default kokoro)")
    g.add_argument("--llm-model", help="LLM profile (fast, balanced, quality) or a GGUF file (default: the default profile)")
    g.add_argument("--llm-threads", type=int, help="llama.cpp threads (default 1)")
    g.add_argument("--llm-slots", type=int, help="sidecar sessions decoding at once (default 4)")


class Progress:
    """Timestamped progress lines, and a heartbeat when nothing was said for a while (a
    model load or a slow turn on a busy machine), so the run never looks frozen."""

    def __init__(self, quiet_s: float = 15.0) -> None:
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.message = "starting"
        self._stop = threading.Event()
        self._quiet_s = quiet_s
        threading.Thread(target=self._beat, name="bench-heartbeat", daemon=True).start()

    def __call__(self, msg: str) -> None:
        self.last = time.perf_counter()
        self.message = msg.strip()
        print(f"[{self.last - self.t0:6.1f}s] {msg}", flush=True)

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            now = time.perf_counter()
            if now - self.last >= self._quiet_s:
                self.last = now
                print(f"[{now - self.t0:6.1f}s]   ... still working (after: {self.message[:70]})", flush=True)

    def stop(self) -> None:
        self._stop.set()


def _concurrency(raw: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(x) for x in raw.split(",") if x.strip()}))
    except ValueError:
        raise ValueError(f"--concurrency takes numbers separated by commas, like 1,2,4,8, not {raw!r}") from None
    if not levels or min(levels) < 1:
        raise ValueError("--concurrency levels must be 1 or more")
    return levels


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The run's settings from the command line (ValueError: a bad combination)."""
    from npc_engine.benchmark.runner import BenchConfig

    quick = bool(args.quick)
    levels = _concurrency(args.concurrency or ("1,2" if quick else "1,2,4"))
    if not 0 <= args.voice_share <= 1:
        raise ValueError("--voice-share is a share between 0 and 1")
    overrides = {"characters": args.characters, "story": args.story, "stt": args.stt, "tts": args.tts,
                 "llm_model": args.llm_model, "llm_threads": args.llm_threads, "llm_slots": args.llm_slots}
    engine_cfg = EngineConfig.from_env(**overrides)
    serve_args: list[str] = []
    for flag, key in (("--characters", "characters"), ("--story", "story"), ("--stt", "stt"), ("--tts", "tts"),
                      ("--llm-model", "llm_model"), ("--llm-threads", "llm_threads"), ("--llm-slots", "llm_slots")):
        if overrides[key] is not None:
            serve_args += [flag, str(overrides[key])]
    voice = engine_cfg.stt != "none"
    only_scenes = args.only == "scenes"
    scene_turns = 0 if args.no_scenes else max(0, args.scene_turns if args.scene_turns is not None else (3 if quick else 10))
    if only_scenes and not scene_turns:
        raise ValueError("--only scenes needs scene turns (not --no-scenes, --scene-turns 0)")
    # The scene phase adds its own time to the budget, so the other phases keep theirs.
    scene_min = (1.0 if quick else 2.75) if scene_turns else 0.0
    budget_min = args.budget_min or (scene_min if only_scenes else (2.25 if quick else 12.5) + scene_min)
    return BenchConfig(
        engine=engine_cfg, serve_args=serve_args, endpoint=args.endpoint, baseline_endpoint=args.baseline_endpoint,
        baseline=not args.no_baseline and not only_scenes,
        turns=0 if only_scenes else args.turns if args.turns is not None else (3 if quick else 30),
        turns_per_session=max(1, args.turns_per_session or (3 if quick else 10)),
        open_mic_turns=0 if only_scenes else
        (args.open_mic_turns if args.open_mic_turns is not None else (3 if quick else 10)) if voice else 0,
        voice_share=args.voice_share if voice else 0.0, concurrency=() if only_scenes else levels,
        concurrent_turns=args.concurrent_turns or (2 if quick else 12),
        open_mic_reserve_s=50.0 if quick else 170.0, concurrency_reserve_s=40.0 if quick else 150.0,
        naive=bool(args.naive) and not args.no_naive, naive_every=max(1, args.naive_every or (2 if quick else 3)),
        full_turns=args.full_turns, clips=args.clips, budget_s=60 * budget_min,
        scene_turns=scene_turns, scene_reserve_s=60 * scene_min,
        seed=args.seed, keep_dir=args.keep,
    )


def run(args: argparse.Namespace) -> int:
    from npc_engine.benchmark.runner import run_benchmark

    try:
        cfg = bench_config(args)
    except ValueError as exc:
        print(f"npc-engine bench: {exc}", file=sys.stderr)
        return 2
    # The models' own loading chatter would bury the progress lines.
    for name in ("npc_engine", "faster_whisper", "phonemizer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    progress = Progress()
    try:
        bench_run = asyncio.run(run_benchmark(cfg, progress))
    except (FileNotFoundError, RuntimeError, ValueError, ConnectionError) as exc:
        print(f"npc-engine bench: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.stop()
    from npc_engine.benchmark.report import build, format_text, write_json

    report = build(bench_run)
    print()
    print(format_text(report), flush=True)
    if args.json:
        write_json(report, args.json)
        print(f"\nwrote {args.json}")
    if args.plot:
        try:
            from npc_engine.benchmark.plot import write_png

            write_png(report, args.plot)
            print(f"wrote {args.plot}")
        except ImportError:
            print("npc-engine bench: --plot needs matplotlib: pip install 'npc-engine[bench]'", file=sys.stderr)
            return 1
    return 0
