"""Lifecycle and limits over a real socket: nothing is left behind, nothing grows without bound,
and one game cannot make another's players wait.

- a failed ``session.open`` leaves no session (its id opens again at once);
- sessions of a game that vanished expire after ``session_idle_timeout_s``; 1,000 vanished
  clients leave no session, no peer entry and at most ``max_players_cached`` story states;
- per connection: at most ``max_sessions_per_client`` open sessions (``overloaded``), at most
  ``max_queued_turns_per_client`` turns waiting for the model (a fallback line beyond);
- ids 1-128 characters everywhere, ``vars`` bounded (``invalid_field``);
- a line templated with a player's name is never written to the on-disk line cache;
- the real model: one client opening and closing 300 sessions does not hold up another
  player's reply.

The unit-layer side (warm-ups of closed sessions, the first-token clock) is in
``tests/unit/test_lifecycle.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from npc_engine.client import EngineClient, EngineError
from npc_engine.store import HistoryEntry
from tests.harness import Running, engine_config, eventually, running_engine

WAIT = 120.0  # a safety net only: every wait below ends on a condition long before this


async def next_of(queue: asyncio.Queue[dict[str, Any]], kind: str, timeout: float = WAIT) -> dict[str, Any]:
    """The next message of type ``kind`` from one of the client's queues (others are skipped)."""

    async def find() -> dict[str, Any]:
        while (m := await queue.get())["type"] != kind:
            pass
        return m

    return await asyncio.wait_for(find(), timeout)


def fallback_texts(running: Running, character: str) -> set[str]:
    return {line.text for line in running.engine.characters[character].fallbacks}


# --------------------------------------------------------------------------- failed open


async def test_a_failed_open_leaves_nothing_behind_and_its_id_opens_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_engine(engine_config(tmp_path)) as running:
        store = running.engine.store
        real_load = store.load_history
        failed: list[str] = []

        async def fails_once(player: str, character: str, limit: int | None = None) -> list[HistoryEntry]:
            if not failed:  # injected fault: the store fails for this one open
                failed.append(player)
                raise OSError("disk I/O error (injected by the test)")
            return await real_load(player, character, limit)

        monkeypatch.setattr(store, "load_history", fails_once)
        async with await EngineClient.connect(running.endpoint) as c:
            with pytest.raises(EngineError) as refused:
                await c.open_session("bram", "p-fail", greet=False, audio=False, session="s-fail")
            assert refused.value.code == "internal"
            assert "s-fail" not in running.server.sessions
            assert "s-fail" not in running.server.registry.peers
            assert not running.engine.story_states.in_use("p-fail")
            again = await c.open_session("bram", "p-fail", greet=False, audio=False, session="s-fail")
            assert again.id == "s-fail" and failed == ["p-fail"]
            turn = await again.say("Good morning!")
            assert (await turn.collect())[-1]["type"] == "turn.end"


# --------------------------------------------------------------------------- idle expiry


async def test_a_session_nobody_speaks_for_expires_after_its_turn_ended(tmp_path: Path) -> None:
    async with (
        running_engine(engine_config(tmp_path, session_idle_timeout_s=1.0)) as running,
        await EngineClient.connect(running.endpoint) as c,
    ):
        s = await c.open_session("bram", "p-idle", greet=False, audio=False)
        turn = await s.say("Good morning! Do you sell swords?")
        # ...and the game says nothing more for this session.
        closed = await next_of(s.other, "session.closed")
        assert closed["session"] == s.id and closed.get("id") is None, "closed by the engine, not a reply"
        # Its turn (cancelled if it was still running) ended before session.closed.
        assert not turn.queue.empty(), "the turn's messages came before session.closed"
        msgs = await turn.collect(timeout=0.5)
        assert msgs[-1]["type"] == "turn.end" and msgs[-1]["status"] in ("ok", "degraded", "cancelled")
        assert s.id not in running.server.sessions and s.id not in running.server.registry.peers
        with pytest.raises(EngineError) as gone:
            await s.say("Hello?")
        assert gone.value.code == "session_closed"


