"""A session's background prompt warm-ups: the gate a turn closes on them, and their steps.

A warm-up has llama.cpp evaluate the next turn's prompt up to the player's line while nobody
waits (the reply playing, the player speaking), so the turn evaluates only its line. llama.cpp
cannot stop a request mid-prompt, and a warm-up holds the conversation's slot: a turn that
comes while one is on the model waits for it. After a trim the whole history is evaluated
again (seconds on two busy cores), so such a warm-up goes in steps, one exchange or more at a
time, each a request of its own; a turn closes the gate and waits at most for the step on the
model, then evaluates the rest itself, as it would have without a warm-up.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from npc_engine.pipeline.base import ChatMessage

# A step evaluates at least this much new text (~50 tokens), unless it is the last: each step
# is a request that also generates one token, so steps of a few words would cost more than a
# turn ever waits for one.
MIN_STEP_CHARS = 200


@dataclass(frozen=True, slots=True)
class WarmTarget:
    """Which prompt a warm-up evaluates: up to the player's next line (at open, after a turn;
    ``only_if_changed``: only if its beginning is no longer what the cache holds), with the
    lines a scene member overheard (``overheard``), or with the words of the line the player is
    speaking heard so far (``line``)."""

    only_if_changed: bool = False
    overheard: bool = False
    line: str | None = None


class WarmGate:
    """Whether a warm-up's steps may reach the model, settled under a lock: the LLM thread
    enters just before each step calls the model and leaves after it; a turn (or closing)
    closes the gate just before going ahead without the rest. With a flag alone, a step could
    reach the model right after a turn gave up on it, and that turn's request would then queue
    behind it on the conversation's slot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = False  # a step reached the model
        self._on_model = False
        self._closed = False

    def enter(self) -> bool:
        """On the LLM thread, before a step: True to go ahead (nobody has closed the gate)."""
        with self._lock:
            if self._closed:
                return False
            self.started = self._on_model = True
            return True

    def leave(self) -> None:
        """On the LLM thread, after a step (whether it worked or not)."""
        with self._lock:
            self._on_model = False

    @property
    def closed(self) -> bool:
        """A turn (or closing) has gone ahead without the steps still to come."""
        with self._lock:
            return self._closed

    def close(self) -> bool:
        """No further step reaches the model. True if none is on it now: the warm-up can be
        cancelled; False if one is: it ends when that step does."""
        with self._lock:
            self._closed = True
            return not self._on_model


def warm_steps(messages: Sequence[ChatMessage], cached: Sequence[ChatMessage]) -> list[list[ChatMessage]]:
    """The prompts a warm-up of ``messages`` sends, shortest first, the last ``messages``
    itself. ``cached`` is the slot's previous prompt: what ``messages`` shares with it from the
    start costs nothing. A step ends on a player's line, so the prompt it leaves in the cache
    ends with the chat template's opening of the reply that follows in the next step (no
    tokens evaluated twice); it takes whole exchanges until it holds ``MIN_STEP_CHARS`` of new
    text.

    A conversation's first warm-up (nothing ``cached``) goes in one request: its slot may hold
    a persona primed at start that the session does not know of (``ChatModel.prime``), and a
    step shorter than that would cut the cache back to the step."""
    if not cached:
        return [list(messages)]
    shared = 0
    while shared < min(len(messages), len(cached)) and messages[shared] == cached[shared]:
        shared += 1
    ends: list[int] = []
    pending = 0  # new characters since the previous step's end
    for i in range(shared, len(messages) - 1):
        pending += len(messages[i].content)
        if messages[i].role == "user" and pending >= MIN_STEP_CHARS:
            ends.append(i + 1)
            pending = 0
    tail = sum(len(m.content) for m in messages[ends[-1] :]) if ends else pending
    if ends and tail < MIN_STEP_CHARS // 2:
        ends.pop()  # a last step of a few words: it goes with the one before
    return [list(messages[:end]) for end in ends] + [list(messages)]
