"""What a player feels: felt and content TTFA, the engine vs its --baseline preset, under concurrency.

    python bench/ttfa.py [--quick] [--json out.json] [--plot out.png] [--endpoint tcp://...]

The same as ``npc-engine bench`` (the code is ``npc_engine.benchmark``); see docs/latency.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npc_engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
