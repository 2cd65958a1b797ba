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


def lines_by_character(effects: Iterable[StoryEffect]) -> dict[str, list[Speakable]]:
    """The scripted lines among ``effects`` (templates already filled), per speaking character."""
    out: dict[str, list[Speakable]] = {}
    for eff in effects:
        if isinstance(eff, SayLine):
            out.setdefault(eff.character, []).append(
                Speakable(eff.text, line_cues(eff.emotion, eff.gesture), prerendered=True)
            )
    return out
