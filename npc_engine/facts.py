"""What a character knows about the player beyond the sliding history: memory that stays true.

Small models invent what the player said or did ("You said you lost it last night"). So each
(player, character) keeps a short list of facts, each a line with a source, rendered in the
prompt between the persona and the history (they change rarely, so the cached prefix mostly
holds), and the persona says the character knows only what is written there:

* ``told``: the player said it to this character: their name ("my name is Ana", "call me
  Ana", "I'm Ana.") and promises ("I'll find your hammer"). Pure, conservative extraction:
  a line that is not clearly one of these teaches nothing.
* ``did``: it happened in front of this character: story flags set true during a turn with
  it, or by a game event sent for its session. Other characters do not learn them.
* ``heard``: gossip, an exit's ``tell`` (story/schema.py ``TellSpec``): the named character
  learns the line, wherever it is.

At most ``MAX_FACTS`` per (player, character), deduplicated; the oldest go first, except the
player's name (``store.merge_facts``). ``FactBook`` keeps the open sessions' lists in memory
and writes every change through to the store, so a character without an open session learns
gossip too, and everything survives a restart and goes into save blobs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from npc_engine.store import AsyncStore, Fact, merge_facts
from npc_engine.story.state import FactTold, FlagSet, StoryEffect

MAX_FACTS = 12  # lines in the prompt; a small model reads a short list, and the prefix stays short
NAME_KEY = "name"
FLAG_KEY = "flag:"  # + the flag's name: one fact per flag
_NAME_WORD = r"[^\W\d_]+(?:['’-][^\W\d_]+)?"  # a word of letters: "Ana", "O'Brien", "Mary-Jane"
_CAP_WORD = r"[A-Z][^\W\d_]*(?:['’-][^\W\d_]+)?"
_END = r"(?=\s*(?:[.,!?;]|$))"  # the end of a clause: "I'm Ana." but not "I'm Tired of this"
# "my name is Ana", "my name's Ana Lopez", "the name's Ana" (any case: transcripts may be lower case)
_MY_NAME = re.compile(rf"\b(?:my\s+name\s+is|name['’]s)\s+({_NAME_WORD}(?:\s+{_NAME_WORD})?)", re.I)
# "call me Ana.", "I'm Ana.", "Hi, I am Ana Lopez, ...": a capital, then the end of the clause
_CALL_ME = re.compile(rf"\b(?:[Cc]all|[Cc]alls)\s+me\s+({_CAP_WORD}(?:\s+{_CAP_WORD})?){_END}")
_I_AM = re.compile(rf"\b(?:I['’]m|I\s+am)\s+({_CAP_WORD}(?:\s+{_CAP_WORD})?){_END}")
_NOT_NAMES = frozenset({
    "not", "a", "an", "the", "no", "so", "just", "only", "here", "there", "back", "sorry", "fine",
    "ok", "okay", "well", "sure", "what", "who", "why", "how", "your", "you", "yours", "his",
    "her", "their", "its", "it", "this", "that", "done", "ready", "lost", "new", "from", "called",
    "named", "is", "was", "unimportant", "nobody", "nothing", "none", "secret"
})
# "I'll find your hammer", "I will bring you the ring", "I promise to help" (not "I'll never")
_PROMISE = re.compile(
    r"\b(?:I'll|I’ll|I\s+will|I\s+promise\s+to|I\s+promise\s+I'll|I\s+promise\s+I\s+will)\s+"
    r"((?:bring|find|get|fetch|return|help|look\s+for|pay|give|buy|deliver|search\s+for|track\s+down|talk\s+to|ask)"
    r"\b[^.,!?;]{0,80})",
    re.I,
)
_PROMISE_WORDS = 12
# The player's own words, turned around for the character: "my" sword is the player's.
_PRONOUNS = {"my": "their", "me": "them", "myself": "themselves", "i": "they", "mine": "theirs"}


def extract_told(line: str) -> list[Fact]:
    """The facts a player's line states plainly: their name, a promise. Conservative: a
    question, a negation or anything unclear gives nothing."""
    out: list[Fact] = []
    name = _name_in(line)
    if name is not None:
        out.append(Fact("told", f"The player's name is {name}.", NAME_KEY))
    m = _PROMISE.search(line)
    if m and not line.rstrip().endswith("?"):  # "I'll help, shall I?" promises nothing yet
        words = m.group(1).split()
        if len(words) <= _PROMISE_WORDS and not {"not", "never"} & {w.lower() for w in words[:2]}:
            said = " ".join(_PRONOUNS.get(w.lower(), w) for w in words).rstrip(" ,")
            out.append(Fact("told", f"The player promised to {said}."))
    return out


def _name_in(line: str) -> str | None:
    if line.rstrip().endswith("?"):
        return None  # "is my name Ana?", "what's my name?"
    for pattern in (_MY_NAME, _CALL_ME, _I_AM):
        m = pattern.search(line)
        if m is None:
            continue
        words = m.group(1).split()
        if _not_a_name(words[0]):
            return None
        # A second word is kept only when it is a capitalised name too ("Ana Lopez", not "Ana and").
        if len(words) > 1 and (not words[1][:1].isupper() or _not_a_name(words[1])):
            words = words[:1]
        return " ".join(w[:1].upper() + w[1:] for w in words)
    return None


def _not_a_name(word: str) -> bool:
    low = word.lower().replace("’", "'")
    return low in _NOT_NAMES or low.endswith("n't")  # "my name doesn't matter"


def learned_from_effects(effects: Iterable[StoryEffect], witness: str | None) -> dict[str, list[Fact]]:
    """What the story's effects teach, per character: ``tell`` gossip to its target, flags set
    true to ``witness`` (the character the turn was with, or the session an event was for;
    None: nobody saw it)."""
    out: dict[str, list[Fact]] = {}
    for eff in effects:
        if isinstance(eff, FactTold):
            out.setdefault(eff.character, []).append(Fact("heard", eff.fact))
        elif isinstance(eff, FlagSet) and witness is not None and eff.value is True:
            words = eff.name.replace("_", " ")
            out.setdefault(witness, []).append(Fact("did", words, FLAG_KEY + eff.name))
    return out


def told_name(facts: Iterable[Fact]) -> str | None:
    """The name the player gave this character, if any."""
    for f in facts:
        if f.key == NAME_KEY:
            m = re.match(r"The player's name is (.+)\.$", f.text)
            if m:
                return m.group(1)
    return None


_PLAYER = re.compile(r"\bthe player('s)?\b", re.I)


def fact_lines(facts: Sequence[Fact], player_name: str | None) -> list[str]:
    """The facts as short prompt lines about the player (``player_name``: "Ana", a default such
    as "traveller", or None). The name comes first; the flags seen set are one line at the end.
    Writers (and the extraction) say "the player": the model reads the name instead (told "the
    player", it says "the player" too)."""
    who = None if not player_name else player_name if player_name[:1].isupper() else f"the {player_name}"
    lines: list[str] = []
    seen: list[str] = []
    name = told_name(facts)
    if name is not None:
        lines.append(f"They told you their name is {name}.")
    for f in facts:
        if f.key == NAME_KEY:
            continue
        if f.key is not None and f.key.startswith(FLAG_KEY):
            seen.append(f.text)
            continue
        text = _about(f.text, who)
        lines.append(f"You heard: {text}" if f.source == "heard" else text)
    if seen:
        lines.append(f"What happened while {who or 'they'} {'was' if who else 'were'} with you: {', '.join(seen)}.")
    return lines


def _about(text: str, who: str | None) -> str:
    def name(m: re.Match[str]) -> str:
        if who is None:
            return "their" if m.group(1) else "they"
        return who + ("'s" if m.group(1) else "")

    out = _PLAYER.sub(name, text)
    return out[:1].upper() + out[1:]


# --------------------------------------------------------------------------- the open lists


@dataclass
class _Held:
    holds: int
    facts: list[Fact] | None = None  # None while it is being read from the store
    pending: list[Fact] = field(default_factory=list)  # learned while it was being read
    loaded: asyncio.Event = field(default_factory=asyncio.Event)


class FactBook:
    """The facts of every (player, character) with an open session, in memory for the
    prompt (no store read on a turn's path), and every change written through to the store."""

    def __init__(self, store: AsyncStore, cap: int = MAX_FACTS) -> None:
        self._store = store
        self.cap = cap
        self._held: dict[tuple[str, str], _Held] = {}

    async def hold(self, player: str, character: str) -> None:
        """A session opened: its list stays in memory until ``release``."""
        key = (player, character)
        held = self._held.get(key)
        if held is not None:
            held.holds += 1
            await held.loaded.wait()
            return
        held = self._held[key] = _Held(1)
        try:
            # Facts learned while this read was queued went to the store after it: merged here.
            stored = await self._store.load_facts(player, character)
            held.facts = merge_facts(stored, held.pending, self.cap)
        finally:
            if held.facts is None:  # the read failed: this session starts from what it saw learned
                held.facts = merge_facts([], held.pending, self.cap)
            held.pending = []
            held.loaded.set()

    def release(self, player: str, character: str) -> None:
        key = (player, character)
        held = self._held.get(key)
        if held is not None:
            held.holds -= 1
            if held.holds <= 0:
                del self._held[key]

    def known(self, player: str, character: str) -> list[Fact]:
        """What the character knows about the player (held lists only; else nothing)."""
        held = self._held.get((player, character))
        return list(held.facts) if held is not None and held.facts is not None else []

    async def learn(self, player: str, facts: Mapping[str, Sequence[Fact]]) -> None:
        """Characters learn facts about ``player``: in memory at once, on disk when this returns."""
        await self.write(player, self.note(player, facts))

    def note(self, player: str, facts: Mapping[str, Sequence[Fact]]) -> list[tuple[str, list[Fact]]]:
        """The in-memory half of ``learn``: the held lists change now; returns what ``write``
        must still put on disk (a turn lets it commit while the model starts)."""
        changed: list[tuple[str, list[Fact]]] = []
        for character, new in facts.items():
            if not new:
                continue
            held = self._held.get((player, character))
            if held is not None:
                if held.facts is None:
                    held.pending += new
                else:
                    merged = merge_facts(held.facts, list(new), self.cap)
                    if merged == held.facts:
                        continue  # nothing new: no write, and the prompt stays as cached
                    held.facts = merged
            changed.append((character, list(new)))
        return changed

    async def write(self, player: str, changed: Sequence[tuple[str, list[Fact]]]) -> None:
        """Commit what ``note`` returned (the store's one thread keeps calls in order)."""
        for character, new in changed:
            await self._store.add_facts(player, character, new, self.cap)

    async def reload(self, player: str) -> None:
        """The player's facts were replaced in the store (``state.load``): read the held ones again."""
        for (p, character), held in list(self._held.items()):
            if p == player:
                held.facts = await self._store.load_facts(player, character)
