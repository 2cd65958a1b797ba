"""Spoken lines with stable ids, shared by characters (greetings, fallbacks) and story beats.

A line id never changes once audio has been rendered for it: the engine keys
pre-rendered audio and subtitles by id, so editing the text keeps the id and
re-rendering picks the change up.
"""

from __future__ import annotations

import re

from pydantic import field_validator

from npc_engine.yamlsrc import Sourced

LINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Line(Sourced):
    """One verbatim line: ``id`` (stable, unique across all files) and ``text``.

    ``text`` may contain ``{var}`` templates filled from story variables (the
    game sets ``player_name``); ``emotion`` and ``gesture`` are optional cues,
    checked against the speaking character's allowed sets.
    """

    id: str
    text: str
    emotion: str | None = None
    gesture: str | None = None

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not LINE_ID.match(value):
            raise ValueError(
                f"line id {value!r} may only use letters, digits, '_', '.' and '-' (like 'bram.greet.1')"
            )
        return value

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a line's text is empty")
        return value

    @property
    def template_vars(self) -> list[str]:
        """Names used as ``{name}`` in the text (a line with any cannot be fully pre-rendered)."""
        return TEMPLATE_VAR.findall(self.text)


class BeatLine(Line):
    """A story beat's line: ``character`` says it (one of the beat's characters; default the
    beat's first). Lines for several characters make a multi-character exchange, said in order.

    Only beat lines have a speaker of their own: a character's greetings are its own.
    """

    character: str | None = None


def fill_template(text: str, values: dict[str, object]) -> str:
    """Replace each ``{name}`` with ``values[name]``; unknown names become empty text.

    Other braces are left alone, so writers need no escaping.
    """
    return TEMPLATE_VAR.sub(lambda m: "" if values.get(m.group(1)) is None else str(values[m.group(1)]), text)