async def test_a_session_its_game_keeps_using_does_not_expire(tmp_path: Path) -> None:
    async with (
        running_engine(engine_config(tmp_path, session_idle_timeout_s=3.0)) as running,
        await EngineClient.connect(running.endpoint) as c,
    ):
        s = await c.open_session("bram", "p-busy", greet=False, audio=False)
        quiet = await c.open_session("marta", "p-busy", greet=False, audio=False)
        # The game keeps using one session (a state.save every 50 ms) until the other expires.
        for _ in range(int(WAIT / 0.05)):
            if quiet.id not in running.server.sessions or s.id not in running.server.sessions:
                break
            await s.save()
            await asyncio.sleep(0.05)
        assert s.id in running.server.sessions, "a session its game keeps using stays open"
        assert quiet.id not in running.server.sessions


@pytest.mark.slow
async def test_a_thousand_vanished_clients_leave_nothing_behind(tmp_path: Path) -> None:
    clients, batch, cap = 1000, 50, 100
    cfg = engine_config(tmp_path, session_idle_timeout_s=2.0, max_players_cached=cap)
    async with running_engine(cfg) as running:
        registry, engine = running.server.registry, running.engine

        async def vanish(i: int) -> None:
            c = await EngineClient.connect(running.endpoint, timeout=WAIT)
            await c.open_session(("bram", "marta", "aldric")[i % 3], f"gone-{i}", greet=False, audio=False,
                                 vars={"player_name": f"Wanderer {i}"})
            await c.close()  # no session.close: the game just went away

        gc.collect()
        tracemalloc.start()
        try:
            rss_before = _rss_mib()
            for start in range(0, clients, batch):
                await asyncio.gather(*(vanish(i) for i in range(start, start + batch)))
            gc.collect()
            peak_sessions, at_peak, _ = len(registry), tracemalloc.get_traced_memory()[0], _rss_mib()
            await eventually(lambda: len(registry) == 0, what="every vanished client's session to expire")
            await eventually(lambda: not registry.peers, what="every peer entry to go with its session")
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            print(
                f"\n{clients} vanished clients: {peak_sessions} sessions still open when the last had gone, "
                f"{len(registry)} after expiry; Python heap +{at_peak / 2**20:.1f} MiB then +{after / 2**20:.1f} MiB "
                f"(tracemalloc); RSS {rss_before:.0f} -> {_rss_mib():.0f} MiB; "
                f"{len(engine.story_states)} story states cached (cap {cap})"
            )
        finally:
            tracemalloc.stop()
        assert len(engine.story_states) <= cap
        assert engine.story_states.locks == 0


