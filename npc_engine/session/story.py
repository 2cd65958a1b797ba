"""Story effects as the game sees them, and scripted lines grouped by who says them.

Both a player's line (inside a turn) and a game ``event`` (outside any turn) can make the
story speak; both go through ``lines_by_character`` so the lines are routed one way.
"""

from __future__ import annotations

from collections.abc import Iterable

from npc_engine.protocol import outgoing as msg
from npc_engine.story.state import SayLine, StoryEffect
from npc_engine.turns.speech import Speakable, line_cues


def effect_fields(effect: StoryEffect) -> dict[str, msg.WireValue]:
    """An effect as the fields of a ``story`` message (``kind`` plus its data)."""
    return {k: v for k, v in effect.to_dict().items() if v is not None}


def story_message(effect: StoryEffect) -> msg.StoryMessage:
    return msg.StoryMessage(effect=effect_fields(effect))


def story_lines(effects: Iterable[StoryEffect]) -> list[tuple[str, Speakable]]:
    """The scripted lines among ``effects`` (templates already filled) with who says each, in
    order (a multi-character exchange is played in this order where its speakers are together)."""
    return [
        (eff.character, Speakable(eff.text, line_cues(eff.emotion, eff.gesture), prerendered=True))
        for eff in effects
        if isinstance(eff, SayLine)
    ]


def by_character(lines: Iterable[tuple[str, Speakable]]) -> dict[str, list[Speakable]]:
    """Lines grouped per speaking character (each keeps its own order)."""
    out: dict[str, list[Speakable]] = {}
    for character, line in lines:
        out.setdefault(character, []).append(line)
    return out


def lines_by_character(effects: Iterable[StoryEffect]) -> dict[str, list[Speakable]]:
    """The scripted lines among ``effects``, per speaking character."""
    return by_character(story_lines(effects))
