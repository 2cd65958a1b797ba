"""The story: what writers author in ``story/*.yaml`` and how it plays.

Layers, each importing only the ones above it:

* :mod:`~npc_engine.story.conditions`, :mod:`~npc_engine.story.intents`,
  :mod:`~npc_engine.story.lines`: the small languages inside the YAML
  (``when:`` expressions, intent matching, spoken lines and templates);
* :mod:`~npc_engine.story.schema`: the authored models (beats, exits, events to emit);
* :mod:`~npc_engine.story.state`: the state a story plays in, and the effects transitions report;
* :mod:`~npc_engine.story.runtime`: :class:`Story`, the pure transitions (no I/O);
* :mod:`~npc_engine.story.loader`: reading and checking the YAML files.

This package re-exports the public names, so ``from npc_engine.story import Story`` works.
Checks that need characters as well live in :mod:`npc_engine.world`.
"""

from __future__ import annotations

from npc_engine.story.lines import BeatLine
from npc_engine.story.loader import load_story, read_story
from npc_engine.story.runtime import MAX_SETTLE_STEPS, Story, data_matches
from npc_engine.story.schema import EVENT_NAME, IDENT, Beat, EmitSpec, Exit, TellSpec
from npc_engine.story.state import (
    STATE_VERSION,
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

__all__ = [
    "EVENT_NAME",
    "IDENT",
    "MAX_SETTLE_STEPS",
    "STATE_VERSION",
    "Beat",
    "BeatEntered",
    "BeatLine",
    "EmitEvent",
    "EmitSpec",
    "Exit",
    "FactTold",
    "FlagSet",
    "IntentMatched",
    "SayLine",
    "Scalar",
    "Story",
    "StoryEffect",
    "StoryState",
    "TellSpec",
    "data_matches",
    "load_story",
    "read_story",
]
