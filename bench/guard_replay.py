"""Replay the model's own replies from an eval run through today's guard, offline (no model).

Takes a guard-OFF eval report (``npc-engine eval --guard both --out DIR`` writes
``DIR/guard-off/report.json``: every reply as the model wrote it), streams each reply word by
word through ``ReplyGuard`` with the conversation's context (the earlier replies the player
got, the player's line; every secret hidden) and counts what the player would get:

* deflections after a first fragment already let out: glued to it ("I'm sorry, That is no
  concern of yours") or broken off with the dash; deflections after a whole sentence;
* conversation turns that repeat an earlier reply (the eval's check on the guarded reply);
* replies whose first sentence was held whole because the player's line invites trouble.

Run it with two checkouts to compare guard versions on the same replies:

    .venv/bin/python bench/guard_replay.py eval/fast/guard-off/report.json [--show 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections import Counter
from collections.abc import AsyncGenerator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npc_engine.characters import Character
from npc_engine.pipeline.cues import Parsed
from npc_engine.quality.checks import REPEAT, CheckContext, Checker, check_reply
from npc_engine.turns.guard import ReplyGuard
from npc_engine.turns.reply import Scripted
from npc_engine.turns.speech import Speakable
from npc_engine.world import load_world

REPO = Path(__file__).resolve().parent.parent


def deflection(ch: Character, recent: list[str]) -> Speakable:
    """One of the character's deflection lines the player has not just heard (as the session picks)."""
    lines = [d.text for d in ch.deflections] or ["Hm."]
    fresh = [t for t in lines if not any(t in r for r in recent[-len(lines):])]
    return Speakable((fresh or lines)[0], prerendered=True)


async def guarded(ctx: CheckContext, ch: Character, text: str) -> tuple[list[tuple[bool, str]], ReplyGuard]:
    line = deflection(ch, list(ctx.earlier))
    guard = ReplyGuard(Checker(ctx), deflection=lambda: line, fallback=lambda: line,
                       max_sentences=ch.reply.max_sentences)

    async def pieces() -> AsyncGenerator[Parsed, None]:
        for word in re.findall(r"\s*\S+", text):
            yield Parsed(text=word)

    out = [(True, p.line.text) if isinstance(p, Scripted) else (False, p.text) async for p in guard(pieces())]
    return [(s, t) for s, t in out if t], guard


def joined(pieces: list[tuple[bool, str]]) -> str:
    text = ""
    for scripted, t in pieces:
        text += (" " if scripted and text and not text.endswith(" ") else "") + t
    return text.strip()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="a guard-off eval report.json")
    ap.add_argument("--show", type=int, default=0, help="print this many replies with a deflection after a fragment")
    args = ap.parse_args()
    characters, _ = load_world(REPO / "characters", REPO / "story")
    results = json.loads(args.report.read_text(encoding="utf-8"))["results"]
    count: Counter[str] = Counter()
    earlier: dict[str, list[str]] = {}
    shown: list[str] = []
    for r in results:
        ch: Character = characters[r["character"]]
        conv = r["kind"] != "single"
        prev = earlier.setdefault(f'{r["character"]}/{r["item"]}', []) if conv else []
        others = [n for o in characters.values() if o.id != ch.id for n in (o.name, o.id)]
        ctx = CheckContext.for_character(ch, other_names=others, hidden=ch.secrets, earlier=prev, player_line=r["player"])
        pieces, guard = await guarded(ctx, ch, r["reply"])
        got = joined(pieces)
        count["replies"] += 1
        count["adversarial" if r["adversarial"] else "ordinary"] += 1
        if getattr(guard, "provoked", None):
            count["first sentence held, adversarial" if r["adversarial"] else "first sentence held, ordinary"] += 1
        for i, (scripted, _) in enumerate(pieces):
            if scripted and i:
                before = "".join(t for _, t in pieces[:i]).rstrip()
                kind = ("deflection after a fragment, broken off with a dash" if before.endswith("—") else
                        "deflection after a whole sentence" if re.search(r"[.!?…][\"')]*$", before) else
                        "deflection glued to a fragment")
                count[kind] += 1
                if "fragment" in kind and len(shown) < args.show:
                    shown.append(got)
        if conv:
            found = check_reply(got, ch, other_names=others, hidden=ch.secrets, earlier=prev, player_line=r["player"])
            count["conversation turns"] += 1
            # A deflection line said again (three lines, rotating) is the writer's, not a model repeat.
            scripted_only = all(s for s, _ in pieces)
            count["conversation turns repeating an earlier reply"] += any(f.check == REPEAT for f in found) and not scripted_only
            prev.append(got)
    for key, n in sorted(count.items()):
        print(f"{key:55} {n}")
    for text in shown:
        print("   ", text[:140])


if __name__ == "__main__":
    asyncio.run(main())