def _rss_mib() -> float:
    """This process's resident set size now (its peak where /proc is missing)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- per-client limits


async def test_a_client_has_at_most_its_sessions_open(tmp_path: Path) -> None:
    async with (
        running_engine(engine_config(tmp_path, max_sessions_per_client=3)) as running,
        await EngineClient.connect(running.endpoint) as a,
        await EngineClient.connect(running.endpoint) as b,
    ):
        opened = [await a.open_session("bram", f"p{i}", greet=False, audio=False) for i in range(3)]
        with pytest.raises(EngineError) as over:
            await a.open_session("bram", "p3", greet=False, audio=False, session="one-too-many")
        assert over.value.code == "overloaded"
        assert "one-too-many" not in running.server.sessions
        await b.open_session("bram", "p-b", greet=False, audio=False)  # another game is not limited by a's
        await opened[0].close()
        await a.open_session("bram", "p3", greet=False, audio=False)


async def test_past_its_queued_turns_limit_a_game_gets_a_fallback_line_at_once(tmp_path: Path) -> None:
    async with (
        running_engine(engine_config(tmp_path, max_queued_turns_per_client=0)) as running,
        await EngineClient.connect(running.endpoint) as c,
    ):
        s = await c.open_session("bram", "p-queue", greet=False, audio=False)
        msgs = await (await s.say("Good morning! Do you sell swords?")).collect()
        end = msgs[-1]
        assert end["status"] == "degraded" and end["tokens"] == 0
        assert end["text"] in fallback_texts(running, "bram")
        assert any("waiting for the model" in d["reason"] for d in end["degraded"])
        assert "llm_first_token" not in end["timings"]


# --------------------------------------------------------------------------- ids and vars


async def test_ids_and_vars_are_held_to_their_documented_limits(tmp_path: Path) -> None:
    long, ok = "x" * 129, "y" * 128
    async with (
        running_engine(engine_config(tmp_path, max_vars_bytes=256)) as running,
        await EngineClient.connect(running.endpoint) as c,
    ):
        s = await c.open_session("bram", ok, greet=False, audio=False, session=ok, vars={"player_name": "Ada"})
        assert s.id == ok
        refused: dict[str, dict[str, Any]] = {
            "player": {"type": "session.open", "character": "bram", "player": long},
            "session": {"type": "session.open", "character": "bram", "session": long},
            "character": {"type": "session.open", "character": long},
            "event player": {"type": "event", "name": "x", "player": long},
            "event session": {"type": "event", "name": "x", "session": long},
            "state.get player": {"type": "state.get", "player": long},
            "vars size": {"type": "session.open", "character": "bram", "vars": {"player_name": "z" * 300}},
            "vars count": {"type": "session.open", "character": "bram", "vars": {f"v{i}": 1 for i in range(65)}},
            "vars name": {"type": "session.open", "character": "bram", "vars": {"n" * 65: 1}},
        }
        for what, message in refused.items():
            with pytest.raises(EngineError) as err:
                await c.request(message)
            assert err.value.code == "invalid_field", f"{what}: {err.value}"
            assert ("vars" in what) == ("vars" in err.value.message), f"{what}: {err.value.message}"
        assert list(running.server.sessions) == [ok], "nothing refused was opened"
        # A str request id is an id too: the error still echoes it, so the game can match it.
        await c.send({"type": "ping", "id": long})
        err_msg = await next_of(c.errors, "error")
        assert err_msg["code"] == "invalid_field" and err_msg["id"] == long
        assert (await c.request({"type": "ping", "id": 7}))["type"] == "pong"


# --------------------------------------------------------------------------- templated lines


async def test_a_line_templated_with_a_players_name_is_not_cached_on_disk(tmp_path: Path) -> None:
    name = "Quillibrand"
    async with running_engine(engine_config(tmp_path, tts="espeak")) as running:
        cache = running.engine.line_cache
        assert cache is not None
        async with await EngineClient.connect(running.endpoint) as c:
            s = await c.open_session("bram", "p-tmpl", greet=False, vars={"player_name": name})
            # Picking the hammer up moves Bram's story on: he says a line with the player's name.
            await s.event("item.picked_up", {"item": "hammer"})
            msgs = await (await s.next_turn()).collect()
            spoken = [m["text"] for m in msgs if m["type"] == "reply.audio"]
            assert any(name in t for t in spoken), f"the templated line was spoken: {spoken}"
            await asyncio.wait_for(running.engine.prerendered.wait(), WAIT)
        on_disk = [json.loads(p.read_text(encoding="utf-8"))["text"] for p in cache.directory.glob("*.json")]
        assert on_disk, "authored lines are still cached on disk"
        assert not [t for t in on_disk if name in t], "a line with a player's name was written to disk"


# --------------------------------------------------------------------------- the real model under a burst


@pytest.mark.slow
async def test_a_burst_of_sessions_opened_and_closed_does_not_hold_up_another_players_reply(tmp_path: Path) -> None:
    # A budget far above what this turn needs on an idle or a loaded machine, far below what
    # waiting behind 300 warm-ups takes: the turn's first token comes, and the turn is not degraded.
    budget = 15_000
    cfg = engine_config(tmp_path, budget_llm_first_token_ms=budget, llm_timeout_ms=budget)
    async with (
        running_engine(cfg) as running,
        await EngineClient.connect(running.endpoint) as other,
        await EngineClient.connect(running.endpoint) as flood,
    ):
        player = await other.open_session("marta", "p-other", greet=False, audio=False)
        await eventually(lambda: player.id in running.server.sessions, what="the other player's session")
        for i in range(300):
            sid = f"flood-{i}"
            await flood.send({
                "type": "session.open", "id": f"o{i}", "session": sid, "player": f"flood-{i}",
                "character": ("bram", "aldric", "marta")[i % 3], "greet": False, "audio": False,
                "vars": {"player_name": f"Flood {i}"},
            })
            await flood.send({"type": "session.close", "id": f"c{i}", "session": sid})
        # Every open has been answered (and every close before the last one handled): the burst is in.
        await eventually(lambda: len(flood.sessions) == 300, what="the burst handled")
        msgs = await (await player.say("What do you think of the weather lately?")).collect()
        end = msgs[-1]
        assert "llm_first_token" in end["timings"], f"no first token: {end}"
        assert end["status"] == "ok", f"the other player's turn was held up: {end.get('degraded')}"
