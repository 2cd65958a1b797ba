"""Games that vanish: N clients (1,000 by default) each open a session and go away without
``session.close`` (their DEALER socket is closed). What does the engine keep?

Starts a real sidecar as a subprocess (``--tts none --stt none``, a short idle timeout via
``NPC_ENGINE_SESSION_IDLE_TIMEOUT_S``) with its Prometheus metrics on, and reports the engine
process's resident memory and open sessions: before, once every client has gone, and after
the idle timeout has passed (waiting until no session is left, or a bounded time).

    .venv/bin/python bench/vanishing_clients.py
    .venv/bin/python bench/vanishing_clients.py --root /tmp/npc-before   # another checkout's code
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npc_engine.client import EngineClient  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from spawn import free_port, start_engine  # noqa: E402

CHARACTERS = ["bram", "marta", "aldric"]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def open_sessions(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^npc_engine_active_sessions\s+([0-9.e+]+)$", text, re.M)
    return int(float(m.group(1))) if m else -1


async def vanish(endpoint: str, i: int) -> None:
    c = await EngineClient.connect(endpoint, timeout=120)
    await c.open_session(CHARACTERS[i % 3], f"gone-{i}", greet=False, audio=False, vars={"player_name": f"Wanderer {i}"})
    await c.close()  # no session.close: the game just went away


async def main(args: argparse.Namespace, root: Path) -> None:
    port, metrics = free_port(), free_port()
    engine = await start_engine(
        root, Path(tempfile.mkdtemp(prefix="npc-vanish-")), port, "--metrics-port", str(metrics),
        env={"NPC_ENGINE_SESSION_IDLE_TIMEOUT_S": str(args.idle), "NPC_ENGINE_MAX_PLAYERS_CACHED": "100"},
    )
    proc = engine.proc
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        await vanish(endpoint, -1)  # one session first: the model warmed, the tables made
        before = rss_mib(proc.pid)
        t0 = time.perf_counter()
        for start in range(0, args.clients, 50):
            await asyncio.gather(*(vanish(endpoint, i) for i in range(start, min(args.clients, start + 50))))
        gone, left_then = rss_mib(proc.pid), open_sessions(metrics)
        deadline = time.monotonic() + args.idle * 3 + 30
        while open_sessions(metrics) > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.5)
        print(f"engine code: {root}; {args.clients} clients opened a session and vanished in "
              f"{time.perf_counter() - t0:.1f} s; idle timeout {args.idle:.0f} s")
        print(f"engine RSS: {before:.0f} MiB before, {gone:.0f} MiB when the last had gone "
              f"({left_then} sessions open), {rss_mib(proc.pid):.0f} MiB after the idle timeout "
              f"({open_sessions(metrics)} sessions open)")
    finally:
        await engine.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=10.0, help="session idle timeout, seconds")
    ap.add_argument("--root", default=str(REPO), help="the checkout whose engine code and world to run")
    parsed = ap.parse_args()
    asyncio.run(main(parsed, Path(parsed.root).resolve()))
