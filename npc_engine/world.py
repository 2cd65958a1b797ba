"""The whole world, validated: characters and story together, with every check ``npc-engine check`` runs.

:func:`check_paths` never raises on bad content (it reports); :func:`load_world`
raises :class:`~npc_engine.yamlsrc.ValidationFailed` on errors, for the server's start.
The command line front is :mod:`npc_engine.cli.check`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from npc_engine.characters import (
    Character,
    cross_check_characters,
    line_cue_problems,
    read_character,
)
from npc_engine.story.conditions import parse_condition
from npc_engine.story.loader import (
    YAML_SUFFIXES,
    StoryParts,
    build_story,
    condition_problems,
    read_story_parts,
    template_problems,
)
from npc_engine.story.runtime import Story
from npc_engine.story.schema import Beat, Exit
from npc_engine.yamlsrc import SourceError, ValidationFailed, sort_key, suggest

log = logging.getLogger(__name__)

DEFAULT_PATHS = ("characters", "story")
_STORY_KEYS = re.compile(r"^(beats|intents|triggers|start|title|vars)\s*:", re.MULTILINE)


@dataclass
class CheckReport:
    """What a check found: the content that loaded, and every problem (sorted by file and line)."""

    characters: dict[str, Character] = field(default_factory=dict)
    story: Story | None = None
    problems: list[SourceError] = field(default_factory=list)
    character_files: list[Path] = field(default_factory=list)
    story_files: list[Path] = field(default_factory=list)

    @property
    def errors(self) -> list[SourceError]:
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[SourceError]:
        return [p for p in self.problems if not p.is_error]

    def summary(self) -> str:
        what = [
            _count(len(self.character_files), "character file"),
            _count(len(self.story_files), "story file"),
        ]
        if self.story is not None:
            what.append(
                f"{_count(len(self.story.beats), 'beat')}, {_count(len(self.story.intents), 'intent')}"
            )
        found = (
            f"{_count(len(self.errors), 'error')}, {_count(len(self.warnings), 'warning')}"
            if self.problems
            else "no problems"
        )
        return f"checked {', '.join(what)}: {found}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _classify(path: Path) -> str:
    """'character' or 'story', by folder name, else by the file's top-level keys."""
    parent = path.parent.name.lower()
    if parent == "characters":
        return "character"
    if parent in ("story", "stories"):
        return "story"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "character"
    return "story" if _STORY_KEYS.search(text) else "character"


def collect_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path], list[SourceError]]:
    """Character files, story files, and problems with the paths themselves."""
    chars: list[Path] = []
    stories: list[Path] = []
    problems: list[SourceError] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            subdirs = [path / d for d in DEFAULT_PATHS if (path / d).is_dir()]
            if subdirs and path.name not in DEFAULT_PATHS:  # a project folder
                c, s, p = collect_files(subdirs)
                chars += c
                stories += s
                problems += p
                continue
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in YAML_SUFFIXES)
            if not files:
                problems.append(SourceError(str(path), 0, "no YAML files (*.yaml) in this folder"))
        elif path.is_file():
            files = [path]
        else:
            hint = (
                " (run from the project folder, or pass the paths to check)"
                if str(item) in DEFAULT_PATHS
                else ""
            )
            problems.append(SourceError(str(path), 0, f"no such file or folder{hint}"))
            continue
        for f in files:
            (stories if _classify(f) == "story" else chars).append(f)
    return chars, stories, problems


def check_paths(paths: Sequence[str | Path] = DEFAULT_PATHS) -> CheckReport:
    """Load and check everything under ``paths`` (folders or files); never raises on bad content."""
    char_files, story_files, problems = collect_files(paths)
    report = CheckReport(character_files=char_files, story_files=story_files)
    for f in char_files:
        ch, found = read_character(f)
        problems += found
        if ch is not None:
            report.characters[ch.id] = ch
    problems += cross_check_characters(report.characters)
    parts = None
    if story_files:
        parts, found = read_story_parts(story_files)
        problems += found
    if parts is not None and char_files:
        problems += cross_check(report.characters, parts, {f.stem for f in char_files})
    if parts is not None and parts.complete and not any(p.is_error for p in problems):
        report.story = build_story(parts)
    report.problems = sorted(set(problems), key=sort_key)
    return report


def cross_check(
    characters: dict[str, Character], story: StoryParts, character_ids: set[str] | None = None
) -> list[SourceError]:
    """Checks that need both characters and the story.

    ``character_ids`` are all ids that exist (including characters whose files
    have errors), so a broken character file does not also flag every beat.
    """
    ids = set(characters) | (character_ids or set())
    out: list[SourceError] = []
    for beat in story.beats.values():
        for n, who in enumerate(beat.characters):
            if who not in ids:
                out.append(beat.problem(f"unknown character '{who}'{suggest(who, ids)}", "character", n))
        for said in beat.lines:  # each line's cues are its own speaker's
            speaker = characters.get(beat.line_speaker(said))
            if speaker is not None:
                out += line_cue_problems(said, speaker)

    # Gossip (an exit's tell) goes to a character that exists.
    for exit_ in [*story.triggers, *(e for b in story.beats.values() for e in b.exits)]:
        for told in exit_.tell:
            if told.character not in ids:
                out.append(told.problem(f"tell: unknown character '{told.character}'{suggest(told.character, ids)}", "character"))

    # Line ids are one namespace: audio is cached by id.
    first: dict[str, tuple[str, int]] = {}
    for ch in characters.values():
        for line in ch.lines():
            first.setdefault(line.id, (line.src_file, line.src_line()))
    for beat in story.beats.values():
        for line in beat.lines:
            if line.id in first:
                file, ln = first[line.id]
                out.append(line.problem(f"duplicate line id '{line.id}' (already used at {file}:{ln})", "id"))
    line_ids = set(first) | {line.id for _, line in story.lines()}

    known_names = story.set_names() | {"beat"}
    beats = set(story.beats) if story.complete else None
    for ch in characters.values():
        for n, secret in enumerate(ch.secrets):
            if secret.reveal_when:
                out += condition_problems(
                    secret.reveal_when,
                    ch.src_file,
                    ch.src_line("secrets", n, "reveal_when"),
                    known_names,
                    beats,
                    line_ids,
                )
        for line in ch.lines():
            out += template_problems(line.text, line.src_file, line.src_line("text"), known_names)
    # said() in story conditions can name character lines, so it is checked here.
    owners: list[Beat | Exit] = [*story.triggers, *story.beats.values()]
    owners += [e for b in story.beats.values() for e in b.exits]
    for owner in owners:
        for fn, arg in _said_calls(owner.when or ""):
            if arg not in line_ids:
                out.append(owner.problem(f'{fn}("{arg}"): unknown line id{suggest(arg, line_ids)}', "when"))
    return out


def _said_calls(text: str) -> list[tuple[str, str]]:
    if not text:
        return []
    return [(fn, arg) for fn, arg in parse_condition(text).calls() if fn == "said"]


def load_world(
    characters_dir: str | Path = "characters", story_dir: str | Path = "story"
) -> tuple[dict[str, Character], Story]:
    """Load characters and story with every check `npc-engine check` runs; raise ValidationFailed on errors.

    Warnings are logged. Use this at server start so a broken reference fails
    loudly before the first player speaks.
    """
    report = check_paths([characters_dir, story_dir])
    if report.errors or report.story is None:
        raise ValidationFailed(report.problems or [SourceError(str(story_dir), 0, "no story loaded")])
    for w in report.warnings:
        log.warning("%s", w)
    return report.characters, report.story
