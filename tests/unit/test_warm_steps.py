"""The steps of a prompt warm-up (``session/warm.py``): pure functions, no model."""

from __future__ import annotations

import itertools

from npc_engine.pipeline.base import ChatMessage
from npc_engine.session.warm import MIN_STEP_CHARS, WarmGate, warm_steps

SYSTEM = ChatMessage("system", "You are Bram, the blacksmith. " * 20)


def history(exchanges: int, words: int = 8) -> list[ChatMessage]:
    out = []
    for i in range(exchanges):
        out.append(ChatMessage("user", " ".join(f"line{i}" for _ in range(words))))
        out.append(ChatMessage("assistant", " ".join(f"reply{i}" for _ in range(words))))
    return out


def new_chars(steps: list[list[ChatMessage]], start: int) -> list[int]:
    """Characters each step adds to the one before (the first: after ``start`` messages)."""
    ends = [start] + [len(s) for s in steps]
    return [sum(len(m.content) for m in steps[-1][a:b]) for a, b in itertools.pairwise(ends)]


def test_a_trimmed_history_goes_in_steps_of_whole_exchanges() -> None:
    old = [SYSTEM, *history(9)]
    new = [SYSTEM, *history(9)[8:]]  # the first four exchanges dropped
    steps = warm_steps(new, old)
    assert len(steps) >= 2
    assert steps[-1] == new
    for shorter, longer in itertools.pairwise(steps):
        assert longer[: len(shorter)] == shorter and len(shorter) < len(longer)
        # Ends on a player's line: the reply's opening in the cache is what the next step has.
        assert shorter[-1].role == "user"
    sizes = new_chars(steps, start=1)  # the system prompt was cached
    assert all(size >= MIN_STEP_CHARS for size in sizes[:-1]), sizes
    assert sizes[-1] >= MIN_STEP_CHARS // 2, f"a last step of a few words: {sizes}"


def test_what_the_cache_shares_costs_no_step() -> None:
    old = [SYSTEM, *history(3)]
    grown = [SYSTEM, *history(4)]
    # Between trims the next prompt only grows: one request.
    assert warm_steps(grown, old) == [grown]
    # The first step begins where the prompts part: its own words are all new.
    steps = warm_steps([SYSTEM, *history(12)], old)
    assert len(steps[0]) > len(old) + 1


def test_a_short_prompt_is_one_request() -> None:
    prompt = [ChatMessage("system", "Be brief."), *history(2, words=2)]
    assert warm_steps(prompt, []) == [prompt]


def test_a_conversations_first_warm_up_is_one_request() -> None:
    # Its slot may hold the character's primed persona, which a shorter first step would cut.
    prompt = [SYSTEM, *history(8)]
    assert warm_steps(prompt, []) == [prompt]
    # A changed persona (a new fact) after that: the persona first, then the history.
    changed = [ChatMessage("system", SYSTEM.content + " He knows the player's name."), *history(8)]
    steps = warm_steps(changed, prompt)
    assert steps[0][0] == changed[0] and steps[0][-1].role == "user" and len(steps) >= 2


def test_the_gate_lets_the_step_on_the_model_finish_and_no_other_start() -> None:
    gate = WarmGate()
    assert gate.enter() and gate.started
    assert gate.close() is False, "a step is on the model: wait for it"
    assert gate.closed
    gate.leave()
    assert gate.enter() is False, "no step after the gate closed"


def test_a_gate_closed_between_steps_can_be_cancelled() -> None:
    gate = WarmGate()
    assert gate.enter()
    gate.leave()
    assert gate.close() is True
    assert gate.enter() is False and gate.started
    fresh = WarmGate()
    assert fresh.close() is True and not fresh.started
