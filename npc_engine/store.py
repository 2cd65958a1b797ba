"""Persistence: story state per player and conversation history per (player, character).

SQLite in WAL mode, on one dedicated thread (sqlite3 connections are not shared across
threads, and a commit's fsync must not stall the event loop). Every write is one transaction,
committed (and fsynced) before the method returns, so whatever the engine has acknowledged to
a game is on disk.

The save blob a game keeps in its own save file is msgpack, signed with this install's key
(HMAC-SHA256, ``<data dir>/save.key``), with a format version and the oldest format able to
read it (Ink's scheme). ``parse_blob`` checks all of it, and every history entry, before
anything is written: an edited, foreign, corrupt or too-new blob is refused whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgpack

from npc_engine.pipeline.workers import ModelWorker

log = logging.getLogger(__name__)

BLOB_MAGIC = "npc-engine-state"
# Save format versions (the envelope and payload of a blob), in Ink's style: a blob says which
# format wrote it and the oldest format that can read it. An engine reads a blob whose minimum is
# at most its own format; it migrates every older format from BLOB_MIN_LOADABLE up.
#   1: a plain sha256 of the body (anyone could edit a save and fix the checksum)
#   2: signed with the install's key; history entries always carry `interrupted`
#   3: adds `facts` (what each character knows of the player); a format-2 engine reads it, without them
BLOB_VERSION = 3
BLOB_MIN_READER = 2  # a format-1 engine checks a sha256 that format 2 does not carry
BLOB_MIN_LOADABLE = 1  # format 1 is unsigned: still loaded so saves made before signing keep working
KEY_FILE = "save.key"
KEY_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS story_state (
    player TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated REAL NOT NULL
);
-- Story states this engine could not read (a newer engine's, or one an older bug wrote): kept,
-- not deleted, so nothing is lost; the player starts the story afresh.
CREATE TABLE IF NOT EXISTS story_state_set_aside (
    player TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    ts REAL NOT NULL
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
-- What each character knows of the player beyond the history (session/facts.py), oldest first.
CREATE TABLE IF NOT EXISTS facts (
    player TEXT NOT NULL,
    character TEXT NOT NULL,
    idx INTEGER NOT NULL,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    key TEXT,
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
    def from_dict(cls, d: object, where: str = "a history entry") -> HistoryEntry:
        """An entry as ``to_dict`` writes it; BadBlob (saying what is wrong, and ``where``) otherwise."""
        if not isinstance(d, Mapping):
            raise BadBlob(f"the save blob is invalid: {where} is not a map")
        role, content, interrupted = d.get("role"), d.get("content"), d.get("interrupted")
        if role is None:
            raise BadBlob(f"the save blob is invalid: {where} has no role")
        if role not in ("user", "assistant"):
            raise BadBlob(f"the save blob is invalid: {where} has role {role!r:.40}; expected 'user' or 'assistant'")
        if not isinstance(content, str):
            raise BadBlob(f"the save blob is invalid: {where} has no text content")
        if not isinstance(interrupted, bool):
            raise BadBlob(f"the save blob is invalid: {where} has no true/false 'interrupted'")
        return cls(role, content, interrupted)


FactSource = Literal["told", "did", "heard"]
FACT_SOURCES: tuple[FactSource, ...] = ("told", "did", "heard")
PINNED_KEYS = frozenset({"name"})  # facts a full list never drops: who the player is


@dataclass(frozen=True, slots=True)
class Fact:
    """One short line a character knows about the player: ``told`` (the player said it),
    ``did`` (it happened in front of the character) or ``heard`` (another character told it).
    Facts with the same ``key`` replace each other (a player who gives a new name)."""

    source: FactSource
    text: str
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "text": self.text, "key": self.key}

    @classmethod
    def from_dict(cls, d: object, where: str = "a fact") -> Fact:
        """A fact as ``to_dict`` writes it; BadBlob (saying what is wrong, and ``where``) otherwise."""
        if not isinstance(d, Mapping):
            raise BadBlob(f"the save blob is invalid: {where} is not a map")
        source, text, key = d.get("source"), d.get("text"), d.get("key")
        if source not in FACT_SOURCES:
            raise BadBlob(f"the save blob is invalid: {where} has source {source!r:.40}; expected told, did or heard")
        if not isinstance(text, str) or not text.strip():
            raise BadBlob(f"the save blob is invalid: {where} has no text")
        if key is not None and not isinstance(key, str):
            raise BadBlob(f"the save blob is invalid: {where} has a key that is not text")
        return cls(source, text, key)

    @property
    def norm(self) -> str:
        return " ".join(self.text.lower().split()).rstrip(".!?")


def merge_facts(known: list[Fact], new: list[Fact], cap: int) -> list[Fact]:
    """``known`` with ``new`` learned, oldest first: a fact already known (same text) is not
    repeated, one with the key of a known fact replaces it, and past ``cap`` the oldest go
    first (the player's name is kept). Pure: the store and the sessions' cache share it."""
    out = list(known)
    for fact in new:
        if fact.key is not None:
            out = [f for f in out if f.key != fact.key]
        if any(f.norm == fact.norm for f in out):
            continue
        out.append(fact)
    while len(out) > max(1, cap):
        drop = next((i for i, f in enumerate(out) if f.key not in PINNED_KEYS), 0)
        del out[drop]
    return out


class BadBlob(ValueError):
    """A save blob this engine will not load; the message is a sentence for the game's developer."""


class SaveKeyError(OSError):
    """The install's save key file exists but cannot be used."""


@dataclass(frozen=True, slots=True)
class SaveData:
    """A save blob's content: signature checked, migrated to this engine's format, entries checked.

    ``story`` is a ``StoryState.to_dict()`` map, still to be checked against the loaded story
    (the store knows no story)."""

    player: str
    story: dict[str, Any] | None
    history: dict[str, list[HistoryEntry]]
    version: int  # the format the blob was written in
    facts: dict[str, list[Fact]] = field(default_factory=dict)


class Store:
    """Blocking SQLite access; use ``AsyncStore`` from the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save_key = load_or_create_key(path.parent / KEY_FILE)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit is fsynced, so what a game was told is saved survives a power cut as
        # well as a kill of the engine (NORMAL would only survive the latter). It costs a WAL
        # fsync per commit on the store's thread (bench/commit_latency.py): a turn's history waits
        # for it after the last audio; only a line that moves the story waits for it before its reply.
        self._db.execute("PRAGMA synchronous=FULL")
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

    def load_facts(self, player: str, character: str) -> list[Fact]:
        rows = self._db.execute(
            "SELECT source, text, key FROM facts WHERE player=? AND character=? ORDER BY idx", (player, character)
        ).fetchall()
        return [Fact(s, t, k) for s, t, k in rows if s in FACT_SOURCES]

    def add_facts(self, player: str, character: str, facts: list[Fact], cap: int) -> list[Fact]:
        """Learn ``facts`` (``merge_facts``) in one transaction; returns what the character now knows."""
        with self._db:
            merged = merge_facts(self.load_facts(player, character), facts, cap)
            self._write_facts(player, character, merged, time.time())
        return merged

    def _write_facts(self, player: str, character: str, facts: list[Fact], now: float) -> None:
        self._db.execute("DELETE FROM facts WHERE player=? AND character=?", (player, character))
        self._db.executemany(
            "INSERT INTO facts(player, character, idx, source, text, key, ts) VALUES (?,?,?,?,?,?,?)",
            [(player, character, i, f.source, f.text, f.key, now) for i, f in enumerate(facts)],
        )

    def facts_of(self, player: str) -> dict[str, list[Fact]]:
        rows = self._db.execute("SELECT DISTINCT character FROM facts WHERE player=?", (player,)).fetchall()
        return {ch: self.load_facts(player, ch) for (ch,) in rows}

    def replace_player(
        self,
        player: str,
        story: dict[str, Any] | None,
        history: Mapping[str, list[HistoryEntry]],
        facts: Mapping[str, list[Fact]] | None = None,
    ) -> None:
        """Replace the player's story state, every history and every fact of them, in one
        transaction: a failure (or a kill) at any point leaves the old ones, never a mix."""
        now = time.time()
        with self._db:
            self._db.execute("DELETE FROM history WHERE player=?", (player,))
            self._db.execute("DELETE FROM facts WHERE player=?", (player,))
            for ch, known in (facts or {}).items():
                self._write_facts(player, ch, known, now)
            self._db.execute("DELETE FROM story_state WHERE player=?", (player,))
            if story is not None:
                self._db.execute(
                    "INSERT INTO story_state(player, state, updated) VALUES (?,?,?)", (player, json.dumps(story), now)
                )
            self._db.executemany(
                "INSERT INTO history(player, character, idx, role, content, interrupted, ts) VALUES (?,?,?,?,?,?,?)",
                [
                    (player, ch, i, e.role, e.content, int(e.interrupted), now)
                    for ch, entries in history.items()
                    for i, e in enumerate(entries)
                ],
            )

    def set_aside_story_state(self, player: str, reason: str) -> None:
        """Move the player's unreadable story state out of the way (kept, with why), in one transaction."""
        with self._db:
            self._db.execute(
                "INSERT INTO story_state_set_aside(player, state, reason, ts) "
                "SELECT player, state, ?, ? FROM story_state WHERE player=?",
                (reason, time.time(), player),
            )
            self._db.execute("DELETE FROM story_state WHERE player=?", (player,))

    def characters_of(self, player: str) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT character FROM history WHERE player=?", (player,)).fetchall()
        return [r[0] for r in rows]

    # ----------------------------------------------------------------- save blobs

    def export_blob(self, player: str) -> bytes:
        # Consistent without a read transaction: every write goes through this store's one thread.
        payload = {
            "player": player,
            "story": self.load_story_state(player),
            "history": {ch: [e.to_dict() for e in self.load_history(player, ch)] for ch in self.characters_of(player)},
            "facts": {ch: [f.to_dict() for f in known] for ch, known in self.facts_of(player).items()},
        }
        return pack_blob(payload, self.save_key)

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------- the install's key


def load_or_create_key(path: Path) -> bytes:
    """The install's save-signing key: 32 random bytes in ``path`` (mode 0600), made on first use.

    A key file that exists but is not a key stops the engine (SaveKeyError) rather than being
    replaced: a new key would silently make every save the game holds unloadable."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = _create_key(path)
    if len(key) != KEY_BYTES:
        raise SaveKeyError(
            f"{path} is not an npc-engine save key ({len(key)} bytes, expected {KEY_BYTES}); restore it from a "
            "backup, or delete it to make a new one (saves signed with the old key will no longer load)"
        )
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users; it signs the game's saves (chmod 600 it)", path)
    return key


def _create_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_new(tmp, key)
    try:
        # Written whole, then linked into place: another engine starting on the same data dir
        # never reads half a key, and whichever links first wins (the other reads that key).
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: create it in place, never replacing one
            with contextlib.suppress(FileExistsError):
                _write_new(path, key)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)  # the key is on disk before any blob signed with it leaves the engine
    return path.read_bytes()


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------- save blobs


def _signed_bytes(version: int, min_version: int, body: bytes) -> bytes:
    # The version fields are signed with the body, so a blob cannot be relabelled as another format.
    return b"%s\0%d\0%d\0" % (BLOB_MAGIC.encode(), version, min_version) + body


def blob_signature(key: bytes, version: int, min_version: int, body: bytes) -> bytes:
    """HMAC-SHA256 of a blob's magic, versions and body with the install's key."""
    return hmac.new(key, _signed_bytes(version, min_version, body), hashlib.sha256).digest()


def pack_blob(payload: dict[str, Any], key: bytes) -> bytes:
    """A save blob in this engine's format, signed with ``key``."""
    body = msgpack.packb(payload, use_bin_type=True)
    return msgpack.packb(
        {
            "magic": BLOB_MAGIC,
            "version": BLOB_VERSION,
            "min_version": BLOB_MIN_READER,
            "hmac": blob_signature(key, BLOB_VERSION, BLOB_MIN_READER, body),
            "body": body,
        },
        use_bin_type=True,
    )


def _format_1_to_2(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 1 wrote the same payload; entries it wrote without ``interrupted`` were not
    interrupted (format 2 changed the envelope: a signature instead of a checksum)."""
    out = {"story": None, "history": {}, **payload}
    history = out["history"]
    if isinstance(history, Mapping):
        out["history"] = {
            ch: [{"interrupted": False, **e} if isinstance(e, Mapping) else e for e in entries]
            if isinstance(entries, list) else entries
            for ch, entries in history.items()
        }
    return out


def _format_2_to_3(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 2 kept no facts: a save from then loads with none."""
    return {"facts": {}, **payload}


# format n -> n + 1, for every n from BLOB_MIN_LOADABLE below BLOB_VERSION
BLOB_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _format_1_to_2, 2: _format_2_to_3}


def _version(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def parse_blob(blob: bytes, key: bytes, *, accept_unsigned: bool = False) -> SaveData:
    """Check a save blob whole (envelope, format version, signature, every entry) and migrate
    it to this engine's format; BadBlob with a sentence saying what is wrong otherwise.
    Pure: nothing is written, so the server calls it before it touches anything.

    Unsigned format-1 saves (from before signing) carry only a sha256 that anyone can
    recompute after editing the save, so they are refused unless ``accept_unsigned``."""
    try:
        outer = msgpack.unpackb(blob, raw=False)
    except Exception:
        raise BadBlob("the save blob is not an npc-engine save (not msgpack)") from None
    if not isinstance(outer, dict) or outer.get("magic") != BLOB_MAGIC:
        raise BadBlob("the save blob is not an npc-engine save")
    version = _version(outer.get("version"))
    min_version = _version(outer.get("min_version", version))
    if version is None or min_version is None or min_version > version:
        raise BadBlob(
            f"the save blob has an invalid format version ({outer.get('version')!r}, "
            f"minimum {outer.get('min_version')!r})"
        )
    if min_version > BLOB_VERSION:
        raise BadBlob(
            f"the save was made by a newer npc-engine (save format {version}, readable from format {min_version}); "
            f"this engine reads formats {BLOB_MIN_LOADABLE} to {BLOB_VERSION}: update the engine to load it"
        )
    if version < BLOB_MIN_LOADABLE:
        raise BadBlob(
            f"the save is in format {version}, older than format {BLOB_MIN_LOADABLE}, "
            "the oldest this engine can read"
        )
    body = outer.get("body")
    if not isinstance(body, bytes):
        raise BadBlob("the save blob is corrupt (no body)")
    if version == 1:
        if not accept_unsigned:
            raise BadBlob(
                "the save is an unsigned format-1 save from an older npc-engine: it cannot be checked for edits, "
                "so it is refused. To load old saves, start the engine with --accept-unsigned-saves "
                "(each is signed when it is saved again)"
            )
        if not isinstance(outer.get("sha256"), bytes) or not hmac.compare_digest(
            hashlib.sha256(body).digest(), outer["sha256"]
        ):
            raise BadBlob("the save blob is corrupt (checksum mismatch)")
        log.warning("loading an unsigned format-1 save: it cannot be checked for edits")
    else:
        sig = outer.get("hmac")
        if not isinstance(sig, bytes) or not hmac.compare_digest(blob_signature(key, version, min_version, body), sig):
            raise BadBlob(
                "the save blob's signature does not match: it was edited, or made by another npc-engine "
                "install (each install signs its saves with its own key, save.key in its data directory)"
            )
    try:
        payload = msgpack.unpackb(body, raw=False)
    except Exception:
        raise BadBlob("the save blob is corrupt (its body is not msgpack)") from None
    if not isinstance(payload, dict):
        raise BadBlob("the save blob is corrupt (its body is not a map)")
    for step in range(version, BLOB_VERSION):  # a newer, still readable format is read as ours
        payload = BLOB_MIGRATIONS[step](payload)
    return _checked_payload(payload, version)


def _checked_payload(payload: dict[str, Any], version: int) -> SaveData:
    player, story, history = payload.get("player"), payload.get("story"), payload.get("history")
    if not isinstance(player, str):
        raise BadBlob("the save blob is invalid: it names no player")
    if story is not None and not isinstance(story, dict):
        raise BadBlob("the save blob is invalid: its story state is not a map")
    if not isinstance(history, dict):
        raise BadBlob("the save blob is invalid: its history is not a map of characters")
    entries: dict[str, list[HistoryEntry]] = {}
    for character, items in history.items():
        if not isinstance(character, str) or not character:
            raise BadBlob(f"the save blob is invalid: history is kept under {character!r:.40}, not a character id")
        if not isinstance(items, list):
            raise BadBlob(f"the save blob is invalid: the history with {character!r:.40} is not a list")
        entries[character] = [
            HistoryEntry.from_dict(item, f"history entry {n} with {character!r:.40}") for n, item in enumerate(items, 1)
        ]
    raw_facts = payload.get("facts", {})
    if not isinstance(raw_facts, dict):
        raise BadBlob("the save blob is invalid: its facts are not a map of characters")
    facts: dict[str, list[Fact]] = {}
    for character, items in raw_facts.items():
        if not isinstance(character, str) or not character or not isinstance(items, list):
            raise BadBlob(f"the save blob is invalid: the facts kept under {character!r:.40} are not a list")
        facts[character] = [Fact.from_dict(item, f"fact {n} of {character!r:.40}") for n, item in enumerate(items, 1)]
    return SaveData(player, story, entries, version, facts)


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

    async def replace_player(
        self,
        player: str,
        story: dict[str, Any] | None,
        history: Mapping[str, list[HistoryEntry]],
        facts: Mapping[str, list[Fact]] | None = None,
    ) -> None:
        await self._worker.run(self._store.replace_player, player, story, history, facts)

    async def load_facts(self, player: str, character: str) -> list[Fact]:
        return await self._worker.run(self._store.load_facts, player, character)

    async def add_facts(self, player: str, character: str, facts: list[Fact], cap: int) -> list[Fact]:
        return await self._worker.run(self._store.add_facts, player, character, facts, cap)

    async def set_aside_story_state(self, player: str, reason: str) -> None:
        await self._worker.run(self._store.set_aside_story_state, player, reason)

    @property
    def save_key(self) -> bytes:
        return self._store.save_key

    async def export_blob(self, player: str) -> bytes:
        return await self._worker.run(self._store.export_blob, player)

    async def close(self) -> None:
        await self._worker.run(self._store.close)
        self._worker.shutdown()
