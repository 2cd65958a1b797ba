"""``npc-engine eval``: put the eval's player lines to the NPCs and score every reply.

Runs in-process (no sidecar, no voice): each line as the first turn of a new player, then the
scripted 10-turn conversations, through the real engine and sessions, with the guard on
(default) or off. Progress goes to stderr; the tables to stdout and, with ``--out``, to
``DIR/report.md`` and ``DIR/report.json``. ``--compare`` puts earlier reports side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from npc_engine.config import EngineConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm-model", help="profile (fast, balanced, quality) or a GGUF file (default: the default profile)")
    p.add_argument("--llm", choices=["embedded", "ollama"], help="embedded llama.cpp (default) or your Ollama")
    p.add_argument("--ollama-model", help="Ollama model name, with --llm ollama")
    p.add_argument("--guard", choices=["on", "off", "both"], default="on",
                   help="the guard stage on (default), off, or both: every line twice, one model load, "
                        "a report for each and one side by side")
    p.add_argument("--no-guard", action="store_const", dest="guard", const="off", help="the same as --guard off")
    p.add_argument("--characters", help="comma-separated character ids to talk to (default: all)")
    p.add_argument("--lines", type=int, metavar="N",
                   help="only N single lines, taken across the categories in turn (default: all)")
    p.add_argument("--no-conversations", action="store_true", help="single lines only")
    p.add_argument("--no-singles", action="store_true", help="the scripted conversations only")
    p.add_argument("--seed", type=int, default=1, help="sampling seed (default 1); the same seed repeats a run")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the engine's, 0.7)")
    p.add_argument("--parallel", type=int, default=4,
                   help="sessions talking at once, decoded in one llama.cpp batch (default 4)")
    p.add_argument("--llm-threads", type=int, help="llama.cpp threads (default 1)")
    p.add_argument("--lines-file", type=Path, help="player lines YAML (default: the eval's own, npc_engine/quality/data/lines.yaml)")
    p.add_argument("--characters-dir", type=Path, help="directory of character YAML (default ./characters)")
    p.add_argument("--story", type=Path, help="directory of story YAML (default ./story)")
    p.add_argument("--out", type=Path, metavar="DIR", help="write DIR/report.md and DIR/report.json")
    p.add_argument("--compare", type=Path, nargs="+", metavar="REPORT_JSON",
                   help="no run: print earlier report.json files side by side (character x model)")
    p.add_argument("--common", action="store_true",
                   help="with --compare: only the turns every report has (compare runs of different subsets)")


def run(args: argparse.Namespace) -> int:
    from npc_engine.quality import report
    from npc_engine.quality.lines import DEFAULT_LINES, LinesError, load_lines

    if args.compare:
        try:
            runs = [report.run_from_json(json.loads(p.read_text(encoding="utf-8"))) for p in args.compare]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"npc-engine eval: cannot read a report: {exc}", file=sys.stderr)
            return 2
        models = [r.info.model for r in runs]
        # Two reports of the same model: name each by its directory (eval/fast-old, eval/fast-new).
        labels = [m if models.count(m) == 1 else _run_dir(p) for m, p in zip(models, args.compare, strict=True)]
        table = report.compare_markdown(report.common_items(runs) if args.common else runs, labels)
        print(table)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compare.md").write_text(table, encoding="utf-8")
        return 0

    from npc_engine.pipeline.base import ModelError
    from npc_engine.quality.eval import EvalOptions, evaluate

    lines_file = args.lines_file or DEFAULT_LINES
    try:
        lines = load_lines(lines_file)
        cfg = EngineConfig.from_env(
            llm=args.llm, llm_model=args.llm_model, ollama_model=args.ollama_model, llm_threads=args.llm_threads,
            characters=args.characters_dir, story=args.story, temperature=args.temperature,
        )
    except (LinesError, ValueError) as exc:
        print(f"npc-engine eval: {exc}", file=sys.stderr)
        return 2
    characters = [c.strip() for c in args.characters.split(",") if c.strip()] if args.characters else None
    lines = lines.select(characters, args.lines, conversations=not args.no_conversations)
    # Enough llama.cpp slots for every session talking at once, so none waits for a slot.
    cfg.llm_slots = max(cfg.llm_slots, args.parallel)
    guards = {"on": (True,), "off": (False,), "both": (True, False)}[args.guard]
    options = EvalOptions(guards=guards, seed=args.seed, parallel=args.parallel,
                          singles=not args.no_singles, conversations=not args.no_conversations,
                          characters=tuple(characters) if characters else None)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    label = args.llm_model or (f"ollama:{cfg.ollama_model}" if cfg.llm == "ollama" else None)
    try:
        runs = asyncio.run(evaluate(cfg, lines, options, model_label=label, lines_file=str(lines_file),
                                    progress=progress))
    except (ModelError, FileNotFoundError, LinesError) as exc:
        print(f"npc-engine eval: {exc}", file=sys.stderr)
        return 1
    for result in runs:
        print(report.run_markdown(result))
        if args.out:
            where = args.out / ("guard-on" if result.info.guard else "guard-off") if len(runs) > 1 else args.out
            md, js = report.write_run(result, where)
            progress(f"wrote {md} and {js}")
    if len(runs) > 1:
        table = report.compare_markdown(runs)
        print(table)
        if args.out:
            (args.out / "compare.md").write_text(table, encoding="utf-8")
    return 0


def _run_dir(report_json: Path) -> str:
    """``eval/fast/guard-on/report.json`` -> ``fast``; ``eval/baseline/report.json`` -> ``baseline``."""
    parent = report_json.parent
    return parent.parent.name if parent.name in ("guard-on", "guard-off") else parent.name
