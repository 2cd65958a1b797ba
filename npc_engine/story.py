"""The story graph, its state, and how player lines and game events move it: pure logic, no I/O.

Model (borrowed from Ink knots, Yarn nodes and Convai sections):

* A **beat** belongs to one character (or several). It carries an ``objective``
  the LLM works toward (an instruction), verbatim ``lines`` with stable ids, or
  both (lines spoken on entry, then the objective guides the model).
* Every character has a *current beat*. ``start`` beats are entered when the
  state is created (or later, once their ``when`` holds, for a character that
  has no beat yet). A ``goto`` moves the characters of the target beat;
  everyone else stays where they are.
* A beat's **exits** fire on a game event (``on_event`` + optional ``data``
  match), on the player's classified intent (``on_intent``), or, with neither,
  automatically as soon as their ``when`` holds. Firing sets flags/variables,
  emits events to the game, then enters the ``goto`` beat.
* An exit fires only if its own ``when`` holds and its ``goto`` target can be
  entered: the target's ``when`` holds and, for a ``once`` beat, it has never
  been entered before. Sticky beats (the default) can be re-entered.
* ``triggers`` are story-wide exits for game events, active whatever the beats.

The caller owns a :class:`StoryState` and passes it in; the methods mutate it
and return the :data:`StoryEffect` list for the session to act on.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from npc_engine.conditions import (
    RESERVED_NAMES,
    Value,
    parse_condition,
    validate_condition_field,
)
from npc_engine.intents import Intent, IntentMatch, classify, rank
from npc_engine.lines import Line, fill_template
from npc_engine.yamlsrc import Sourced

Scalar = bool | int | float | str
IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
EVENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
STATE_VERSION = 1
MAX_SETTLE_STEPS = 32  # automatic exits chained in one call; more means a loop in the story



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


# --------------------------------------------------------------------------- authored models


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


class Exit(Sourced):
    """A way out of a beat (or a story-wide trigger)."""

    on_event: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    on_intent: str | None = None
    when: str | None = None
    goto: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    emit: list[EmitSpec] = Field(default_factory=list)

    @field_validator("when", mode="before")
    @classmethod
    def _when_parses(cls, value: Any) -> Any:
        return validate_condition_field(value)

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
        if self.goto is None and not self.set and not self.emit:
            raise ValueError("this exit does nothing: give it a goto, set or emit")
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
    lines: list[Line] = Field(default_factory=list)
    when: str | None = None
    once: bool = False
    exits: list[Exit] = Field(default_factory=list)

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
        """Who speaks the beat's lines: the first character listed."""
        return self.character[0]


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


StoryEffect = BeatEntered | FlagSet | EmitEvent | SayLine | IntentMatched


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
            "flags": dict(sorted(self.flags.items())),
            "vars": dict(sorted(self.vars.items())),
            "current": dict(sorted(self.current.items())),
            "visits": dict(sorted(self.visits.items())),
            "said_lines": sorted(self.said_lines),
            "last_beat": self.last_beat,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoryState:
        """Rebuild a state saved by :meth:`to_dict`; raises ValueError on anything else."""
        if not isinstance(data, Mapping):
            raise ValueError("story state must be a mapping, as written by StoryState.to_dict()")
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"story state version {version!r} is not supported (this engine reads version {STATE_VERSION})"
            )

        def mapping(key: str, types: tuple[type, ...], what: str) -> dict[str, Any]:
            raw = data.get(key, {})
            if not isinstance(raw, Mapping) or not all(
                isinstance(k, str) and isinstance(v, types) for k, v in raw.items()
            ):
                raise ValueError(f"story state '{key}' must map names to {what}")
            return dict(raw)

        flags = mapping("flags", (bool,), "true/false")
        variables = mapping("vars", (bool, int, float, str), "values")
        current = mapping("current", (str,), "beat ids")
        visits = mapping("visits", (int,), "counts")
        said = data.get("said_lines", [])
        if not isinstance(said, list) or not all(isinstance(s, str) for s in said):
            raise ValueError("story state 'said_lines' must be a list of line ids")
        last = data.get("last_beat")
        if last is not None and not isinstance(last, str):
            raise ValueError("story state 'last_beat' must be a beat id or null")
        state = cls(flags=flags, current=current, visits=visits, said_lines=set(said), last_beat=last)
        for k, v in variables.items():
            state.assign(k, v)
        return state


