"""Loading ``story/*.yaml`` into a :class:`~npc_engine.story.runtime.Story`, with line-accurate checks.

Several files make one story: their beats, intents, triggers, start beats and
variables are merged (ids must be unique across files). Checks here need only
the story; checks against characters live in :mod:`npc_engine.world`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from npc_engine.story.conditions import RESERVED_NAMES, parse_condition
from npc_engine.story.intents import Intent
from npc_engine.story.lines import TEMPLATE_VAR, Line
from npc_engine.story.runtime import Story
from npc_engine.story.schema import IDENT, Beat, Exit
from npc_engine.yamlsrc import (
    Sourced,
    SourceError,
    ValidationFailed,
    YMap,
    load_yaml_file,
    locate,
    suggest,
    validation_errors,
)

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml")
OBJECTIVE_MAX_WORDS = 40  # the 135M model follows one or two short sentences; more gets ignored
FACT_MAX_WORDS = 25  # a told fact is one line of a list in the prompt


class StoryFile(Sourced):
    """The top level of one story file."""

    title: str = ""
    start: list[str] = Field(default_factory=list)
    vars: dict[str, Any] = Field(default_factory=dict)
    intents: dict[str, Intent] = Field(default_factory=dict)
    triggers: list[Exit] = Field(default_factory=list)
    beats: dict[str, Beat] = Field(default_factory=dict)

    @field_validator("start", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("vars")
    @classmethod
    def _var_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        for k, v in value.items():
            if not IDENT.match(k):
                raise ValueError(f"'{k}' is not a valid variable name (lower case, digits, '_')")
            if k in RESERVED_NAMES:
                raise ValueError(f"'{k}' is a reserved word and cannot be a variable")
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(f"variable '{k}' must start as true/false, a number or text")
        return value


@dataclass
class _Loaded:
    file: str
    raw: YMap
    model: StoryFile


def story_files(source: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[SourceError]]:
    """The YAML files named by ``source``: files as given, folders expanded to their ``*.yaml``."""
    items = [source] if isinstance(source, (str, Path)) else list(source)
    files: list[Path] = []
    problems: list[SourceError] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in YAML_SUFFIXES)
            if not found:
                problems.append(SourceError(str(path), 0, "no story files (*.yaml) in this folder"))
            files += found
        else:
            problems.append(SourceError(str(path), 0, "no such file or folder"))
    return files, problems


def _read_file(path: Path) -> tuple[_Loaded | None, list[SourceError]]:
    file = str(path)
    try:
        raw = load_yaml_file(path)
    except ValidationFailed as e:
        return None, e.errors
    if raw is None:
        return None, [SourceError(file, 1, "the story file is empty")]
    if not isinstance(raw, YMap):
        return None, [
            SourceError(
                file, getattr(raw, "line", 1), "a story file must be a mapping (beats: ..., intents: ...)"
            )
        ]
    problems: list[SourceError] = []
    prepared = raw
    for section, key_field in (("beats", "id"), ("intents", "name")):
        body = raw.get(section)
        if not isinstance(body, YMap):
            continue
        injected = YMap(body.file, body.line)
        for key, value in body.items():
            injected[key] = value
            injected.key_lines[key] = body.key_lines[key]
            injected.value_lines[key] = body.value_lines[key]
            what = "beat" if section == "beats" else "intent"
            if not IDENT.match(key):
                problems.append(
                    SourceError(
                        file, body.key_lines[key], f"{what} id '{key}' should use lower case, digits and '_'"
                    )
                )
            if isinstance(value, YMap):
                if key_field in value:
                    problems.append(
                        SourceError(
                            file,
                            value.key_lines[key_field],
                            f"remove '{key_field}': a {what}'s {key_field} is its key",
                        )
                    )
                injected[key] = value.with_key(key_field, key, body.key_lines[key])
        prepared = prepared.with_key(section, injected, raw.key_lines[section])
    try:
        model = StoryFile.model_validate(prepared)
    except ValidationError as e:
        return None, problems + validation_errors(e, prepared, StoryFile)
    return _Loaded(file, prepared, model), problems


@dataclass
class StoryParts:
    """Everything the story files define, merged, even when checks found errors (for further checks)."""

    beats: dict[str, Beat] = field(default_factory=dict)
    intents: dict[str, Intent] = field(default_factory=dict)
    triggers: list[Exit] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    complete: bool = True  # False when a file failed to load: references into it cannot be checked

    def set_names(self) -> set[str]:
        """Every flag/variable name some exit or trigger sets, or vars: declares."""
        names = set(self.vars) | {k for e in self.triggers for k in e.set}
        return names | {k for b in self.beats.values() for e in b.exits for k in e.set}

    def lines(self) -> list[tuple[str, Line]]:
        return [(b.line_speaker(line), line) for b in self.beats.values() for line in b.lines]


def read_story_parts(
    source: str | Path | Sequence[str | Path],
) -> tuple[StoryParts | None, list[SourceError]]:
    """Parse and check story files; the parts are None only if no file could be read at all."""
    files, problems = story_files(source)
    loaded: list[_Loaded] = []
    for path in files:
        one, found = _read_file(path)
        problems += found
        if one is not None:
            loaded.append(one)
    if not loaded:
        return None, problems
    complete = len(loaded) == len(files)
    if complete:  # else a goto into the broken file would look like an unknown beat
        problems += _check(loaded)
    parts = StoryParts(title=next((f.model.title for f in loaded if f.model.title), ""), complete=complete)
    for f in loaded:
        for bid, beat in f.model.beats.items():
            parts.beats.setdefault(bid, beat)
        for name, intent in f.model.intents.items():
            parts.intents.setdefault(name, intent)
        parts.triggers += f.model.triggers
        parts.start += f.model.start
        for k, v in f.model.vars.items():
            parts.vars.setdefault(k, v)
    return parts, problems


def read_story(source: str | Path | Sequence[str | Path]) -> tuple[Story | None, list[SourceError]]:
    """Load and check a story; returns it (None if there are errors) and every problem found."""
    parts, problems = read_story_parts(source)
    if parts is None or not parts.complete or any(p.is_error for p in problems):
        return None, problems
    return build_story(parts), problems


def build_story(parts: StoryParts) -> Story:
    """The runtime Story from checked parts (raises ValueError on broken references)."""
    return Story(
        parts.beats.values(), parts.intents.values(), parts.triggers, parts.start, parts.vars, parts.title
    )


def load_story(source: str | Path | Sequence[str | Path]) -> Story:
    """Load a story folder (or files); raises ValidationFailed listing every error.

    Warnings (a flag read but never set, an unused intent) are logged, not raised.
    """
    story, problems = read_story(source)
    if story is None:
        raise ValidationFailed(problems or [SourceError(str(source), 0, "no story found")])
    for p in problems:
        log.warning("%s", p)
    log.info("loaded story %r: %d beats, %d intents", story.title, len(story.beats), len(story.intents))
    return story


# --------------------------------------------------------------------------- checks


def _check(loaded: list[_Loaded]) -> list[SourceError]:
    out: list[SourceError] = []
    beats: dict[str, tuple[_Loaded, Beat]] = {}
    intents: dict[str, tuple[_Loaded, Intent]] = {}
    declared: dict[str, tuple[str, int, Any]] = {}
    for f in loaded:
        for bid, beat in f.model.beats.items():
            if bid in beats:
                other = beats[bid][0]
                out.append(
                    _at(
                        f,
                        ("beats", bid),
                        f"beat '{bid}' is already defined in {other.file}:"
                        f"{other.raw['beats'].key_lines[bid]}",
                        key=True,
                    )
                )
            else:
                beats[bid] = (f, beat)
        for name, intent in f.model.intents.items():
            if name in intents:
                other = intents[name][0]
                out.append(
                    _at(f, ("intents", name), f"intent '{name}' is already defined in {other.file}", key=True)
                )
            else:
                intents[name] = (f, intent)
        for name, value in f.model.vars.items():
            if name in declared and declared[name][2] != value:
                file, ln, _ = declared[name]
                out.append(
                    _at(
                        f,
                        ("vars", name),
                        f"variable '{name}' starts as {declared[name][2]!r} at {file}:{ln}",
                    )
                )
            declared.setdefault(name, (f.file, _line(f, ("vars", name)), value))

    # Exits: where they go and what they listen for.
    exits: list[tuple[_Loaded, tuple[str | int, ...], Exit, Beat | None]] = []
    for f in loaded:
        for n, e in enumerate(f.model.triggers):
            exits.append((f, ("triggers", n), e, None))
        for bid, beat in f.model.beats.items():
            for n, e in enumerate(beat.exits):
                exits.append((f, ("beats", bid, "exits", n), e, beat))
    used_intents: set[str] = set()
    set_names: set[str] = set()
    for f, loc, e, in_beat in exits:
        if e.goto is not None and e.goto not in beats:
            out.append(_at(f, (*loc, "goto"), f"goto: unknown beat '{e.goto}'{suggest(e.goto, beats)}"))
        if e.on_intent is not None:
            used_intents.add(e.on_intent)
            if in_beat is None:
                out.append(
                    _at(
                        f,
                        (*loc, "on_intent"),
                        "triggers react to game events only: move this exit into a beat",
                    )
                )
            elif e.on_intent not in intents:
                out.append(
                    _at(
                        f,
                        (*loc, "on_intent"),
                        f"unknown intent '{e.on_intent}'{suggest(e.on_intent, intents)}: define it under intents:",
                    )
                )
        if in_beat is None and e.is_auto:
            out.append(_at(f, loc, "a trigger needs on_event (triggers react to game events)"))
        set_names.update(e.set)

    # Start beats and reachability.
    starts: list[str] = []
    for f in loaded:
        for n, sid in enumerate(f.model.start):
            if sid not in beats:
                out.append(_at(f, ("start", n), f"start: unknown beat '{sid}'{suggest(sid, beats)}"))
            else:
                starts.append(sid)
    if beats and not any(f.model.start for f in loaded):
        first = loaded[0]
        out.append(
            SourceError(first.file, 1, "no start beat: add `start: <beat id>` (or a list, one per character)")
        )
    elif beats:
        reachable = _reachable(
            starts, [e for _, _, e, b in exits if b is None], {b: beat for b, (_, beat) in beats.items()}
        )
        for bid, (f, beat) in beats.items():
            # An exchange between characters is content even if no exit enters its beat: the
            # game plays it with scene.banter {beat}, which speaks the lines without entering.
            if bid not in reachable and not is_exchange(beat):
                out.append(
                    _at(
                        f,
                        ("beats", bid),
                        f"beat '{bid}' can never be reached: no start entry or goto leads to it",
                        key=True,
                    )
                )
    out += _auto_loops({b: beat for b, (_, beat) in beats.items()}, {b: f for b, (f, _) in beats.items()})

    # Conditions: beats named in visited()/visits(), names never set.
    known_names = set(declared) | set_names | {"beat"}
    for f in loaded:
        for loc, text in _conditions(f):
            out += condition_problems(text, f.file, _line(f, loc), known_names, set(beats))

    # Who says each line, who leads, who must be together: the beat's own characters.
    for f in loaded:
        for bid, beat in f.model.beats.items():
            out += [_at(f, ("beats", bid, *loc), message) for loc, message in beat.reference_problems()]

    # Lines: ids unique across the story; templates name known variables.
    first_line: dict[str, tuple[str, int]] = {}
    for f in loaded:
        for bid, beat in f.model.beats.items():
            for n, line in enumerate(beat.lines):
                loc = ("beats", bid, "lines", n)
                if line.id in first_line:
                    file, ln = first_line[line.id]
                    out.append(_at(f, loc, f"duplicate line id '{line.id}' (already used at {file}:{ln})"))
                else:
                    first_line[line.id] = (f.file, _line(f, loc))
                out += template_problems(
                    line.text, f.file, _line(f, (*loc, "text")), set(declared) | set_names
                )
            if beat.objective:
                loc = ("beats", bid, "objective")
                out += template_problems(beat.objective, f.file, _line(f, loc), set(declared) | set_names)
                words = len(beat.objective.split())
                if words > OBJECTIVE_MAX_WORDS:
                    out.append(
                        _at(
                            f,
                            loc,
                            f"objective is {words} words: the small model follows one or two short sentences "
                            f"(under {OBJECTIVE_MAX_WORDS} words) best",
                            warning=True,
                        )
                    )
    # Gossip: templates name known variables; a fact is one short line (the small model reads lists).
    for _, _, e, _ in exits:
        for told in e.tell:
            out += template_problems(told.fact, told.src_file, told.src_line("fact"), set(declared) | set_names)
            if len(told.fact.split()) > FACT_MAX_WORDS:
                out.append(told.problem(
                    f"this fact is {len(told.fact.split())} words: keep it to one short sentence "
                    f"(under {FACT_MAX_WORDS} words) about the player", "fact", warning=True,
                ))
    for name, (f, _) in intents.items():
        if name not in used_intents:
            out.append(
                _at(f, ("intents", name), f"intent '{name}' is not used by any exit", key=True, warning=True)
            )
    return out


def is_exchange(beat: Beat) -> bool:
    """Whether the beat's lines are said by two or more characters (a scripted dialogue)."""
    return len({beat.line_speaker(line) for line in beat.lines}) > 1


