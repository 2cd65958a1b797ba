"""``npc-engine``: the command line.

Each command lives in its own module of this package, exposing ``configure(parser)`` and
``run(args) -> int``; this file only lists them, so ``--help`` stays fast (no model imports).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from npc_engine import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("npc_engine.cli.serve", "run the sidecar: load the models and listen for games over ZeroMQ"),
    "check": ("npc_engine.cli.check", "validate characters/ and story/ YAML; print file:line errors"),
    "say": ("npc_engine.cli.say", "render a line in a character's voice to a WAV (+ viseme JSON)"),
    "models": ("npc_engine.cli.models", "show and verify the embedded models"),
    "bench": ("npc_engine.cli.bench", "measure time to first audio against a running or spawned sidecar"),
    "eval": ("npc_engine.cli.eval", "put the eval's player lines to the NPCs; pass rates of the reply checks"),
    "keys": ("npc_engine.cli.keys", "make the engine's CURVE key pair, to serve beyond loopback (encrypted)"),
}

EPILOG = """\
examples:
  npc-engine serve                         start on tcp://127.0.0.1:5555 with the embedded models
  npc-engine serve --llm ollama --ollama-model llama3.2
  npc-engine check characters/ story/      validate what writers authored
  npc-engine say bram "Welcome to my forge." -o bram.wav
  npc-engine bench --turns 30              latency report (median / p95 per stage)
  npc-engine keys                          CURVE keys, then: serve --endpoint tcp://0.0.0.0:5555 --curve-secret-key FILE

Every serve option can also be set as NPC_ENGINE_<OPTION>, e.g. NPC_ENGINE_LLM=ollama.
Protocol and guides: docs/protocol.md, docs/writing.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npc-engine",
        description="Local, offline, streaming voice engine for game NPCs (a ZeroMQ sidecar).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"npc-engine {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).configure(p)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("asyncio", "numba", "phonemizer", "urllib3", "httpx", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"npc-engine: the '{args.command}' command is not available in this build", file=sys.stderr)
        return 2
    setup_logging(args.verbose, args.quiet)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130

