"""``npc-engine check``: validate characters and story files, printing ``file:line: message``.

The checks themselves are :mod:`npc_engine.world`; this is the command line front.
Wire-up (in ``npc_engine/cli/__init__.py``)::

    sub = subparsers.add_parser("check", help=check.HELP)
    check.configure(sub)
    ...
    return check.run(args)

Also runnable on its own: ``python -m npc_engine.cli.check [paths...]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from npc_engine.story.intents import rank
from npc_engine.story.runtime import Story
from npc_engine.world import DEFAULT_PATHS, check_paths

HELP = "validate characters/ and story/ files (errors as file:line: message)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``npc-engine check``'s arguments to ``parser``."""
    parser.description = (
        "Check characters and story files. Prints one 'file:line: message' per problem and a summary; "
        "exits 1 if there are errors (or warnings, with --strict)."
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or folders to check (default: characters/ and story/ in the current folder)",
    )
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    parser.add_argument(
        "--explain",
        metavar="TEXT",
        help="also show how a player line scores against every intent (to tune examples and keywords)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the check; returns the process exit code (0 clean, 1 problems)."""
    paths = list(args.paths) or list(DEFAULT_PATHS)
    report = check_paths(paths)
    out = sys.stdout
    for p in report.problems:
        print(p, file=out)
    explain = getattr(args, "explain", None)
    if explain:
        print(_explain(report.story, explain), file=out)
    print(report.summary(), file=out)
    failed = bool(report.errors) or (bool(getattr(args, "strict", False)) and bool(report.warnings))
    return 1 if failed else 0


def _explain(story: Story | None, text: str) -> str:
    if story is None or not story.intents:
        return f"intents for {text!r}: no story with intents loaded"
    rows = [f"intents for {text!r} (best first; fires at or above min_score):"]
    for m in rank(text, list(story.intents.values())):
        intent = story.intents[m.intent]
        mark = "*" if m.score >= intent.min_score else " "
        rows.append(f" {mark} {m.intent:<24} {m.score:.2f} (min {intent.min_score:.2f})  {m.reason}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npc-engine check")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