def _line(f: _Loaded, loc: tuple[str | int, ...], *, key: bool = False) -> int:
    return locate(f.raw, loc, key=key)


def _at(
    f: _Loaded, loc: tuple[str | int, ...], message: str, *, key: bool = False, warning: bool = False
) -> SourceError:
    return SourceError(f.file, _line(f, loc, key=key), message, "warning" if warning else "error")


def _conditions(f: _Loaded) -> Iterable[tuple[tuple[str | int, ...], str]]:
    for n, e in enumerate(f.model.triggers):
        if e.when:
            yield ("triggers", n, "when"), e.when
    for bid, beat in f.model.beats.items():
        if beat.when:
            yield ("beats", bid, "when"), beat.when
        for n, e in enumerate(beat.exits):
            if e.when:
                yield ("beats", bid, "exits", n, "when"), e.when


def condition_problems(
    text: str,
    file: str,
    line: int,
    known_names: set[str],
    beats: set[str] | None,
    line_ids: set[str] | None = None,
) -> list[SourceError]:
    """Unknown beats in visited()/visits() (errors) and names never set (warnings) in one condition.

    ``beats`` None skips the beat check; ``said()`` ids are checked only when
    ``line_ids`` is given (they may name character lines, which the story alone cannot see).
    """
    cond = parse_condition(text)
    out: list[SourceError] = []
    for fn, arg in cond.calls():
        if fn in ("visited", "visits") and beats is not None and arg not in beats:
            out.append(SourceError(file, line, f'{fn}("{arg}"): unknown beat{suggest(arg, beats)}'))
        if fn == "said" and line_ids is not None and arg not in line_ids:
            out.append(SourceError(file, line, f'said("{arg}"): unknown line id{suggest(arg, line_ids)}'))
    for name in sorted(cond.names() - known_names):
        out.append(
            SourceError(
                file,
                line,
                f"'{name}' is never set by an exit nor declared under vars:, so unless the game sets it, "
                f"it is always false"
                f"{suggest(name, known_names)}",
                "warning",
            )
        )
    return out