class _Env:
    """What conditions see: state values, visits, said lines and ``beat``."""

    def __init__(self, state: StoryState, character: str | None) -> None:
        self.state = state
        self.character = character

    def lookup(self, name: str) -> Value:
        if name == "beat":
            if self.character is not None:
                return self.state.current.get(self.character, "")
            return self.state.last_beat or ""
        return self.state.value(name)

    def visits(self, beat_id: str) -> int:
        return self.state.visits.get(beat_id, 0)

    def said(self, line_id: str) -> bool:
        return line_id in self.state.said_lines


def _value_eq(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, str) != isinstance(actual, str):
        return False
    return bool(expected == actual)


def data_matches(pattern: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """Whether event ``data`` has every key of ``pattern`` with an equal value (a list means any of)."""
    for key, expected in pattern.items():
        if key not in data:
            return False
        options = expected if isinstance(expected, list) else [expected]
        if not any(_value_eq(o, data[key]) for o in options):
            return False
    return True


# --------------------------------------------------------------------------- the story


class Story:
    """A loaded story: beats, intents, triggers, start beats and variable defaults."""

    def __init__(
        self,
        beats: Iterable[Beat],
        intents: Iterable[Intent] = (),
        triggers: Iterable[Exit] = (),
        start: Sequence[str] = (),
        vars: Mapping[str, Scalar] | None = None,
        title: str = "",
    ) -> None:
        self.title = title
        self.beats: dict[str, Beat] = {}
        for b in beats:
            if b.id in self.beats:
                raise ValueError(f"two beats have the id '{b.id}'")
            self.beats[b.id] = b
        self.intents: dict[str, Intent] = {i.name: i for i in intents}
        self.triggers: list[Exit] = list(triggers)
        self.start: list[str] = list(start)
        self.var_defaults: dict[str, Scalar] = dict(vars or {})
        # Characters in order of first appearance: the order events visit their beats.
        self.characters: list[str] = list(dict.fromkeys(c for b in self.beats.values() for c in b.characters))
        self._check_references()

    def _check_references(self) -> None:
        problems: list[str] = []
        for sid in self.start:
            if sid not in self.beats:
                problems.append(f"start beat '{sid}' does not exist")
        exits = [(f"trigger {n}", e) for n, e in enumerate(self.triggers)]
        exits += [(f"beat '{b.id}'", e) for b in self.beats.values() for e in b.exits]
        for where, e in exits:
            if e.goto is not None and e.goto not in self.beats:
                problems.append(f"{where} goes to unknown beat '{e.goto}'")
            if e.on_intent is not None and e.on_intent not in self.intents:
                problems.append(f"{where} uses unknown intent '{e.on_intent}'")
        if problems:
            raise ValueError("; ".join(problems))

    # ----------------------------------------------------------------- queries

    def initial_state(self, vars: Mapping[str, Scalar] | None = None) -> StoryState:
        """A fresh state: variable defaults, then the game's ``vars``, then the start beats entered.

        Start beats entered here speak nothing; their lines are spoken the
        first time the player talks to that character.
        """
        state = StoryState()
        for name, value in {**self.var_defaults, **(vars or {})}.items():
            state.assign(name, value)
        self._enter_start_beats(state, [], speak=False)
        self._settle(state, [], speak=False)
        return state

    def active_beat(self, state: StoryState, character_id: str) -> Beat | None:
        """The character's current beat (None if it has none, or a saved id no longer exists)."""
        beat_id = state.current.get(character_id)
        return self.beats.get(beat_id) if beat_id is not None else None

    def objective(self, state: StoryState, character_id: str) -> str | None:
        """The active beat's objective with templates filled, for the prompt builder."""
        beat = self.active_beat(state, character_id)
        return self.fill(beat.objective, state) if beat is not None and beat.objective else None

    def condition_true(self, expr: str, state: StoryState, character_id: str | None = None) -> bool:
        """Evaluate a condition (e.g. a secret's ``reveal_when``); ``beat`` is ``character_id``'s beat.

        Raises ConditionError if ``expr`` does not parse (``npc-engine check`` catches that first).
        """
        return parse_condition(expr).evaluate(_Env(state, character_id))

    def fill(self, text: str, state: StoryState) -> str:
        """Fill ``{name}`` templates from the state's variables and flags."""
        return fill_template(text, {**state.flags, **state.vars})

    def lines(self) -> list[tuple[str, Line]]:
        """Every verbatim story line with its speaker, for pre-rendering audio."""
        return [(b.speaker, line) for b in self.beats.values() for line in b.lines]

    def explain(self, state: StoryState, character_id: str, text: str) -> list[IntentMatch]:
        """How ``text`` scores against the intents the character's active beat listens for."""
        beat = self.active_beat(state, character_id)
        if beat is None:
            return []
        names = dict.fromkeys(
            e.on_intent for e in beat.exits if e.on_intent and self._exit_ready(state, e, character_id)
        )
        return rank(text, [self.intents[n] for n in names if n in self.intents])

    # ----------------------------------------------------------------- transitions

    def on_player_line(self, state: StoryState, character_id: str, text: str) -> list[StoryEffect]:
        """React to what the player said to ``character_id``; fires at most one intent exit.

        With no exit fired and a beat that has lines, the lines come back as
        SayLine effects when they have not been spoken yet, or every time for
        a sticky beat that has lines and no objective.
        """
        effects: list[StoryEffect] = []
        beat = self.active_beat(state, character_id)
        if beat is None:
            return effects
        ready = [e for e in beat.exits if e.on_intent and self._exit_ready(state, e, character_id)]
        names = list(dict.fromkeys(e.on_intent for e in ready if e.on_intent in self.intents))
        match = classify(text, [self.intents[n] for n in names]) if names else None
        if match is not None:
            chosen = next(e for e in ready if e.on_intent == match.intent)
            effects.append(IntentMatched(character_id, match.intent, match.score, match.reason))
            self._fire(state, chosen, effects)
        elif beat.lines:
            unsaid = any(line.id not in state.said_lines for line in beat.lines)
            if unsaid or (beat.objective is None and not beat.once):
                self._speak(state, beat, effects)
        self._settle(state, effects)
        return effects

    def on_event(
        self, state: StoryState, name: str, data: Mapping[str, Any] | None = None
    ) -> list[StoryEffect]:
        """React to a game event: matching triggers fire first, then at most one exit per active beat.

        Beats are visited in the order their characters first appear in the story;
        each exit's conditions are checked just before it fires.
        """
        data = data or {}
        effects: list[StoryEffect] = []
        for trigger in self.triggers:
            if (
                trigger.on_event == name
                and data_matches(trigger.data, data)
                and self._exit_ready(state, trigger, None)
            ):
                self._fire(state, trigger, effects)
        candidates: list[tuple[str, Beat]] = []
        seen: set[str] = set()
        for character in self.characters:
            beat = self.active_beat(state, character)
            if beat is not None and beat.id not in seen:
                seen.add(beat.id)
                candidates.append((character, beat))
        for character, beat in candidates:
            if state.current.get(character) != beat.id:
                continue  # an earlier exit moved this character on
            for e in beat.exits:
                if (
                    e.on_event == name
                    and data_matches(e.data, data)
                    and self._exit_ready(state, e, character)
                ):
                    self._fire(state, e, effects)
                    break
        self._settle(state, effects)
        return effects

    # ----------------------------------------------------------------- internals

    def can_enter(self, state: StoryState, beat_id: str) -> bool:
        """Whether a goto to ``beat_id`` would fire now (its ``when`` holds; a once beat not yet visited)."""
        beat = self.beats.get(beat_id)
        if beat is None:
            return False
        if beat.once and state.visits.get(beat_id, 0) > 0:
            return False
        return beat.when is None or self.condition_true(beat.when, state, beat.speaker)

    def _exit_ready(self, state: StoryState, e: Exit, character: str | None) -> bool:
        if e.when is not None and not self.condition_true(e.when, state, character):
            return False
        return e.goto is None or self.can_enter(state, e.goto)

    def _fire(self, state: StoryState, e: Exit, effects: list[StoryEffect], *, speak: bool = True) -> None:
        for name, value in e.set.items():
            state.assign(name, value)
            effects.append(FlagSet(name, value))
        for spec in e.emit:
            effects.append(EmitEvent(spec.name, copy.deepcopy(spec.data)))
        if e.goto is not None:
            self._enter(state, self.beats[e.goto], effects, speak=speak)

    def _enter(self, state: StoryState, beat: Beat, effects: list[StoryEffect], *, speak: bool) -> None:
        for character in beat.characters:
            state.current[character] = beat.id
            effects.append(BeatEntered(beat.id, character))
        state.visits[beat.id] = state.visits.get(beat.id, 0) + 1
        state.last_beat = beat.id
        if speak:
            self._speak(state, beat, effects)

    def _speak(self, state: StoryState, beat: Beat, effects: list[StoryEffect]) -> None:
        for line in beat.lines:
            effects.append(
                SayLine(beat.speaker, line.id, self.fill(line.text, state), line.emotion, line.gesture)
            )
            state.said_lines.add(line.id)

    def _enter_start_beats(self, state: StoryState, effects: list[StoryEffect], *, speak: bool) -> bool:
        """Enter start beats for characters that never had a beat; True if any was entered."""
        entered = False
        for sid in self.start:
            beat = self.beats[sid]
            if all(c not in state.current for c in beat.characters) and self.can_enter(state, sid):
                self._enter(state, beat, effects, speak=speak)
                entered = True
        return entered

    def _settle(self, state: StoryState, effects: list[StoryEffect], *, speak: bool = True) -> None:
        """Fire automatic exits (and late start beats) until nothing changes.

        Each automatic exit fires at most once per call, so a loop in the
        story cannot hang the game; ``npc-engine check`` reports such loops.
        """
        fired: set[tuple[str, int]] = set()
        for _ in range(MAX_SETTLE_STEPS):
            progressed = self._enter_start_beats(state, effects, speak=speak)
            for character in self.characters:
                beat = self.active_beat(state, character)
                if beat is None:
                    continue
                for n, e in enumerate(beat.exits):
                    if not e.is_auto or (beat.id, n) in fired or not self._exit_ready(state, e, character):
                        continue
                    target = self.beats[e.goto or ""]
                    # An automatic exit never re-enters a beat its whole cast is already in.
                    if all(state.current.get(c) == target.id for c in target.characters):
                        continue
                    fired.add((beat.id, n))
                    self._fire(state, e, effects, speak=speak)
                    progressed = True
                    break
            if not progressed:
                return


def load_story(source: str | Path | Sequence[str | Path]) -> Story:
    """Load ``story/*.yaml`` (a folder, a file, or several); raises ValidationFailed with every error.

    The loader lives in :mod:`npc_engine.story_loader` (this module stays free of I/O);
    this re-export is for callers that think of the story as one module.
    """
    from npc_engine.story_loader import load_story as _load

    return _load(source)
