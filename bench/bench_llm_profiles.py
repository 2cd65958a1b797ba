"""What each LLM profile costs on this machine: first token, decode rate, memory.

One process per profile (so its RSS is that model's), the embedded llama.cpp on 1 thread with
the engine's default context and slots, the engine's own prompt (``system_prompt`` + ``build_messages``) for Bram,
Marta and Aldric. Each session warms its persona first, as ``session.open`` does, then has
``--turns`` exchanges with its history growing, so every measured turn starts with the
persona (and the earlier exchanges) in the KV cache and evaluates only the new tokens.

Per profile:
- first token: wall ms from the request to the first text, and the process's CPU seconds
  over the same interval (CPU-s does not grow when other processes share the cores);
- decode: llama.cpp's own tokens per second over each reply (``predicted_per_second``), and
  text deltas per CPU-second of the process (the cost, whatever else shares the cores);
- RSS after the run, and its peak (VmHWM).

    .venv/bin/python bench/bench_llm_profiles.py                  # all three, 6 sessions x 4 turns
    .venv/bin/python bench/bench_llm_profiles.py balanced --sessions 8
    .venv/bin/python bench/bench_llm_profiles.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TypedDict

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npc_engine.characters import load_characters  # noqa: E402
from npc_engine.config import EngineConfig  # noqa: E402
from npc_engine.pipeline.base import ChatMessage, GenOptions  # noqa: E402
from npc_engine.pipeline.llm_llamacpp import LlamaCppChat  # noqa: E402
from npc_engine.pipeline.llm_profiles import PROFILES  # noqa: E402
from npc_engine.pipeline.prompt import build_messages, system_prompt  # noqa: E402
from npc_engine.store import HistoryEntry  # noqa: E402

LINES = [
    "Good day to you!",
    "What do you sell here?",
    "How long have you lived in this village?",
    "Who stole the hammer from the forge?",
    "Do you have any advice for a traveller?",
    "Thank you, that is kind of you.",
]
CHARACTERS = ["bram", "marta", "aldric"]


class Turn(TypedDict):
    first_token_ms: float
    first_token_cpu_s: float
    decode_tok_s: float
    decode_tok_per_cpu_s: float
    tokens: int
    prompt_evaluated: int
    prompt_cached: int


class Result(TypedDict):
    profile: str
    model: str
    load_s: float
    turns: list[Turn]
    rss_mib: float
    peak_rss_mib: float


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(profile: str, sessions: int, turns: int) -> Result:
    """Runs in the child process: load one profile, talk, report."""
    characters = load_characters(REPO / "characters")
    t0 = time.perf_counter()
    cfg = EngineConfig()  # the engine's own context and slots: they set the KV cache's share of RSS
    chat = LlamaCppChat(profile, n_ctx=cfg.llm_ctx, n_parallel=cfg.llm_slots, threads=1)
    load_s = time.perf_counter() - t0
    out: list[Turn] = []
    for s in range(sessions):
        ch = characters[CHARACTERS[s % len(CHARACTERS)]]
        affinity = f"bench-{s}"
        system = system_prompt(ch, None, ())
        history: list[HistoryEntry] = []
        chat.warm_up([ChatMessage("system", system)], affinity)
        for i in range(turns):
            line = LINES[(s + i) % len(LINES)]
            msgs = build_messages(system, history, line, history_turns=6)
            opts = GenOptions(max_tokens=ch.reply.max_tokens, temperature=0.7, seed=1000 * s + i)
            started, cpu0 = time.perf_counter(), time.process_time()
            first_ms = first_cpu = float("nan")
            parts: list[str] = []
            for delta in chat.stream(msgs, opts, threading.Event(), affinity):
                if not parts:
                    first_ms = (time.perf_counter() - started) * 1000
                    first_cpu = time.process_time() - cpu0
                parts.append(delta)
            decode_cpu = time.process_time() - cpu0 - first_cpu
            t = chat.last_timings or {}
            out.append({
                "first_token_ms": first_ms,
                "first_token_cpu_s": first_cpu,
                "decode_tok_s": float(t.get("predicted_per_second", float("nan"))),
                # Tokens after the first, per CPU-second of this process: what the model costs
                # whatever else shares the cores (the wall rate above drops under load).
                "decode_tok_per_cpu_s": (len(parts) - 1) / decode_cpu if decode_cpu > 0 else float("nan"),
                "tokens": int(t.get("predicted_n", 0)),
                "prompt_evaluated": int(t.get("prompt_n", 0)),
                "prompt_cached": int(t.get("cache_n", 0)),
            })
            reply = "".join(parts).strip()
            history += [HistoryEntry("user", line), HistoryEntry("assistant", reply)]
    result: Result = {
        "profile": profile, "model": PROFILES[profile].model, "load_s": load_s, "turns": out,
        "rss_mib": _status_mib("VmRSS"), "peak_rss_mib": _status_mib("VmHWM"),
    }
    chat.close()
    return result


def summary(r: Result) -> str:
    ft = [t["first_token_ms"] for t in r["turns"]]
    cpu = [t["first_token_cpu_s"] for t in r["turns"]]
    dec = [t["decode_tok_s"] for t in r["turns"] if t["tokens"] > 4]
    dec_cpu = [t["decode_tok_per_cpu_s"] for t in r["turns"] if t["tokens"] > 4]
    new = [t["prompt_evaluated"] for t in r["turns"]]
    return (f"| {r['profile']} | {r['model']} | {len(ft)} | {statistics.median(ft):.0f} / {pct(ft, 0.95):.0f} ms "
            f"| {statistics.median(cpu):.2f} / {pct(cpu, 0.95):.2f} CPU-s | {statistics.median(dec):.1f} tok/s | {statistics.median(dec_cpu):.1f} tok/CPU-s "
            f"| {r['rss_mib']:.0f} MiB (peak {r['peak_rss_mib']:.0f}) | {statistics.median(new):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="*", default=list(PROFILES), help=f"default: {' '.join(PROFILES)}")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--turns", type=int, default=4, help="measured turns per session, after its warm-up")
    ap.add_argument("--json", type=Path, help="write every turn here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one profile in this process; the parent reads the JSON line
        print(json.dumps(measure(args.child, args.sessions, args.turns)))
        return
    print(f"{args.sessions} sessions x {args.turns} turns per profile, 1 LLM thread, persona cached", flush=True)
    print("\n| profile | model | turns | first token median / p95 | first token CPU median / p95 "
          "| decode (median) | decode per CPU-s (median) | RSS after | new prompt tokens (median) |\n"
          "|---|---|---|---|---|---|---|---|---|", flush=True)
    results: list[Result] = []
    for name in args.profiles:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--sessions", str(args.sessions), "--turns", str(args.turns)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r: Result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(summary(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