def template_problems(text: str, file: str, line: int, known: set[str]) -> list[SourceError]:
    """``{name}`` templates that no variable fills (they would be spoken as nothing)."""
    return [
        SourceError(
            file,
            line,
            f"template '{{{name}}}' names no declared variable{suggest(name, known)}: declare it under vars:",
            "warning",
        )
        for name in dict.fromkeys(TEMPLATE_VAR.findall(text))
        if name not in known
    ]


def _reachable(starts: list[str], triggers: list[Exit], beats: dict[str, Beat]) -> set[str]:
    todo = list(starts) + [t.goto for t in triggers if t.goto in beats]
    seen: set[str] = set()
    while todo:
        bid = todo.pop()
        if bid in seen or bid not in beats:
            continue
        seen.add(bid)
        todo += [e.goto for e in beats[bid].exits if e.goto is not None]
    return seen


def _auto_loops(beats: dict[str, Beat], files: dict[str, _Loaded]) -> list[SourceError]:
    """Cycles made only of unconditional automatic exits would bounce forever: report one per cycle."""
    edges = {
        bid: [e.goto for e in beat.exits if e.is_auto and e.when is None and e.goto in beats]
        for bid, beat in beats.items()
    }
    out: list[SourceError] = []
    reported: set[frozenset[str]] = set()
    for root in beats:
        stack: list[tuple[str, list[str]]] = [(root, [root])]
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == root:
                    cycle = frozenset(path)
                    if cycle not in reported:
                        reported.add(cycle)
                        out.append(
                            _at(
                                files[root],
                                ("beats", root),
                                "automatic exits (no on_event/on_intent, no when) loop: "
                                + " -> ".join([*path, root]),
                                key=True,
                            )
                        )
                elif nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    return out
