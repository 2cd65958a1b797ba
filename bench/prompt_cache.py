"""Prompt tokens evaluated per turn over a long conversation: history trimmed in blocks vs sliding,
and the trimmed prompt warmed in the background (or not) while the reply plays.

Runs a real sidecar in-process (embedded LLM, text only) and has one 20-turn conversation with
Marta per (profile, history_block, warm-up), with the engine's default slots and context. Each
turn's ``turn.end`` gives the prompt's size (``prompt_tokens``), how much of it llama.cpp
evaluated (``prompt_tokens_evaluated``; the rest came from the KV cache) and the first token's
time; the session's counters (``Session.warmed``) give what its background warm-up evaluated
after the previous turn, shown separately ("warm"). ``history_block`` 1 is the old window that
slid by one exchange every turn once full (issue #10).

Warm-ups: ``on`` is the engine as it is (a turn whose end changes the next prompt's beginning,
a trim or a new system prompt, has that prompt evaluated up to the player's line in the
background); ``off`` runs the same engine with that end-of-turn warm-up switched off in this
process (the open's warm-up stays), i.e. as before. By default the next line is sent once the
warm-up has settled, as after a reply heard out; ``--no-listen`` sends it as soon as
``turn.end`` arrives, so a warm-up is still running when the turn comes (the worst case: the
turn waits for it).

    .venv/bin/python bench/prompt_cache.py                          # fast, blocks 1 and 4, warm on and off
    .venv/bin/python bench/prompt_cache.py --blocks 4 --warm on off --no-listen
    .venv/bin/python bench/prompt_cache.py --profiles fast balanced --blocks 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npc_engine.client import EngineClient  # noqa: E402
from npc_engine.config import EngineConfig  # noqa: E402
from npc_engine.session.session import Session  # noqa: E402
from tests.harness import engine_config, eventually, running_engine  # noqa: E402
from tests.test_prompt_cache import LINES  # noqa: E402  (small talk that moves no story beat)


class Turn(TypedDict):
    prompt: int
    evaluated: int
    warmed: int  # evaluated by the session's warm-up between the previous turn's end and this one
    first_token_ms: float


@contextlib.contextmanager
def end_of_turn_warm_ups(on: bool) -> Iterator[None]:
    """``off``: the sessions of this process skip the warm-up at a turn's end (as before it
    existed); the one at open still runs."""
    if on:
        yield
        return
    start = Session._start_warm

    def open_only(self: Session, *, only_if_changed: bool) -> None:
        if not only_if_changed:
            start(self, only_if_changed=only_if_changed)

    Session._start_warm = open_only  # type: ignore[method-assign]
    try:
        yield
    finally:
        Session._start_warm = start  # type: ignore[method-assign]


async def conversation(
    data_dir: Path, profile: str, block: int, history_turns: int, turns: int, *, warm: bool, listen: bool
) -> list[Turn]:
    defaults = EngineConfig()
    cfg = engine_config(
        data_dir, llm_model=profile, history_turns=history_turns, history_block=block,
        llm_slots=defaults.llm_slots, llm_ctx=defaults.llm_ctx,
    )
    out: list[Turn] = []
    with end_of_turn_warm_ups(warm):
        async with running_engine(cfg) as running:
            client = await EngineClient.connect(running.endpoint)
            try:
                s = await client.open_session("marta", "bench-player", greet=False, audio=False)
                session = running.server.sessions[s.id]
                # The open's warm-up (the persona) is not the first turn's.
                await eventually(lambda: not session.warming, what="the open's warm-up")
                counted = session.warmed.evaluated
                for i in range(turns):
                    if listen:
                        await eventually(lambda: not session.warming, what="the warm-up to settle")
                        warmed, counted = session.warmed.evaluated - counted, session.warmed.evaluated
                    end = (await (await s.say(LINES[i % len(LINES)])).collect())[-1]
                    if not listen:
                        # The previous turn's warm-up was settled by this turn (waited for or
                        # cancelled); this turn's has only just been queued.
                        warmed, counted = session.warmed.evaluated - counted, session.warmed.evaluated
                    out.append({
                        "prompt": int(end.get("prompt_tokens") or 0),
                        "evaluated": int(end.get("prompt_tokens_evaluated") or 0),
                        "warmed": warmed,
                        "first_token_ms": float(end["timings"].get("llm_first_token", float("nan"))),
                    })
            finally:
                await client.close()
    return out


def trimmed(turns: int, window: int, block: int) -> list[int]:
    """Turns (0-based) right after a trim: the window holds up to ``window + block - 1``
    exchanges, so the end of turn ``window + block`` (1-based) trims, then every ``block``."""
    first = window + block  # 0-based index of the first turn after a trim
    return list(range(first, turns, block))


def summary(name: str, runs: list[Turn], full_from: int, after: set[int]) -> str:
    later = runs[1:]
    ft_trim = [runs[i]["first_token_ms"] for i in sorted(after)]
    ft_rest = [t["first_token_ms"] for i, t in enumerate(runs) if i and i not in after]
    trim_text = (
        f"after a trim (turns {', '.join(str(i + 1) for i in sorted(after))}): first token median "
        f"{statistics.median(ft_trim):>6.0f} ms, max {max(ft_trim):>6.0f} ms"
        if ft_trim else "no trim"
    )
    return (
        f"  {name:<18} turns 2-{len(runs)}: evaluated {sum(t['evaluated'] for t in later):>5} in turns + "
        f"{sum(t['warmed'] for t in later):>5} warmed; {trim_text}; other turns median "
        f"{statistics.median(ft_rest):>5.0f} ms; turns {full_from}-{len(runs)} median "
        f"{statistics.median(t['first_token_ms'] for t in runs[full_from - 1:]):>5.0f} ms"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["fast"])
    ap.add_argument("--blocks", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--warm", nargs="+", choices=["on", "off"], default=["off", "on"])
    ap.add_argument("--no-listen", action="store_true", help="send each line as soon as turn.end arrives")
    ap.add_argument("--history-turns", type=int, default=EngineConfig().history_turns)
    ap.add_argument("--turns", type=int, default=len(LINES))
    args = ap.parse_args()
    runs = [(block, warm) for block in args.blocks for warm in args.warm]
    for profile in args.profiles:
        results: dict[tuple[int, str], list[Turn]] = {}
        for block, warm in runs:
            with tempfile.TemporaryDirectory() as tmp:
                results[block, warm] = await conversation(
                    Path(tmp), profile, block, args.history_turns, args.turns, warm=warm == "on", listen=not args.no_listen,
                )
        print(
            f"\n{profile}: history_turns {args.history_turns}, {'no listening' if args.no_listen else 'warm-ups waited out'}; "
            "per turn: prompt tokens / evaluated in the turn / evaluated by the warm-up before it / first token ms"
        )
        print("turn " + "".join(f"| block {b:<2} warm {w:<3}  prompt  eval  warm  first ms " for b, w in runs))
        for i in range(args.turns):
            cells = "".join(
                f"| {'':16} {r['prompt']:>6} {r['evaluated']:>5} {r['warmed']:>5} {r['first_token_ms']:>9.0f} "
                for r in (results[key][i] for key in runs)
            )
            print(f"{i + 1:>4} {cells}")
        # From this turn on, a window sliding by one exchange drops one every turn.
        full_from = args.history_turns + 2
        for block, warm in runs:
            after = set(trimmed(args.turns, args.history_turns, block))
            print(summary(f"block {block} warm {warm}", results[block, warm], full_from, after))


if __name__ == "__main__":
    asyncio.run(main())
