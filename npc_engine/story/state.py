"""What changes as a story plays (:class:`StoryState`) and what each transition reports (effects).

Plain data: the state round-trips through JSON via ``to_dict``/``from_dict``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

Scalar = bool | int | float | str

# Versions in Ink's style (``inkVersionCurrent`` / ``inkVersionMinimumCompatible``): a state
# carries the version it was written in and the oldest version able to read it, so an older
# engine can read a newer state whose changes were only additive, and refuses the others. A
# newer engine migrates every older state from STATE_MIN_LOADABLE up, one step at a time.
STATE_VERSION = 1  # what to_dict writes
STATE_MIN_READER = 1  # the oldest engine state version that can read what to_dict writes
STATE_MIN_LOADABLE = 1  # the oldest state version from_dict can still migrate
# version n -> n + 1, for every n from STATE_MIN_LOADABLE below STATE_VERSION (none yet).
STATE_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


class UnreadableState(ValueError):
    """A story state this engine cannot read: from a newer engine, too old, or malformed."""


def state_version(data: Mapping[str, Any]) -> tuple[int, int]:
    """The (version, minimum reader version) a saved state declares; raises UnreadableState."""
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UnreadableState(f"story state version {version!r} is not supported (not a version number)")
    min_reader = data.get("min_version", version)  # states from before min_version: only their own
    if not isinstance(min_reader, int) or isinstance(min_reader, bool) or not 1 <= min_reader <= version:
        raise UnreadableState(f"story state min_version {min_reader!r} is not supported (not a version number)")
    return version, min_reader


def migrate_state(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` in this engine's state version, or UnreadableState saying why it cannot be."""
    if not isinstance(data, Mapping):
        raise UnreadableState("story state must be a mapping, as written by StoryState.to_dict()")
    version, min_reader = state_version(data)
    if min_reader > STATE_VERSION:
        raise UnreadableState(
            f"story state version {version} is not supported: it was written by a newer engine and needs one "
            f"that reads version {min_reader} or later (this engine reads versions {STATE_MIN_LOADABLE} to {STATE_VERSION})"
        )
    if version < STATE_MIN_LOADABLE:
        raise UnreadableState(
            f"story state version {version} is not supported: it is older than version {STATE_MIN_LOADABLE}, "
            "the oldest this engine can migrate"
        )
    out = dict(data)
    for step in range(version, STATE_VERSION):
        out = STATE_MIGRATIONS[step](out)
    return out


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class BeatEntered:
    kind: ClassVar[str] = "beat_entered"
    beat_id: str
    character: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "beat": self.beat_id, "character": self.character}


@dataclass(frozen=True, slots=True)
class FlagSet:
    kind: ClassVar[str] = "flag_set"
    name: str
    value: Scalar

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "value": self.value}


@dataclass(frozen=True, slots=True)
class EmitEvent:
    kind: ClassVar[str] = "emit_event"
    name: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "data": copy.deepcopy(self.data)}


@dataclass(frozen=True, slots=True)
class SayLine:
    kind: ClassVar[str] = "say_line"
    character: str
    line_id: str
    text: str  # templates already filled
    emotion: str | None = None
    gesture: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "character": self.character,
            "line_id": self.line_id,
            "text": self.text,
            "emotion": self.emotion,
            "gesture": self.gesture,
        }


@dataclass(frozen=True, slots=True)
class IntentMatched:
    """Why an intent exit fired (for logs and debugging overlays); always precedes its effects."""

    kind: ClassVar[str] = "intent_matched"
    character: str
    intent: str
    score: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "character": self.character,
            "intent": self.intent,
            "score": self.score,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class FactTold:
    """An exit's ``tell``: ``character`` now knows ``fact`` about the player (gossip), whether
    or not it was there; it goes into that character's prompt (session/facts.py)."""

    kind: ClassVar[str] = "fact_told"
    character: str
    fact: str  # templates already filled

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "character": self.character, "fact": self.fact}


StoryEffect = BeatEntered | FlagSet | EmitEvent | SayLine | IntentMatched | FactTold

# --------------------------------------------------------------------------- state


@dataclass
class StoryState:
    """Everything that changes as the story plays; plain data, JSON-safe via to_dict/from_dict."""

    flags: dict[str, bool] = field(default_factory=dict)
    vars: dict[str, Scalar] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)  # character id -> beat id
    visits: dict[str, int] = field(default_factory=dict)  # beat id -> times entered
    said_lines: set[str] = field(default_factory=set)
    last_beat: str | None = None  # the most recently entered beat, story-wide

    def value(self, name: str) -> Scalar | None:
        if name in self.flags:
            return self.flags[name]
        return self.vars.get(name)

    def assign(self, name: str, value: Scalar) -> None:
        """Set a flag (true/false) or a variable (number or text); a name is one or the other.

        Raises ValueError for anything else (None, lists...), which could not be saved.
        """
        if not isinstance(name, str) or not isinstance(value, (bool, int, float, str)):
            raise ValueError(
                f"story variable {name!r} must be true/false, a number or text, not {type(value).__name__}"
            )
        if isinstance(value, bool):
            self.vars.pop(name, None)
            self.flags[name] = value
        else:
            self.flags.pop(name, None)
            self.vars[name] = value

    def copy(self) -> StoryState:
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "min_version": STATE_MIN_READER,
            "flags": dict(sorted(self.flags.items())),
            "vars": dict(sorted(self.vars.items())),
            "current": dict(sorted(self.current.items())),
            "visits": dict(sorted(self.visits.items())),
            "said_lines": sorted(self.said_lines),
            "last_beat": self.last_beat,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoryState:
        """Rebuild a state saved by :meth:`to_dict` (by this engine, an older one, or a newer one
        whose ``min_version`` this engine meets); raises UnreadableState (a ValueError) on anything else."""
        data = migrate_state(data)

        def mapping(key: str, types: tuple[type, ...], what: str) -> dict[str, Any]:
            raw = data.get(key, {})
            if not isinstance(raw, Mapping) or not all(
                isinstance(k, str) and isinstance(v, types) for k, v in raw.items()
            ):
                raise UnreadableState(f"story state '{key}' must map names to {what}")
            return dict(raw)

        flags = mapping("flags", (bool,), "true/false")
        variables = mapping("vars", (bool, int, float, str), "values")
        current = mapping("current", (str,), "beat ids")
        visits = mapping("visits", (int,), "counts")
        said = data.get("said_lines", [])
        if not isinstance(said, list) or not all(isinstance(s, str) for s in said):
            raise UnreadableState("story state 'said_lines' must be a list of line ids")
        last = data.get("last_beat")
        if last is not None and not isinstance(last, str):
            raise UnreadableState("story state 'last_beat' must be a beat id or null")
        state = cls(flags=flags, current=current, visits=visits, said_lines=set(said), last_beat=last)
        for k, v in variables.items():
            state.assign(k, v)
        return state

