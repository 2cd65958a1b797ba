"""``npc-engine keys``: make the engine's CURVE key pair, for serving beyond loopback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir", type=Path, dest="key_dir", metavar="DIR",
        help="where to write server.key (public) and server.key_secret (default: <data dir>/keys)",
    )
    p.add_argument("--force", action="store_true", help="replace existing keys (games then need the new public key)")


def run(args: argparse.Namespace) -> int:
    # Imported here: `npc-engine --help` must not load the server.
    from npc_engine.config import EngineConfig
    from npc_engine.server.auth import write_keys

    directory: Path = args.key_dir or EngineConfig.from_env().data_dir / "keys"
    try:
        keys, public_path, secret_path = write_keys(directory, force=args.force)
    except OSError as exc:
        print(f"npc-engine keys: {exc}", file=sys.stderr)
        return 1
    public = keys.public.decode("ascii")
    print(f"""\
Wrote the engine's CURVE key pair:
  {secret_path}  secret (mode 0600): stays with the engine, never give it out
  {public_path}  public

Server public key (give it to your game builds; only clients that know it can connect):
  {public}

Serve beyond loopback with it:
  npc-engine serve --endpoint tcp://0.0.0.0:5555 --curve-secret-key {secret_path}

Connect:
  Python:  await EngineClient.connect("tcp://HOST:5555", server_key="{public}")
  Node:    NPC_ENGINE_SERVER_KEY='{public}' node clients/node/conformance.mjs tcp://HOST:5555
  Others:  a ZeroMQ CURVE client: curve_serverkey = this key, plus a key pair of its own
           (docs/protocol.md, Security)""")
    return 0
