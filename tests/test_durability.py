"""Acknowledged means durable, and saves can be trusted (issue 12).

* ``kill -9``: a sidecar subprocess is killed right after it acknowledged something
  (``turn.end``, ``session.opened`` with vars, ``event.ok``, ``state.loaded``) and restarted on
  the same data dir: everything acknowledged is there. A kill in the middle of a ``state.load``
  leaves the player's old state and history or the new ones, never a mix.
* ``state.load`` checks everything before it writes: a bad blob is refused with ``bad_state``
  and the player's state and history are as they were; a failure while writing changes nothing.
* A save made before saves were signed (format 1) still loads; what is saved now is signed.
* A story state in the database that this engine cannot read does not lock the player out.

Blobs are built here from the format that docs/protocol.md describes, not with the engine's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from npc_engine.benchmark.sidecar import Sidecar, free_port
from npc_engine.client import ClientSession, EngineClient, EngineError
from tests.harness import REPO, Running, engine_config, running_engine

MAGIC = "npc-engine-state"
FORMAT1_SAVE = REPO / "tests" / "fixtures" / "saves" / "format1.msgpack"  # see the README beside it
NEUTRAL = "Nice weather today."  # fires no story exit for any character


# --------------------------------------------------------------------------- save blobs, as documented


def signed_blob(payload: dict[str, Any], key: bytes, version: int = 2, min_version: int = 2) -> bytes:
    body = msgpack.packb(payload, use_bin_type=True)
    signed = MAGIC.encode() + b"\0%d\0%d\0" % (version, min_version) + body
    return msgpack.packb(
        {"magic": MAGIC, "version": version, "min_version": min_version,
         "hmac": hmac.new(key, signed, hashlib.sha256).digest(), "body": body},
        use_bin_type=True,
    )


def format1_blob(payload: dict[str, Any]) -> bytes:
    """A save as the engine wrote them before signing: the body and its plain sha256."""
    body = msgpack.packb(payload, use_bin_type=True)
    return msgpack.packb(
        {"magic": MAGIC, "version": 1, "sha256": hashlib.sha256(body).digest(), "body": body}, use_bin_type=True
    )


def body_of(blob: bytes) -> dict[str, Any]:
    body: dict[str, Any] = msgpack.unpackb(msgpack.unpackb(blob)["body"])
    return body


def install_key(data_dir: Path) -> bytes:
    return (data_dir / "save.key").read_bytes()


# --------------------------------------------------------------------------- kill -9


@dataclass
class Acknowledged:
    """What the sidecar has acknowledged so far, to find again after each restart."""

    turns: list[dict[str, Any]] = field(default_factory=list)  # p-turns' history with bram
    gold: int | None = None  # p-vars' `gold`, from session.open vars
    hammers: list[str] = field(default_factory=list)  # players whose item.picked_up got event.ok
    # p-load: (gold, history with bram) of each state it may be in (two while a load was cut off)
    load_options: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)


@dataclass
class Life:
    """One run of the sidecar on the shared data dir."""

    sidecar: Sidecar
    client: EngineClient

    def kill(self) -> None:
        self.sidecar.proc.kill()  # SIGKILL: no shutdown, no flush, nothing after this instant


def spawn(base: Path, n: int) -> Sidecar:
    """``python -m npc_engine serve`` as a game would run it (see npc_engine/benchmark/sidecar.py)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data_dir, log_path = base / "data", base / f"sidecar-{n}.log"
    cmd = [
        sys.executable, "-m", "npc_engine", "serve", "--endpoint", endpoint, "--data-dir", str(data_dir),
        "--characters", str(REPO / "characters"), "--story", str(REPO / "story"),
        "--tts", "none", "--stt", "none", "--llm-slots", "2",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
    return Sidecar(proc, endpoint, data_dir, log_path)


async def start(base: Path, n: int) -> Life:
    sidecar = spawn(base, n)
    try:
        await asyncio.to_thread(sidecar.wait_ready, 120.0)
        return Life(sidecar, await EngineClient.connect(sidecar.endpoint, timeout=30.0))
    except BaseException:
        sidecar.proc.kill()
        sidecar.proc.wait()
        raise


async def end(life: Life) -> None:
    life.kill()
    await asyncio.to_thread(life.sidecar.proc.wait)
    await life.client.close()


async def look(c: EngineClient, player: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The player's story state (state.get) and history with bram (from a state.save), as the
    restarted engine reports them."""
    s = await c.open_session("bram", player, greet=False, audio=False)
    state = await c.request({"type": "state.get", "session": s.id})
    history = body_of(await s.save())["history"].get("bram", [])
    return state, history  # left open: the sidecar is killed next anyway


async def check(c: EngineClient, ack: Acknowledged, points: set[str], when: str) -> None:
    """What was acknowledged at ``points`` is there (each check opens a session: they cost time)."""
    if ack.turns and "turn.end" in points:
        _, history = await look(c, "p-turns")
        assert history == ack.turns, f"{when}: acknowledged turns are missing"
    if ack.gold is not None and "session.opened" in points:
        state, _ = await look(c, "p-vars")
        assert state["vars"].get("gold") == ack.gold, f"{when}: session.open vars were lost"
    for player in ack.hammers if "event.ok" in points else []:
        state, _ = await look(c, player)
        assert state["flags"].get("has_hammer") is True, f"{when}: the event acknowledged for {player} was lost"
    if ack.load_options and points & {"state.loaded", "mid state.load"}:
        state, history = await look(c, "p-load")
        got = (state["vars"].get("gold"), history)
        assert got in ack.load_options, f"{when}: p-load is {got}, a state no state.load made"


@dataclass
class Saves:
    """Two saves p-load is loaded with in turn: (blob, gold, history with bram)."""

    blobs: list[tuple[bytes, int, list[dict[str, Any]]]]


async def make_saves(c: EngineClient) -> Saves:
    blobs = []
    for gold, greet in ((1, False), (2, True)):
        s = await c.open_session("bram", f"p-src-{gold}", greet=greet, audio=False, vars={"gold": gold})
        if greet:  # a greeting: history without waiting on the model
            await (await s.next_turn(timeout=60)).collect()
        blob = await s.save()
        blobs.append((blob, gold, body_of(blob)["history"].get("bram", [])))
    assert blobs[0][2] != blobs[1][2], "the two saves differ in history as well as in gold"
    return Saves(blobs)


async def kill_after_turn_end(life: Life, k: int, ack: Acknowledged, saves: Saves) -> None:
    s = await life.client.open_session("bram", "p-turns", greet=False, audio=False)
    line = f"{NEUTRAL} Round {k}."
    turn = await s.say(line)
    async for m in turn:
        if m["type"] == "turn.end":
            life.kill()  # at once, in the same step that read turn.end
            ack.turns.append({"role": "user", "content": line, "interrupted": False})
            if m["text"]:
                ack.turns.append({"role": "assistant", "content": m["text"], "interrupted": m["interrupted"]})
            return


async def kill_after_session_opened(life: Life, k: int, ack: Acknowledged, saves: Saves) -> None:
    await life.client.open_session("bram", "p-vars", greet=False, audio=False, vars={"gold": 100 + k})
    life.kill()
    ack.gold = 100 + k


async def kill_after_event_ok(life: Life, k: int, ack: Acknowledged, saves: Saves) -> None:
    player = f"p-event-{k}"
    s = await life.client.open_session("bram", player, greet=False, audio=False)
    ok = await s.event("item.picked_up", {"item": "hammer"})
    life.kill()
    assert ok["effects"], "the event changed the story"
    ack.hammers.append(player)


async def kill_after_state_loaded(life: Life, k: int, ack: Acknowledged, saves: Saves) -> None:
    blob, gold, history = saves.blobs[k % 2]
    s = await life.client.open_session("bram", "p-load", greet=False, audio=False)
    await s.load(blob)
    life.kill()
    ack.load_options = [(gold, history)]


async def kill_during_state_load(life: Life, k: int, ack: Acknowledged, saves: Saves) -> None:
    blob, gold, history = saves.blobs[(k + 1) % 2]
    s = await life.client.open_session("bram", "p-load", greet=False, audio=False)
    await life.client.send({"type": "state.load", "session": s.id, "blob": blob})
    life.kill()  # no reply awaited: the load may be done, under way or not begun
    ack.load_options = [*ack.load_options, (gold, history)]


Act = Callable[[Life, int, Acknowledged, Saves], Awaitable[None]]
POINTS: dict[str, Act] = {
    "turn.end": kill_after_turn_end,
    "session.opened": kill_after_session_opened,
    "event.ok": kill_after_event_ok,
    "state.loaded": kill_after_state_loaded,
    "mid state.load": kill_during_state_load,
}
ROUNDS = 3


async def test_kill_9_right_after_an_acknowledgement_loses_nothing(tmp_path: Path) -> None:
    ack = Acknowledged()
    kills: Counter[str] = Counter()
    saves: Saves | None = None
    lives, last = 0, ""
    for k in range(ROUNDS):
        for point, act in POINTS.items():
            life = await start(tmp_path, lives)
            lives += 1
            try:
                # Each restart checks what the kill before it could have lost; the last one, everything.
                await check(life.client, ack, {last}, f"restart {lives - 1}, after a kill at {last}")
                if saves is None:
                    saves = await make_saves(life.client)
                await act(life, k, ack, saves)
                kills[point] += 1
                last = point
            finally:
                await end(life)
    final = await start(tmp_path, lives)
    try:
        await check(final.client, ack, set(POINTS), f"the last restart, after {lives} kills")
    finally:
        await end(final)
    print(f"\nkill -9: {sum(kills.values())} kills ({dict(kills)}), {lives + 1} starts: everything acknowledged "
          f"was there after every restart ({len(ack.turns)} history entries, {len(ack.hammers)} events)")


# --------------------------------------------------------------------------- state.load refuses whole


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    # Most cases here check format 1 too (saves from before signing), so this engine takes them.
    async with running_engine(engine_config(tmp_path_factory.mktemp("durable"), accept_unsigned_saves=True)) as running:
        yield running


@dataclass
class Victim:
    engine: Running
    client: EngineClient
    session: ClientSession

    @property
    def player(self) -> str:
        return str(self.session.info["player"])

    async def snapshot(self) -> tuple[Any, ...]:
        """Everything state.load could change: as reported, as stored, and as remembered."""
        store = self.engine.engine.store
        state = await self.client.request({"type": "state.get", "session": self.session.id})
        state.pop("id")
        return (
            state,
            await store.load_story_state(self.player),
            await store.load_history(self.player, "bram"),
            list(self.engine.server.sessions[self.session.id].memory.history),
        )


async def victim(engine: Running, client: EngineClient, player: str) -> Victim:
    """A player with a story state, game vars and a history (a greeting: no model needed)."""
    s = await client.open_session("bram", player, greet=True, audio=False, vars={"player_name": "Ada", "gold": 5})
    await (await s.next_turn(timeout=60)).collect()
    await s.event("item.picked_up", {"item": "hammer"})
    v = Victim(engine, client, s)
    assert (await engine.engine.store.load_history(player, "bram")), "the greeting is in the history"
    return v


def good_payload(v: Victim, story: dict[str, Any]) -> dict[str, Any]:
    return {
        "player": v.player,
        "story": {**story, "vars": {**story["vars"], "gold": 999_999}},
        "history": {"bram": [{"role": "user", "content": "Hello.", "interrupted": False},
                             {"role": "assistant", "content": "Well met.", "interrupted": False}]},
    }


def with_entry(entry: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        p["history"]["bram"].append(entry)
    return change


def with_story(**changes: Any) -> Callable[[dict[str, Any]], None]:
    """The payload's story state with ``changes``; a change to None removes the key."""
    def change(p: dict[str, Any]) -> None:
        story = {**p["story"], **changes}
        p["story"] = {k: v for k, v in story.items() if v is not None}
    return change


BAD_CONTENT = {
    "missing role": (with_entry({"content": "Who am I?", "interrupted": False}), "has no role"),
    "unknown role": (with_entry({"role": "narrator", "content": "Meanwhile...", "interrupted": False}), "'narrator'"),
    "content not text": (with_entry({"role": "user", "content": 42, "interrupted": False}), "no text content"),
    # The blob: version 99 and nothing saying an older engine may read it.
    "story version 99": (with_story(version=99, min_version=None), "version 99"),
    "story from a newer engine": (with_story(version=7, min_version=5), "newer engine"),
    "story in a beat the story lacks": (with_story(current={"bram": "bram_on_the_moon"}), "bram_on_the_moon"),
    "story flags not true/false": (with_story(flags={"has_hammer": "yes"}), "'flags'"),
}


@pytest.mark.parametrize("envelope", ["format 1", "format 2"])
@pytest.mark.parametrize("case", list(BAD_CONTENT))
async def test_state_load_refuses_bad_content_and_changes_nothing(
    engine: Running, client: EngineClient, case: str, envelope: str
) -> None:
    v = await victim(engine, client, f"victim-{case}-{envelope}".replace(" ", "-")[:120])
    before = await v.snapshot()
    payload = good_payload(v, body_of(await v.session.save())["story"])
    change, fragment = BAD_CONTENT[case]
    change(payload)
    data_dir = engine.engine.cfg.data_dir
    blob = format1_blob(payload) if envelope == "format 1" else signed_blob(payload, install_key(data_dir))
    with pytest.raises(EngineError) as info:
        await v.session.load(blob)
    assert info.value.code == "bad_state" and fragment in info.value.message, info.value.message
    assert await v.snapshot() == before


async def test_state_load_refuses_a_newer_edited_or_foreign_save_and_changes_nothing(
    engine: Running, client: EngineClient
) -> None:
    v = await victim(engine, client, "victim-envelope")
    before = await v.snapshot()
    saved = await v.session.save()
    payload = good_payload(v, body_of(saved)["story"])

    # The edit: gold set to 999999 in the body, and any checksum the blob carries fixed up.
    outer = msgpack.unpackb(saved)
    outer["body"] = msgpack.packb({**body_of(saved), "story": payload["story"]}, use_bin_type=True)
    if "sha256" in outer:
        outer["sha256"] = hashlib.sha256(outer["body"]).digest()
    with pytest.raises(EngineError) as info:
        await v.session.load(msgpack.packb(outer, use_bin_type=True))
    assert info.value.code == "bad_state" and "signature does not match" in info.value.message, info.value.message
    assert await v.snapshot() == before

    key = install_key(engine.engine.cfg.data_dir)
    # A signed blob whose envelope says it can be read by older engines than it was signed for.
    relabelled = msgpack.unpackb(signed_blob(payload, key))
    relabelled["min_version"] = 1
    refused = {
        "foreign": (signed_blob(payload, os.urandom(32)), "signature does not match"),
        "newer": (signed_blob(payload, key, version=4, min_version=4), "newer npc-engine"),
        "relabelled": (msgpack.packb(relabelled, use_bin_type=True), "signature does not match"),
    }
    for what, (blob, fragment) in refused.items():
        with pytest.raises(EngineError) as info:
            await v.session.load(blob)
        assert info.value.code == "bad_state" and fragment in info.value.message, (what, info.value.message)
        assert await v.snapshot() == before, what
    # A newer format that says this engine can still read it (only additive changes) loads.
    newer_but_readable = signed_blob({**payload, "added_later": [1, 2]}, key, version=4, min_version=2)
    await v.session.load(newer_but_readable)
    state = await client.request({"type": "state.get", "session": v.session.id})
    assert state["vars"]["gold"] == 999_999


async def test_state_load_writes_in_one_transaction(engine: Running, client: EngineClient) -> None:
    """A write that fails half-way through a load leaves the old state and history whole."""
    v = await victim(engine, client, "p-atomic")
    before = await v.snapshot()
    payload = good_payload(v, body_of(await v.session.save())["story"])
    payload["history"]["bram"].append({"role": "assistant", "content": "the disk fails here", "interrupted": False})
    # A real failure inside SQLite, at the third history row the load writes.
    db = sqlite3.connect(engine.engine.cfg.db_path)
    try:
        with db:
            db.execute(
                "CREATE TRIGGER disk_fails BEFORE INSERT ON history WHEN NEW.content = 'the disk fails here' "
                "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END"
            )
        with pytest.raises(EngineError) as info:
            await v.session.load(format1_blob(payload))
        assert info.value.code == "internal"
        assert await v.snapshot() == before
        engine.engine.forget_player(v.player)  # and as read back from the store
        assert await v.snapshot() == before
    finally:
        with db:
            db.execute("DROP TRIGGER IF EXISTS disk_fails")
        db.close()


# --------------------------------------------------------------------------- formats and keys


async def test_an_unsigned_save_is_refused_by_default(tmp_path: Path) -> None:
    """A format-1 save carries only a sha256 anyone can recompute after editing it."""
    async with running_engine(engine_config(tmp_path / "data")) as running:
        c = await EngineClient.connect(running.endpoint)
        try:
            s = await c.open_session("bram", "p-unsigned", greet=False, audio=False)
            with pytest.raises(EngineError) as info:
                await s.load(FORMAT1_SAVE.read_bytes())
            assert info.value.code == "bad_state" and "--accept-unsigned-saves" in str(info.value)
            state = await c.request({"type": "state.get", "session": s.id})
            assert state["vars"]["gold"] == 0, "nothing of the refused save was loaded (it has gold 12)"
        finally:
            await c.close()


async def test_a_format_1_save_from_before_signing_still_loads(engine: Running, client: EngineClient) -> None:
    s = await client.open_session("bram", "p-format1", greet=False, audio=False)
    loaded = await s.load(FORMAT1_SAVE.read_bytes())  # made by the engine at b7de406
    assert loaded["beat"] == "bram_waiting"
    state = await client.request({"type": "state.get", "session": s.id})
    assert state["vars"]["gold"] == 12 and state["vars"]["player_name"] == "Ada"
    assert state["flags"]["quest_started"] is True
    history = await engine.engine.store.load_history("p-format1", "bram")
    assert [h.role for h in history] == ["user", "assistant"] and "find your hammer" in history[0].content
    # Format 1 left `interrupted` out when it liked; the migration makes it explicit.
    await s.load(format1_blob({"player": "x", "story": None, "history": {"marta": [{"role": "user", "content": "Hi"}]}}))
    stored = await engine.engine.store.load_history("p-format1", "marta")
    assert [(h.role, h.content, h.interrupted) for h in stored] == [("user", "Hi", False)]
    # What is saved now is format 3 (readable from 2), signed with the install's key.
    outer = msgpack.unpackb(await s.save())
    assert (outer["version"], outer["min_version"]) == (3, 2) and "sha256" not in outer
    key = install_key(engine.engine.cfg.data_dir)
    signed = MAGIC.encode() + b"\0003\0002\0" + outer["body"]
    assert hmac.compare_digest(outer["hmac"], hmac.new(key, signed, hashlib.sha256).digest())


def test_the_install_key_is_32_private_bytes(engine: Running) -> None:
    path = engine.engine.cfg.data_dir / "save.key"
    assert len(path.read_bytes()) == 32
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_an_unreadable_story_state_in_the_database_does_not_lock_the_player_out(
    engine: Running, client: EngineClient
) -> None:
    """What an older bug (or a newer engine) left in the store is set aside, not fatal, each time
    the engine reads the player's state from the store (at start-up, or after a load)."""
    for player in ("p-stuck", "p-garbage"):
        s = await client.open_session("bram", player, greet=True, audio=False, vars={"gold": 3})
        await (await s.next_turn(timeout=60)).collect()
    newer = {"version": 99, "min_version": 99, "current": {"bram": "bram_waiting"}, "moods": {"bram": "grim"}}
    db = sqlite3.connect(engine.engine.cfg.db_path)
    with db:
        db.executemany(
            "INSERT INTO story_state(player, state, updated) VALUES (?, ?, 0) "
            "ON CONFLICT(player) DO UPDATE SET state=excluded.state",
            [("p-stuck", json.dumps(newer)), ("p-garbage", "not json {")],
        )
    db.close()

    for player in ("p-stuck", "p-garbage"):
        engine.engine.forget_player(player)  # read from the store next, as after a restart
        s = await client.open_session("bram", player, greet=False, audio=False, vars={"player_name": "Wren"})
        assert s.info["beat"] == "bram_hammer_stolen", "the player starts the story afresh"
        assert s.info["resumed"] is True, "the history was never touched"
        ok = await s.event("item.picked_up", {"item": "hammer"})
        assert ok["effects"]
        state = await client.request({"type": "state.get", "session": s.id})
        assert state["vars"]["player_name"] == "Wren" and state["flags"]["has_hammer"] is True

    db = sqlite3.connect(engine.engine.cfg.db_path)
    aside = dict(db.execute(
        "SELECT player, reason FROM story_state_set_aside WHERE player IN ('p-stuck', 'p-garbage')"
    ).fetchall())
    db.close()
    assert set(aside) == {"p-stuck", "p-garbage"}, "the unreadable states are kept, with why"
    assert "version 99" in aside["p-stuck"]

    engine.engine.forget_player("p-stuck")  # and the fresh state is the player's from now on
    s = await client.open_session("bram", "p-stuck", greet=False, audio=False)
    state = await client.request({"type": "state.get", "session": s.id})
    assert state["vars"]["player_name"] == "Wren" and state["flags"]["has_hammer"] is True
