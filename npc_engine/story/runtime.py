"""The story graph at run time: how player lines and game events move it. Pure logic, no I/O.

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
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from npc_engine.story.conditions import Value, parse_condition
from npc_engine.story.intents import Intent, IntentMatch, classify, rank
from npc_engine.story.lines import Line, fill_template
from npc_engine.story.schema import Beat, Exit
from npc_engine.story.state import (
    BeatEntered,
    EmitEvent,
    FactTold,
    FlagSet,
    IntentMatched,
    SayLine,
    Scalar,
    StoryEffect,
    StoryState,
)

MAX_SETTLE_STEPS = 32  # automatic exits chained in one call; more means a loop in the story


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
        for b in self.beats.values():
            problems += [f"beat '{b.id}': {message}" for _, message in b.reference_problems()]
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
        """Every verbatim story line with who says it (the line's own ``character``, else its
        beat's first), for pre-rendering audio in the right voice."""
        return [(b.line_speaker(line), line) for b in self.beats.values() for line in b.lines]

    def lead(self, state: StoryState, present: Sequence[str]) -> str | None:
        """Who answers a scene line addressed to nobody, by the story: going through ``present``
        in order, the ``lead`` of the first one whose active beat names a lead who is present."""
        for character in present:
            beat = self.active_beat(state, character)
            if beat is not None and beat.lead is not None and beat.lead in present:
                return beat.lead
        return None

    def explain(
        self, state: StoryState, character_id: str, text: str, present: Collection[str] | None = None
    ) -> list[IntentMatch]:
        """How ``text`` scores against the intents the character's active beat listens for
        (none while a ``together`` beat's characters are not all ``present``)."""
        return rank(text, [self.intents[n] for n in self._listening(state, character_id, present)])

    def _listening(self, state: StoryState, character_id: str, present: Collection[str] | None) -> list[str]:
        """The intents whose exits of the character's active beat could fire now, in exit order."""
        beat = self.active_beat(state, character_id)
        if beat is None or not beat.gathered(present):
            return []
        ready = [e.on_intent for e in beat.exits if e.on_intent and self._exit_ready(state, e, character_id)]
        return [n for n in dict.fromkeys(ready) if n in self.intents]

    # ----------------------------------------------------------------- transitions

    def on_player_line(
        self, state: StoryState, character_id: str, text: str, present: Collection[str] | None = None
    ) -> list[StoryEffect]:
        """React to what the player said to ``character_id``; fires at most one intent exit.

        ``present`` is everyone in the conversation: the scene's characters, or None for a
        one-to-one session. A beat with ``together`` fires its intent exits only when all of
        them are present (so never in a one-to-one session).

        With no exit fired and a beat that has lines, the lines come back as
        SayLine effects when they have not been spoken yet, or every time for
        a sticky beat that has lines and no objective.
        """
        effects: list[StoryEffect] = []
        beat = self.active_beat(state, character_id)
        if beat is None:
            return effects
        names = self._listening(state, character_id, present)
        match = classify(text, [self.intents[n] for n in names]) if names else None
        if match is not None:
            chosen = next(
                e for e in beat.exits if e.on_intent == match.intent and self._exit_ready(state, e, character_id)
            )
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
        for told in e.tell:
            effects.append(FactTold(told.character, self.fill(told.fact, state)))
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
                SayLine(beat.line_speaker(line), line.id, self.fill(line.text, state), line.emotion, line.gesture)
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
