"""``npc-engine bench``: time to first audio, stage by stage, against a naive baseline.

The library behind ``npc_engine/cli/bench.py`` (and the thin ``bench/ttfa.py`` script):

* ``workload``: the player turns replayed (fixture WAVs pushed at real-time pace, and typed lines);
* ``sidecar``: spawn ``python -m npc_engine serve`` on a free port with a temp data dir;
* ``replay``: one session's turns over a real ZeroMQ socket, timed on the client;
* ``naive``: the same models driven one after another, whole input to whole output;
* ``stats`` / ``report`` / ``plot``: medians, p95s, ratios, the text report, JSON and a PNG;
* ``runner``: the phases, with progress and a time budget.
"""
