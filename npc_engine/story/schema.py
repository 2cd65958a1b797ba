"""The authored story models, validated from YAML: events to emit, exits and beats.

Pure data and field checks; what the models mean at run time is in
:mod:`npc_engine.story.runtime`, and reading files is :mod:`npc_engine.story.loader`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import Field, field_validator, model_validator

from npc_engine.story.conditions import RESERVED_NAMES, validate_condition_field
from npc_engine.story.lines import BeatLine
from npc_engine.yamlsrc import Sourced, suggest

IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
EVENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _scalars(value: Any, what: str) -> Any:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(f"{what} '{k}' must be true/false, a number or text, not {type(v).__name__}")
    return value


def _json_safe(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_json_safe(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _json_safe(v) for k, v in value.items())
    return False


class EmitSpec(Sourced):
    """An event for the game (Yarn's ``<<command>>``): ``name`` and JSON ``data``."""

    name: str
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not EVENT_NAME.match(value):
            raise ValueError(
                f"event name {value!r} should look like 'door.open' (letters, digits, '_', dots)"
            )
        return value

    @field_validator("data")
    @classmethod
    def _data_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not _json_safe(value):
            raise ValueError("event data may only hold text, numbers, true/false, lists and mappings")
        return value


class TellSpec(Sourced):
    """Gossip: ``character`` learns ``fact`` (one short line about the player) when the exit fires."""

    character: str
    fact: str

    @field_validator("fact")
    @classmethod
    def _fact_text(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the fact is empty")
        return value


class Exit(Sourced):
    """A way out of a beat (or a story-wide trigger)."""

    on_event: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    on_intent: str | None = None
    when: str | None = None
    goto: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    emit: list[EmitSpec] = Field(default_factory=list)
    tell: list[TellSpec] = Field(default_factory=list)

    @field_validator("when", mode="before")
    @classmethod
    def _when_parses(cls, value: Any) -> Any:
        return validate_condition_field(value)

    @field_validator("tell", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, Mapping) else value

    @field_validator("data")
    @classmethod
    def _data_scalars(cls, value: dict[str, Any]) -> dict[str, Any]:
        for k, v in value.items():
            items = v if isinstance(v, list) else [v]
            if not all(isinstance(i, (bool, int, float, str)) for i in items):
                raise ValueError(f"data '{k}' must be a value or a list of values to match")
        return value

    @field_validator("set")
    @classmethod
    def _set_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not IDENT.match(name):
                raise ValueError(f"'{name}' is not a valid flag/variable name (lower case, digits, '_')")
            if name in RESERVED_NAMES:
                raise ValueError(f"'{name}' is a reserved word and cannot be set")
        return _scalars(value, "value of")

    @field_validator("on_event")
    @classmethod
    def _event_shape(cls, value: str | None) -> str | None:
        if value is not None and not EVENT_NAME.match(value):
            raise ValueError(
                f"event name {value!r} should look like 'item.picked_up' (letters, digits, '_', dots)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Exit:
        if self.on_event and self.on_intent:
            raise ValueError("an exit fires on_event or on_intent, not both: split it into two exits")
        if self.data and not self.on_event:
            raise ValueError("'data' matches a game event's data: it needs on_event")
        if self.is_auto and self.goto is None:
            raise ValueError(
                "an exit with neither on_event nor on_intent fires by itself when its 'when' holds, "
                "so it needs a goto"
            )
        if self.goto is None and not self.set and not self.emit and not self.tell:
            raise ValueError("this exit does nothing: give it a goto, set, emit or tell")
        return self

    @property
    def is_auto(self) -> bool:
        return self.on_event is None and self.on_intent is None


class Beat(Sourced):
    """One scene for one character (or several); its id is its key under ``beats:``."""

    INJECTED = frozenset({"id"})

    id: str
    character: list[str] = Field(min_length=1)
    objective: str | None = None
    lines: list[BeatLine] = Field(default_factory=list)
    when: str | None = None
    once: bool = False
    exits: list[Exit] = Field(default_factory=list)
    # In a scene: who answers a line addressed to nobody while this beat is active.
    lead: str | None = None
    # The on_intent exits fire only for a line said in a scene where all of these are present.
    together: list[str] = Field(default_factory=list)

    @field_validator("when", mode="before")
    @classmethod
    def _when_parses(cls, value: Any) -> Any:
        return validate_condition_field(value)

    @field_validator("character", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("objective")
    @classmethod
    def _objective_text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the objective is empty")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _has_content(self) -> Beat:
        if self.objective is None and not self.lines:
            raise ValueError(
                f"beat '{self.id}' needs an objective (for the model) or lines (spoken verbatim), or both"
            )
        return self

    @property
    def characters(self) -> tuple[str, ...]:
        return tuple(self.character)

    @property
    def speaker(self) -> str:
        """Who speaks a line that names no ``character``: the first character listed."""
        return self.character[0]

    def line_speaker(self, line: BeatLine) -> str:
        """Who says ``line``: its own ``character``, else the beat's first character."""
        return line.character or self.speaker

    def gathered(self, present: Collection[str] | None) -> bool:
        """Whether the beat's on_intent exits may fire with ``present`` in the conversation.

        A beat without ``together`` always may; one with it only in a scene (``present`` not
        None: None is a one-to-one session) where every one of them is present.
        """
        if not self.together:
            return True
        return present is not None and all(c in present for c in self.together)

    def reference_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Line speakers, ``lead`` and ``together`` that are not the beat's characters, as
        (location under the beat, message); ``npc-engine check`` reports them with lines."""
        cast = ", ".join(self.character)
        out: list[tuple[tuple[str | int, ...], str]] = []
        for n, line in enumerate(self.lines):
            if line.character is not None and line.character not in self.character:
                out.append((
                    ("lines", n, "character"),
                    f"line '{line.id}': character '{line.character}' is not one of the beat's characters "
                    f"({cast}){suggest(line.character, self.character)}",
                ))
        if self.lead is not None and self.lead not in self.character:
            out.append((
                ("lead",),
                f"lead '{self.lead}' is not one of the beat's characters ({cast}){suggest(self.lead, self.character)}",
            ))
        for n, who in enumerate(self.together):
            if who not in self.character:
                out.append((
                    ("together", n),
                    f"together: '{who}' is not one of the beat's characters ({cast}){suggest(who, self.character)}",
                ))
        if self.together and len(set(self.together)) < 2:
            out.append((
                ("together",),
                "together needs two or more different characters (a beat of one character needs no together)",
            ))
        return out

