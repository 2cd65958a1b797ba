"""What the guard stage costs in first-clause latency, on the real model.

Each player line is put to a character three times, in turn: guard off, guard holding only the
first clause ("fragment", the default), guard holding every sentence to its end ("sentence").
The model decodes greedily (temperature 0) with a fixed seed, so the three runs of a line see
the same tokens and differ only in when the guard lets text out. Reported per mode: the median
and p90 of ``first_clause - llm_first_token`` (ms, from each turn's clock: the wait the guard
adds after the first token), and of ``first_clause`` itself.

    .venv/bin/python bench/bench_guard.py [--llm-model fast] [--lines 20] [--character bram]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npc_engine.config import EngineConfig
from npc_engine.engine import Engine
from npc_engine.protocol.outgoing import Outgoing
from npc_engine.session.session import Session
from npc_engine.turns.reply import pass_through

LINES = [
    "Good morning! What are you working on?", "Who stole your hammer?", "What do you know about the old mill?",
    "Can you make me a sword?", "Tell me about Marta.", "How long have you worked here?", "Is the gate open?",
    "What's the news today?", "Do you have any work for me?", "What happened last night?",
    "Where should I look for the thief?", "Are you from around here?", "What does a horseshoe cost?",
    "Can I help you?", "Why are you so grumpy?", "Who is the captain of the guard?", "Where is the inn?",
    "What's your favourite thing to forge?", "Did you see anyone strange?", "Goodbye for now.",
]
MODES = ("off", "fragment", "sentence")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(model: str, n: int, character: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        cfg = dataclasses.replace(
            EngineConfig.from_env(llm_model=model), tts="none", stt="none", data_dir=Path(tmp), temperature=0.0,
            budget_llm_first_token_ms=600_000, llm_timeout_ms=600_000,
        )
        engine = await Engine.start(cfg)
        waits: dict[str, list[float]] = {m: [] for m in MODES}
        clauses: dict[str, list[float]] = {m: [] for m in MODES}
        try:
            for i, line in enumerate(LINES[:n]):
                for mode in MODES:
                    engine.cfg.guard_hold = "sentence" if mode == "sentence" else "fragment"

                    def drop(_: Outgoing) -> None:
                        pass

                    session = Session(
                        engine, f"b{i}-{mode}", engine.characters[character], f"p{i}-{mode}", drop, audio=False,
                        guard=pass_through if mode == "off" else None,
                    )
                    await session.open({})
                    turn = session.start_turn("text", line)
                    await turn.wait()
                    t = turn.clock.timings()
                    await session.close()
                    engine.forget_player(f"p{i}-{mode}")
                    if "first_clause" in t and "llm_first_token" in t:
                        waits[mode].append(t["first_clause"] - t["llm_first_token"])
                        clauses[mode].append(t["first_clause"])
                print(f"[{i + 1}/{n}] {line}", file=sys.stderr)
        finally:
            await engine.close()
    print(f"model {model}, {character}, {n} lines, temperature 0\n")
    print("| guard | turns | first_clause - first_token median | p90 | first_clause median | p90 |")
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        w, c = waits[mode], clauses[mode]
        if w:
            print(f"| {mode} | {len(w)} | {statistics.median(w):.0f} ms | {pct(w, 0.9):.0f} ms | "
                  f"{statistics.median(c):.0f} ms | {pct(c, 0.9):.0f} ms |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm-model", default="fast")
    p.add_argument("--lines", type=int, default=len(LINES))
    p.add_argument("--character", default="bram")
    args = p.parse_args()
    asyncio.run(run(args.llm_model, min(args.lines, len(LINES)), args.character))


if __name__ == "__main__":
    main()
