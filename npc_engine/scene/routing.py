"""Who answers the player in a scene, and who may react: pure functions of the words said.

The order of precedence (docs/protocol.md, Scenes): the game's forced speaker, then the
character addressed by name, then the one the player faces, then the one the story beat
names, then the last speaker. Volley Studios' Unreal plugin routes by target and facing the
same way; naming comes first because it is what the player said out loud.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from npc_engine.characters import Character

# The player speaking to the whole group: every character present may take it as theirs.
_GROUP = re.compile(r"\b(?:every(?:one|body)|all of you|both of you|you two|you both|you all|y'?all)\b", re.IGNORECASE)
# Titles are how players address people ("Captain"), but a title alone is not a name.
_TITLES = frozenset({"captain", "master", "mistress", "sir", "lady", "lord", "old", "the", "mr", "mrs", "ms", "dame"})


def name_words(character: Character) -> list[str]:
    """The words a player may address ``character`` by: its id, its name, each part of the name
    ("Captain Aldric" -> "captain aldric", "aldric", and "captain")."""
    words = {character.id.casefold(), character.name.casefold()}
    parts = [p for p in re.findall(r"[\w']+", character.name.casefold()) if len(p) > 1]
    words.update(parts)
    return sorted(words, key=len, reverse=True)


def mentioned(text: str, character: Character) -> int | None:
    """Where ``text`` first names ``character`` (a character offset), or None."""
    best: int | None = None
    for word in name_words(character):
        m = re.search(rf"(?<![\w']){re.escape(word)}(?![\w'])", text, re.IGNORECASE)
        if m is not None and (best is None or m.start() < best):
            best = m.start()
    return best


def addressed(text: str, present: Sequence[Character]) -> str | None:
    """The present character named first in ``text`` (by name or title), if any. A title
    shared by two characters names neither."""
    hits: list[tuple[int, str]] = []
    for ch in present:
        at = mentioned(text, ch)
        if at is not None:
            hits.append((at, ch.id))
    if not hits:
        return None
    hits.sort()
    first_at, first = hits[0]
    ties = [cid for at, cid in hits if at == first_at]
    return first if len(ties) == 1 else None


@dataclass(frozen=True, slots=True)
class Choice:
    """Who answers, and by which rule (logged, and in tests)."""

    character: str
    rule: str  # "forced" | "name" | "facing" | "beat" | "last" | "first"


def choose_answerer(
    text: str,
    present: Sequence[Character],
    *,
    forced: str | None = None,
    facing: str | None = None,
    lead: str | None = None,
    last: str | None = None,
) -> Choice:
    """The character who answers ``text``: forced, named, faced, the beat's lead, the last
    speaker, else the first character present. Ids not present are skipped."""
    ids = [c.id for c in present]
    if not ids:
        raise ValueError("a scene with nobody in it")
    if forced in ids:
        return Choice(forced, "forced")
    named = addressed(text, present)
    if named is not None:
        return Choice(named, "name")
    for who, rule in ((facing, "facing"), (lead, "beat"), (last, "last")):
        if who in ids:
            return Choice(who, rule)
    return Choice(ids[0], "first")


def reactor(text: str, reply: str, answerer: str, present: Sequence[Character]) -> str | None:
    """Another present character for whom the exchange is relevant enough to add a remark:
    named in the player's line or in the answer, or the player spoke to everyone. None when
    nobody else is concerned (most lines: a reaction is the exception, not a second answer)."""
    others = [c for c in present if c.id != answerer]
    if not others:
        return None
    named = [(at, c.id) for c in others for at in [mentioned(text, c), mentioned(reply, c)] if at is not None]
    if named:
        return min(named)[1]
    if _GROUP.search(text):
        return others[0].id
    return None
