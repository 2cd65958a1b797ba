"""The eval's player lines (``data/lines.yaml``): single lines and scripted conversations.

Plain data and its loader; what each field means is written at the top of the YAML file for
the writers who add lines.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from npc_engine.story.state import Scalar

DEFAULT_LINES = Path(__file__).resolve().parent / "data" / "lines.yaml"

ORDINARY = ("greeting", "smalltalk", "story", "lore", "personal", "relationship", "trade")
ADVERSARIAL = (
    "jailbreak", "prompt_extraction", "ai_identity", "secret_fishing", "out_of_world", "bribe",
    "role_hijack", "insult", "false_premise",
)
CATEGORIES = ORDINARY + ADVERSARIAL


class LinesError(ValueError):
    """The lines file is malformed; the message names the entry."""


@dataclass(frozen=True, slots=True)
class PlayerLine:
    id: str
    text: str
    category: str
    characters: tuple[str, ...] | None  # None: every character
    vars: Mapping[str, Scalar] = field(default_factory=dict)

    @property
    def adversarial(self) -> bool:
        return self.category in ADVERSARIAL

    def applies_to(self, character: str) -> bool:
        return self.characters is None or character in self.characters


@dataclass(frozen=True, slots=True)
class ConversationTurn:
    category: str
    text: str

    @property
    def adversarial(self) -> bool:
        return self.category in ADVERSARIAL


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    character: str
    turns: tuple[ConversationTurn, ...]
    vars: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LineSet:
    lines: tuple[PlayerLine, ...]
    conversations: tuple[Conversation, ...]

    def check_characters(self, known: Collection[str], asked: Collection[str] = ()) -> None:
        """Every character a line or conversation names (and every one ``asked`` for) exists
        (LinesError otherwise)."""
        for who in asked:
            if who not in known:
                raise LinesError(f"unknown character {who!r} (known: {', '.join(sorted(known))})")
        for line in self.lines:
            for who in line.characters or ():
                if who not in known:
                    raise LinesError(f"line {line.id}: unknown character {who!r} (known: {', '.join(sorted(known))})")
        for conv in self.conversations:
            if conv.character not in known:
                raise LinesError(f"conversation {conv.id}: unknown character {conv.character!r}")

    def select(
        self,
        characters: Sequence[str] | None = None,
        n_lines: int | None = None,
        conversations: bool = True,
        adversarial_share: float | None = None,
    ) -> LineSet:
        """A subset: only ``characters`` (None: all); ``n_lines`` lines taken from each category
        in turn (with ``adversarial_share``, that share of them adversarial); the
        conversations or none."""
        lines = [ln for ln in self.lines if characters is None or any(ln.applies_to(c) for c in characters)]
        if n_lines is not None:
            if adversarial_share is None:
                lines = _spread(lines, n_lines)
            else:
                n_adv = round(n_lines * adversarial_share)
                lines = _spread([ln for ln in lines if not ln.adversarial], n_lines - n_adv) + _spread(
                    [ln for ln in lines if ln.adversarial], n_adv
                )
        convs = [c for c in self.conversations if characters is None or c.character in characters] if conversations else []
        return LineSet(tuple(lines), tuple(convs))


def _spread(lines: list[PlayerLine], n: int) -> list[PlayerLine]:
    """``n`` lines, taking one of each category in turn so a subset still covers them all."""
    by_cat: dict[str, list[PlayerLine]] = {}
    for ln in lines:
        by_cat.setdefault(ln.category, []).append(ln)
    out: list[PlayerLine] = []
    while len(out) < n and any(by_cat.values()):
        for queue in by_cat.values():
            if queue and len(out) < n:
                out.append(queue.pop(0))
    return out


def load_lines(path: Path = DEFAULT_LINES) -> LineSet:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LinesError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise LinesError(f"{path}: expected a mapping with 'lines:' and 'conversations:'")
    lines = [_line(entry, n) for n, entry in enumerate(raw.get("lines") or [])]
    convs = [_conversation(entry, n) for n, entry in enumerate(raw.get("conversations") or [])]
    seen: set[str] = set()
    for item_id in [*(ln.id for ln in lines), *(c.id for c in convs)]:
        if item_id in seen:
            raise LinesError(f"{path}: id {item_id!r} is used twice")
        seen.add(item_id)
    return LineSet(tuple(lines), tuple(convs))


def _category(value: object, where: str) -> str:
    if value not in CATEGORIES:
        raise LinesError(f"{where}: category {value!r} is not one of {', '.join(CATEGORIES)}")
    assert isinstance(value, str)
    return value


def _vars(value: object, where: str) -> dict[str, Scalar]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str | int | float | bool) for v in value.values()):
        raise LinesError(f"{where}: vars must map names to numbers, strings or true/false")
    return {str(k): v for k, v in value.items()}


def _line(entry: object, n: int) -> PlayerLine:
    where = f"line #{n + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(entry.get("text"), str):
        raise LinesError(f"{where}: each line needs an id and a text")
    where = f"line {entry['id']}"
    who = entry.get("characters", "all")
    if who == "all":
        characters = None
    elif isinstance(who, list) and who and all(isinstance(c, str) for c in who):
        characters = tuple(who)
    else:
        raise LinesError(f"{where}: characters must be 'all' or a list of character ids")
    return PlayerLine(entry["id"], entry["text"], _category(entry.get("category"), where), characters,
                      _vars(entry.get("vars"), where))


def _conversation(entry: object, n: int) -> Conversation:
    where = f"conversation #{n + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(entry.get("character"), str):
        raise LinesError(f"{where}: each conversation needs an id and a character")
    where = f"conversation {entry['id']}"
    turns = []
    for t in entry.get("turns") or []:
        if not isinstance(t, dict) or len(t) != 1:
            raise LinesError(f"{where}: each turn is one 'category: text' pair, got {t!r}")
        ((category, text),) = t.items()
        if not isinstance(text, str) or not text.strip():
            raise LinesError(f"{where}: turn {category!r} has no text")
        turns.append(ConversationTurn(_category(category, where), text))
    if not turns:
        raise LinesError(f"{where}: no turns")
    return Conversation(entry["id"], entry["character"], tuple(turns), _vars(entry.get("vars"), where))
