"""``npc-engine bench``: what a player feels, the engine against its ``--baseline`` preset.

The library behind ``npc_engine/cli/bench.py`` (and the thin ``bench/ttfa.py`` script):

* ``workload``: the player turns replayed (fixture WAVs with their end of speech, typed lines);
* ``sidecar``: spawn ``python -m npc_engine serve`` on a free port with a temp data dir;
* ``replay``: one session's turns over a real ZeroMQ socket, as a player plays them, timed on the client;
* ``felt``: end of speech, felt and content TTFA and the longest silence, new vs baseline (pure);
* ``naive``: the same models driven one after another, whole input to whole output (``--naive``);
* ``stats`` / ``report`` / ``plot``: medians, p95s, ratios, targets, the text report, JSON and a PNG;
* ``runner``: the phases, with progress and a time budget.
"""
