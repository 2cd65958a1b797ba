"""Text-turn latency: LLM first token and full reply, first turn of a session vs later turns.

Runs a real sidecar in-process (embedded SmolLM2, text only: TTS and STT off so the LLM is
measured alone) on a free loopback port and drives it over ZeroMQ with the Python client.
Each session is a fresh player talking to one character; its first turn pays for
evaluating the persona prompt unless the session warm-up already did, later turns reuse
the prompt prefix from the KV cache.

Also measures, in the same run, a cold baseline: the same first turn with the warm-up
disabled, so the prefix-cache gain shows as a ratio.

    .venv/bin/python bench/bench_text.py            # 8 sessions x 4 turns (>= 20 later turns)
    .venv/bin/python bench/bench_text.py --sessions 12 --turns 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npc_engine.client import EngineClient  # noqa: E402
from npc_engine.pipeline.base import ChatMessage, GenOptions  # noqa: E402
from npc_engine.pipeline.prompt import persona_prompt  # noqa: E402
from tests.harness import engine_config, running_engine  # noqa: E402

LINES = [
    "Good day to you!",
    "What do you sell here?",
    "How long have you lived in this village?",
    "What do you think of the weather lately?",
    "Do you have any advice for a traveller?",
    "Thank you, that is kind of you.",
]
CHARACTERS = ["bram", "marta", "aldric"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def row(name: str, values: list[float]) -> str:
    return f"  {name:<34} n={len(values):>3}  median {statistics.median(values):7.0f} ms   p95 {pct(values, 0.95):7.0f} ms   max {max(values):7.0f} ms"


async def session_turns(endpoint: str, character: str, player: str, turns: int) -> list[dict[str, float]]:
    c = await EngineClient.connect(endpoint)
    try:
        s = await c.open_session(character, player, greet=False, audio=False)
        out = []
        for i in range(turns):
            t0 = time.perf_counter()
            turn = await s.say(LINES[i % len(LINES)])
            first_delta = None
            async for msg in turn:
                if msg["type"] == "reply.text" and first_delta is None:
                    first_delta = (time.perf_counter() - t0) * 1000
                if msg["type"] == "turn.end":
                    end = msg
            t = end["timings"]
            out.append({
                "first_token": t.get("llm_first_token", float("nan")),
                "full_reply": t.get("llm_done", t["total"]),
                "client_first_text": first_delta or float("nan"),
                "tokens": end["tokens"],
            })
        return out
    finally:
        await c.close()


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="npc-bench-text-"))
    cfg = engine_config(data, llm_slots=2, budget_llm_first_token_ms=60000)
    print(f"engine: embedded SmolLM2-135M, 1 LLM thread, text only; {args.sessions} sessions x {args.turns} turns", flush=True)
    async with running_engine(cfg) as eng:
        # Warm the model itself (first load of weights into cache) so it doesn't count.
        await session_turns(eng.endpoint, "bram", "warm-up", 1)
        first: list[dict[str, float]] = []
        later: list[dict[str, float]] = []
        for i in range(args.sessions):
            ch = CHARACTERS[i % len(CHARACTERS)]
            res = await session_turns(eng.endpoint, ch, f"bench-{i}", args.turns)
            first.append(res[0])
            later += res[1:]
            print(f"  session {i + 1}/{args.sessions} ({ch}): first token {res[0]['first_token']:.0f} ms, "
                  f"later {statistics.median(r['first_token'] for r in res[1:]):.0f} ms", flush=True)
        # Cold baseline: the same first turns with the persona prefix evicted (a new
        # persona text each time defeats the KV cache), as a turn without prefix reuse would be.
        cold: list[float] = []
        chat = eng.engine.chat
        for i in range(args.sessions):
            ch = eng.engine.characters[CHARACTERS[i % len(CHARACTERS)]]
            system = f"[{i}:{time.time()}] " + persona_prompt(ch)  # unique prefix: no cache hit
            msgs = [ChatMessage("system", system), ChatMessage("user", LINES[0])]

            def first_token(msgs: list[ChatMessage] = msgs) -> float:
                t0 = time.perf_counter()
                for _ in chat.stream(msgs, GenOptions(max_tokens=1), threading.Event()):
                    return (time.perf_counter() - t0) * 1000
                return float("nan")

            cold.append(await eng.engine.llm_worker.run(first_token))

    ft_first = [r["first_token"] for r in first]
    ft_later = [r["first_token"] for r in later]
    print("\nLLM first token (ms since the text line reached the engine):")
    print(row("first turn of a session (warmed)", ft_first))
    print(row("later turns of a session", ft_later))
    print(row("cold: persona not in the KV cache", cold))
    print("\nFull reply (LLM done, ms):")
    print(row("first turn of a session", [r["full_reply"] for r in first]))
    print(row("later turns of a session", [r["full_reply"] for r in later]))
    print(row("client-side first reply.text", [r["client_first_text"] for r in first + later]))
    print(f"\nprefix-cache speed-up of first token: cold / later = "
          f"{statistics.median(cold) / statistics.median(ft_later):.1f}x (median), "
          f"{pct(cold, 0.95) / pct(ft_later, 0.95):.1f}x (p95)")
    print(f"tokens per reply: median {statistics.median(r['tokens'] for r in first + later):.0f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4, help="turns per session (first + later)")
    asyncio.run(main(ap.parse_args()))
