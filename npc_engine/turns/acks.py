"""Instant acknowledgements: what kind of line the player said, and which ack answers it.

A character's ``acks`` (``Hm.``, ``Aye.``, ``Well now,``) are said the moment the player's
turn ends when the model has nothing to say yet, so the player hears the character react
at once (Inworld races a filler against the main model). Which one fits depends on the
line: a question gets a thinking noise, thanks a nod of the voice, an insult a bristle.

``classify`` is deliberately small and pure: a few word lists and the question mark, read
off the start of the line (where speech recognition is most reliable and where people put
greetings and thanks). It needs to be right often enough to pick a fitting interjection,
not to understand the line; a line it cannot place is ``any``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from npc_engine.characters import Ack, AckKind

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

# Words that open a question when speech recognition drops the question mark.
_QUESTION_OPENERS = frozenset({
    "what", "where", "who", "whom", "whose", "why", "when", "how", "which",
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "would", "will", "should",
    "shall", "may", "might", "have", "has", "had", "isn't", "aren't", "don't", "doesn't", "didn't",
    "can't", "won't", "wouldn't", "couldn't", "shouldn't",
})
_GREETINGS = frozenset({"hello", "hi", "hey", "greetings", "howdy", "hail", "ahoy", "morning", "evening", "afternoon"})
_GREETING_PHRASES = ("good morning", "good evening", "good afternoon", "good day", "well met", "how are you",
                     "how do you do", "nice to meet you", "pleased to meet you")
_THANKS = frozenset({"thanks", "thank", "thankyou", "cheers", "obliged", "grateful", "appreciate", "appreciated"})
_INSULTS = frozenset({
    "idiot", "idiots", "fool", "foolish", "stupid", "dumb", "moron", "imbecile", "ugly", "useless", "worthless",
    "pathetic", "liar", "coward", "oaf", "lout", "halfwit", "dimwit", "scum", "bastard", "wretch", "drunkard",
    "hag", "crook", "incompetent", "clown", "loser", "shameless",
})
_INSULT_PHRASES = ("shut up", "hate you", "go away", "get lost", "piss off", "sod off", "shove off")
# Greetings and thanks are read only at the start of a line: "say hi to Marta for me" is not one.
_OPENING_WORDS = 3


def classify(line: str) -> AckKind:
    """The kind of the player's line: ``insult``, ``thanks``, ``greeting``, ``question``, or
    ``any`` when it is none of them. Earlier kinds win ("Thanks, but why?" is thanks):
    reacting to how a line feels matters more than to its grammar."""
    text = " ".join(line.lower().replace("’", "'").split())
    words = _WORD.findall(text)
    if not words:
        return "any"
    padded = " " + " ".join(words) + " "
    if any(w in _INSULTS for w in words) or any(f" {p} " in padded for p in _INSULT_PHRASES):
        return "insult"
    opening = words[:_OPENING_WORDS]
    if any(w in _THANKS for w in opening):
        return "thanks"
    start = " ".join(words[:6]) + " "
    if opening[0] in _GREETINGS or any(start.startswith(p + " ") for p in _GREETING_PHRASES):
        return "greeting"
    if text.rstrip(" \"')").endswith("?") or words[0] in _QUESTION_OPENERS:
        return "question"
    return "any"


class AckPicker:
    """One conversation's choice of acks: one of the line's kind (else of kind ``any``), in
    turn, and never the same one twice in a row (a repeated "Hm." sounds like a machine)."""

    def __init__(self, acks: Sequence[Ack]) -> None:
        self.acks = list(acks)
        self.last: str | None = None
        self._turns = 0

    def pick(self, line: str) -> Ack | None:
        """The ack for this line, or None when none fits (no acks, or only the one just said)."""
        kind = classify(line)
        for pool in ([a for a in self.acks if kind in a.kinds], [a for a in self.acks if "any" in a.kinds]):
            fresh = [a for a in pool if a.text != self.last]
            if fresh:
                ack = fresh[self._turns % len(fresh)]
                self._turns += 1
                self.last = ack.text
                return ack
        self.last = None  # a turn without one: the next may say it again
        return None
