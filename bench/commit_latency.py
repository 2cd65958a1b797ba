"""What committing a turn's history before ``turn.end`` costs: the wait ``Session._finish`` adds.

A turn's ``turn.end`` goes out once its history rows are committed (SQLite WAL, fsynced:
``synchronous=FULL``). That wait is the store thread's round trip plus one commit, measured
here from the event loop exactly as a session awaits it, on the real ``AsyncStore``, for a
typical turn (the player's line and a two-sentence reply). For comparison, the same with
``synchronous=NORMAL`` (survives a kill of the engine, not a power cut). No audio waits on it:
``turn.end`` comes after the last chunk.

    .venv/bin/python bench/commit_latency.py                 # 300 turns, DB in a temp dir
    .venv/bin/python bench/commit_latency.py --dir ~/.local/share/npc-engine-bench --turns 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npc_engine.store import AsyncStore, HistoryEntry  # noqa: E402

USER = "What do you think of the weather lately?"
REPLY = "Hm, the forge is cold today and the coals will not catch. Come back at dawn when the iron is hot."


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(directory: Path, turns: int, synchronous: str) -> list[float]:
    store = AsyncStore(directory / f"bench-{synchronous.lower()}.sqlite3")
    # Private access on purpose: the same connection, switched to the mode being compared.
    await store._worker.run(store._store._db.execute, f"PRAGMA synchronous={synchronous}")
    entries = [HistoryEntry("user", USER), HistoryEntry("assistant", REPLY)]
    waits = []
    for n in range(turns):
        t0 = time.perf_counter()
        await store.append_history(f"p{n % 20}", "bram", entries)
        waits.append((time.perf_counter() - t0) * 1000)
    await store.close()
    return waits


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--dir", type=Path, help="where the database goes (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="npc-commit-", dir=args.dir) as tmp:
        for mode in ("FULL", "NORMAL"):
            waits = await measure(Path(tmp), args.turns, mode)
            print(f"synchronous={mode:6} {args.turns} turns: added before turn.end p50 {pct(waits, 0.5):.2f} ms, "
                  f"p95 {pct(waits, 0.95):.2f} ms, max {max(waits):.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
