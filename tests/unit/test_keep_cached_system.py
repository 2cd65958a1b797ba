"""``keep_cached_system``: a turn whose system message changed keeps the cached one and says
what changed last (pipeline/prompt.py). Pure: no model."""

from __future__ import annotations

from npc_engine.pipeline.base import ChatMessage
from npc_engine.pipeline.prompt import keep_cached_system

PERSONA = "You are Bram, the blacksmith."
OLD = ChatMessage("system", PERSONA + "\nYour goal right now: ask for help.")
NEW = ChatMessage("system", PERSONA + "\nYour goal right now: grumble.")
BODY = [ChatMessage("user", "Hi."), ChatMessage("assistant", "Hm."), ChatMessage("user", "I will help.")]


def test_the_change_goes_before_the_line_and_the_cached_system_stays() -> None:
    out = keep_cached_system([NEW, *BODY], [OLD, *BODY[:1]], PERSONA)
    assert out == [OLD, *BODY[:2], ChatMessage("system", "Your goal right now: grumble."), BODY[2]]


def test_an_ack_the_reply_goes_on_from_stays_after_the_line() -> None:
    ack = ChatMessage("assistant", "Aye.")
    out = keep_cached_system([NEW, *BODY, ack], [OLD], PERSONA)
    assert out[-3:] == [ChatMessage("system", "Your goal right now: grumble."), BODY[2], ack]


def test_nothing_changes_when_it_need_not() -> None:
    prompt = [NEW, *BODY]
    assert keep_cached_system(prompt, [], PERSONA) == prompt, "nothing cached"
    assert keep_cached_system(prompt, [NEW], PERSONA) == prompt, "the same system message"
    other = ChatMessage("system", "You are Marta.\nYour goal right now: x.")
    assert keep_cached_system(prompt, [other], PERSONA) == prompt, "another persona"
    bare = ChatMessage("system", PERSONA)
    assert keep_cached_system([bare, *BODY], [OLD], PERSONA) == [bare, *BODY], "nothing to say in a note"
