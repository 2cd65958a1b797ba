"""Many games at once: N clients (50 by default), each opening one session and sending one text turn.

Starts a real sidecar as a subprocess (embedded SmolLM2, ``--tts none --stt none``, default
budgets and LLM slots) on a free loopback port, then connects every client at once. Each
client opens a session with one of the characters and sends its line as soon as the session
is open. Reports, over all clients:

- time to first token as the player sees it: from sending the ``text`` to the first
  ``reply.text`` (the model's first words, or a fallback line);
- the engine's own ``llm_first_token`` mark, for turns the model answered;
- how many got a scripted fallback line instead of the model's reply, and the statuses.

    .venv/bin/python bench/fifty_clients.py
    .venv/bin/python bench/fifty_clients.py --clients 50 --root /tmp/npc-before   # another checkout's code
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npc_engine.client import EngineClient  # noqa: E402
from npc_engine.world import load_world  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from spawn import free_port, start_engine  # noqa: E402

LINES = [
    "Good day to you!",
    "What do you sell here?",
    "How long have you lived in this village?",
    "What do you think of the weather lately?",
    "Do you have any advice for a traveller?",
]
CHARACTERS = ["bram", "marta", "aldric"]
TURN_TIMEOUT_S = 180.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def one_client(endpoint: str, i: int, fallbacks: dict[str, set[str]]) -> dict[str, Any]:
    character = CHARACTERS[i % len(CHARACTERS)]
    c = await EngineClient.connect(endpoint, timeout=60)
    try:
        s = await c.open_session(character, f"crowd-{i}", greet=False, audio=False)
        t0 = time.perf_counter()
        turn = await s.say(LINES[i % len(LINES)], timeout=TURN_TIMEOUT_S)
        first_text: float | None = None
        end: dict[str, Any] = {}
        async for m in turn:
            if m["type"] == "reply.text" and first_text is None:
                first_text = (time.perf_counter() - t0) * 1000
            if m["type"] == "turn.end":
                end = m
        text = str(end.get("text", "")).strip()
        return {
            "first_text_ms": first_text,
            "llm_first_token_ms": end.get("timings", {}).get("llm_first_token"),
            "status": end.get("status"),
            "fallback": text in fallbacks[character],
            "degraded": end.get("degraded") or [],
        }
    finally:
        await c.close()


async def main(args: argparse.Namespace, root: Path) -> None:
    characters, _ = load_world(root / "characters", root / "story")
    fallbacks = {cid: {line.text.strip() for line in ch.fallbacks} for cid, ch in characters.items()}
    data = Path(tempfile.mkdtemp(prefix="npc-fifty-"))
    port = free_port()
    engine = await start_engine(root, data, port)
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(*(one_client(endpoint, i, fallbacks) for i in range(args.clients))),
            timeout=TURN_TIMEOUT_S + 120,
        )
        wall = time.perf_counter() - t0
    finally:
        await engine.stop()
    firsts = [r["first_text_ms"] for r in results if r["first_text_ms"] is not None]
    model = [r["llm_first_token_ms"] for r in results if r["llm_first_token_ms"] is not None]
    statuses = collections.Counter(r["status"] for r in results)
    reasons = collections.Counter(d["reason"] for r in results for d in r["degraded"])
    print(f"engine code: {root}; {args.clients} clients, one text turn each, wall {wall:.1f} s")
    print(f"first reply.text after the text was sent: n={len(firsts)}  p50 {pct(firsts, 0.5):.0f} ms  "
          f"p95 {pct(firsts, 0.95):.0f} ms  max {max(firsts, default=float('nan')):.0f} ms")
    print(f"engine llm_first_token (turns the model answered): n={len(model)}  p50 {pct(model, 0.5):.0f} ms  "
          f"p95 {pct(model, 0.95):.0f} ms")
    print(f"fallback lines: {sum(r['fallback'] for r in results)} of {len(results)}; statuses {dict(statuses)}")
    for reason, n in reasons.most_common(6):
        print(f"  degraded x{n}: {reason}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--root", default=str(REPO), help="the checkout whose engine code and world to run")
    parsed = ap.parse_args()
    asyncio.run(main(parsed, Path(parsed.root).resolve()))
