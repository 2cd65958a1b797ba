"""Persistence: story state per player and conversation history per (player, character).

SQLite in WAL mode, on one dedicated thread (sqlite3 connections are not shared across
threads, and a commit's fsync must not stall the event loop). The save blob a game keeps
in its own save file is msgpack with a checksum, so a corrupt or foreign blob is refused
with a clear error instead of half-loading.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack

from npc_engine.pipeline.workers import ModelWorker

BLOB_MAGIC = "npc-engine-state"
BLOB_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS story_state (
    player TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    player TEXT NOT NULL,
    character TEXT NOT NULL,
    idx INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    ts REAL NOT NULL,
    PRIMARY KEY (player, character, idx)
);
"""


Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    role: Role
    content: str
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content, "interrupted": self.interrupted}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistoryEntry:
        role = d["role"]
        if role not in ("user", "assistant"):
            raise BadBlob(f"a history entry has role {role!r}; expected 'user' or 'assistant'")
        return cls(role, str(d["content"]), bool(d.get("interrupted", False)))


class BadBlob(ValueError):
    pass


class Store:
    """Blocking SQLite access; use ``AsyncStore`` from the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def load_story_state(self, player: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT state FROM story_state WHERE player=?", (player,)).fetchone()
        return json.loads(row[0]) if row else None

    def save_story_state(self, player: str, state: dict[str, Any]) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO story_state(player, state, updated) VALUES (?,?,?) "
                "ON CONFLICT(player) DO UPDATE SET state=excluded.state, updated=excluded.updated",
                (player, json.dumps(state), time.time()),
            )

    def load_history(self, player: str, character: str, limit: int | None = None) -> list[HistoryEntry]:
        sql = "SELECT role, content, interrupted FROM history WHERE player=? AND character=? ORDER BY idx"
        rows = self._db.execute(sql, (player, character)).fetchall()
        entries = [HistoryEntry(r, c, bool(i)) for r, c, i in rows if r in ("user", "assistant")]
        return entries[-limit:] if limit else entries

    def append_history(self, player: str, character: str, entries: list[HistoryEntry]) -> None:
        with self._db:
            (n,) = self._db.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM history WHERE player=? AND character=?", (player, character)
            ).fetchone()
            self._db.executemany(
                "INSERT INTO history(player, character, idx, role, content, interrupted, ts) VALUES (?,?,?,?,?,?,?)",
                [(player, character, n + i, e.role, e.content, int(e.interrupted), time.time()) for i, e in enumerate(entries)],
            )

    def trim_last_reply(self, player: str, character: str, content: str) -> None:
        """Replace the character's last reply with the part the player heard (a late cut)."""
        with self._db:
            self._db.execute(
                "UPDATE history SET content=?, interrupted=1 WHERE player=? AND character=? AND idx=("
                "SELECT MAX(idx) FROM history WHERE player=? AND character=? AND role='assistant')",
                (content, player, character, player, character),
            )

    def characters_of(self, player: str) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT character FROM history WHERE player=?", (player,)).fetchall()
        return [r[0] for r in rows]

    # ----------------------------------------------------------------- save blobs

    def export_blob(self, player: str) -> bytes:
        payload = {
            "player": player,
            "story": self.load_story_state(player),
            "history": {
                ch: [e.to_dict() for e in self.load_history(player, ch)] for ch in self.characters_of(player)
            },
        }
        body = msgpack.packb(payload, use_bin_type=True)
        return msgpack.packb(
            {"magic": BLOB_MAGIC, "version": BLOB_VERSION, "sha256": hashlib.sha256(body).digest(), "body": body},
            use_bin_type=True,
        )

    def import_blob(self, player: str, blob: bytes) -> dict[str, Any]:
        """Replace ``player``'s story state and histories with the blob's. Returns the payload."""
        payload = parse_blob(blob)
        with self._db:
            self._db.execute("DELETE FROM history WHERE player=?", (player,))
            self._db.execute("DELETE FROM story_state WHERE player=?", (player,))
        if payload.get("story") is not None:
            self.save_story_state(player, payload["story"])
        for ch, entries in (payload.get("history") or {}).items():
            self.append_history(player, ch, [HistoryEntry.from_dict(e) for e in entries])
        return payload

    def close(self) -> None:
        self._db.close()


def parse_blob(blob: bytes) -> dict[str, Any]:
    try:
        outer = msgpack.unpackb(blob, raw=False)
    except Exception:
        raise BadBlob("the save blob is not an npc-engine save (not msgpack)") from None
    if not isinstance(outer, dict) or outer.get("magic") != BLOB_MAGIC:
        raise BadBlob("the save blob is not an npc-engine save")
    if outer.get("version") != BLOB_VERSION:
        raise BadBlob(f"the save blob has version {outer.get('version')!r}; this engine reads version {BLOB_VERSION}")
    body = outer.get("body")
    if not isinstance(body, bytes) or hashlib.sha256(body).digest() != outer.get("sha256"):
        raise BadBlob("the save blob is corrupt (checksum mismatch)")
    payload = msgpack.unpackb(body, raw=False)
    if not isinstance(payload, dict):
        raise BadBlob("the save blob is corrupt")
    return payload


class AsyncStore:
    """The store on its own thread, awaitable from the event loop: one typed method per query."""

    def __init__(self, path: Path) -> None:
        self._worker = ModelWorker("store")
        self._store = Store(path)

    async def load_story_state(self, player: str) -> dict[str, Any] | None:
        return await self._worker.run(self._store.load_story_state, player)

    async def save_story_state(self, player: str, state: dict[str, Any]) -> None:
        await self._worker.run(self._store.save_story_state, player, state)

    async def load_history(self, player: str, character: str, limit: int | None = None) -> list[HistoryEntry]:
        return await self._worker.run(self._store.load_history, player, character, limit)

    async def append_history(self, player: str, character: str, entries: list[HistoryEntry]) -> None:
        # Queued on the store's one thread, in call order: a later trim of this reply lands after it.
        await self._worker.run(self._store.append_history, player, character, entries)

    async def trim_last_reply(self, player: str, character: str, content: str) -> None:
        await self._worker.run(self._store.trim_last_reply, player, character, content)

    async def export_blob(self, player: str) -> bytes:
        return await self._worker.run(self._store.export_blob, player)

    async def import_blob(self, player: str, blob: bytes) -> dict[str, Any]:
        return await self._worker.run(self._store.import_blob, player, blob)

    async def close(self) -> None:
        await self._worker.run(self._store.close)
        self._worker.shutdown()
