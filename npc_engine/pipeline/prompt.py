"""Builds the chat messages for one NPC turn.

Order matters for latency: llama.cpp reuses the longest unchanged token prefix of the
previous request, so the parts that never change for a character (persona, style,
knowledge, cue instructions) come first, and the parts that change with the story (the
current objective, secrets that became tellable) come last in the system prompt.

Secrets whose condition does not hold are left out of the prompt entirely: a small model
cannot be trusted to keep a secret it has been told.

What helps a small model (measured with ``npc-engine eval``, see docs/quality.md): a clear
identity line (it otherwise invents a name), facts as short lines rather than prose, the
player's name and the beat's objective, and the character's own example exchanges as earlier
turns of the conversation (it copies their length and tone). The examples come right after the
system prompt, before the history, so they stay in the KV cache with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from npc_engine.characters import Character
from npc_engine.pipeline.base import ChatMessage
from npc_engine.store import HistoryEntry


def persona_prompt(character: Character) -> str:
    """The stable part of a character's system prompt (cached across turns)."""
    name = character.name
    lines = [
        f"You are {name}. {character.persona.strip()}",
        # Small models invent names and call themselves assistants unless told plainly.
        f"Your name is {name}. You are a real person in this world, not an assistant and not a story.",
    ]
    if character.style.strip():
        lines.append(f"How you speak: {character.style.strip()}")
    known = [*character.knows, *(f.text for f in character.facts)]
    if known:
        # One short line each: a small model follows a list better than a paragraph.
        lines.append("What you know:\n" + "\n".join(f"- {_sentence(k)}" for k in known))
    if character.relationships:
        lines.append(
            "People you know:\n"
            + "\n".join(f"- {_display(who)} - {_sentence(how)}" for who, how in character.relationships.items())
        )
    lines.append(
        f"Speak only as {name}, in at most {character.reply.max_sentences} short sentences of plain speech. "
        "Never write the other person's words. Never mention being an AI, a character or a game. "
        # Small models invent what the player said or did ("you said you lost it"): only the
        # lines written here (and what was said in the conversation) are true.
        "You know only what is written here and what was said to you. "
        "If you do not know something, say so in your own words."
    )
    cue_help = _cue_help(character)
    if cue_help:
        lines.append(cue_help)
    return "\n".join(lines)


def _cue_help(character: Character) -> str:
    parts = []
    if character.emotions:
        parts.append(f"[emotion:X] with X one of {', '.join(character.emotions)}")
    if character.gestures:
        parts.append(f"[gesture:X] with X one of {', '.join(character.gestures)}")
    if not parts:
        return ""
    return "You may begin a sentence with " + " or ".join(parts) + "."


def system_prompt(
    character: Character,
    objective: str | None,
    revealed_secrets: Iterable[str],
    facts: Iterable[str] = (),
    player_name: str | None = None,
) -> str:
    """The persona (stable, first) then what changes with the story: who the character is
    talking to, what it learned (``facts``), secrets now tellable, the beat's objective."""
    text = persona_prompt(character)
    who = _addressee(player_name)
    extra = [f"You are talking to {who}."] if player_name else []
    known = [_sentence(f) for f in facts]
    if known:  # one short line each, like the persona's facts
        extra.append("What you know about them:\n" + "\n".join(f"- {k}" for k in known))
    secrets = [_sentence(s) for s in revealed_secrets]
    if secrets:
        extra.append("You may now tell them: " + " ".join(secrets))
    if objective:
        # Writers say "the player" in objectives; a model told so says it too ("The player's a
        # good one"). It reads the player's name (or "them") instead.
        extra.append("Your goal right now: " + _sentence(_PLAYER.sub(who if player_name else "them", objective)))
    return text + ("\n" + "\n".join(extra) if extra else "")


_PLAYER = re.compile(r"\bthe player\b", re.IGNORECASE)


def _addressee(player_name: str | None) -> str:
    """"Robin", or "the traveller" for a default name written in lower case."""
    if not player_name:
        return "them"
    return player_name if player_name[:1].isupper() else f"the {player_name}"


def example_messages(character: Character) -> list[ChatMessage]:
    """The character's example exchanges as earlier turns (player line, then its reply)."""
    out: list[ChatMessage] = []
    for ex in character.examples:
        out += [ChatMessage("user", ex.player.strip()), ChatMessage("assistant", ex.reply.strip())]
    return out


def build_messages(
    system: str,
    history: Sequence[HistoryEntry],
    user_text: str,
    history_turns: int,
    examples: Sequence[ChatMessage] = (),
    reply_start: str = "",
) -> list[ChatMessage]:
    """System prompt, example exchanges (``example_messages``), recent history, the line.

    ``reply_start``: what the character has already said of this reply (an acknowledgement,
    "Hm."), as the start of its answer: llama.cpp and Ollama continue a trailing assistant
    message, so the model goes on after it instead of starting afresh (or saying it again)."""
    msgs = [ChatMessage("system", system), *examples]
    # Keep whole exchanges so the model never sees an answer without its question.
    recent = list(history)[-2 * history_turns:] if history_turns > 0 else []
    while recent and recent[0].role != "user":
        recent.pop(0)
    # A reply the player cut off is there as the words they heard, unmarked. A note such as
    # "(you were interrupted here)" is copied by a small model into its next replies and said
    # aloud: after three cut-off turns the fast profile put a parenthesis in 18 of 36 replies
    # (8 said "(You were interrupted here)"); a dash at the cut ("chipped near—") in 6 of 84,
    # half of them ending on a dash of their own; the bare words in 1 of 84 (docs/latency.md,
    # issue #10's third round; tests/test_prompt_history.py).
    for h in recent:
        _append(msgs, ChatMessage("user" if h.role == "user" else "assistant", h.content))
    _append(msgs, ChatMessage("user", user_text))
    if reply_start.strip():
        msgs.append(ChatMessage("assistant", reply_start.strip()))
    return msgs


def _append(msgs: list[ChatMessage], message: ChatMessage) -> None:
    """Add ``message``, joined to the previous one if it has the same role: in a scene, lines
    the character overheard come before the player's next line to it, and chat templates
    expect the roles to alternate. Joining keeps earlier messages as they were, so the prompt
    still only grows at its end (the KV cache keeps serving its beginning)."""
    if msgs and msgs[-1].role == message.role and message.role == "user":
        msgs[-1] = ChatMessage("user", msgs[-1].content + "\n" + message.content)
    else:
        msgs.append(message)


def _display(character_id: str) -> str:
    return character_id.replace("_", " ").title()


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "!", "?")) else text + "."


def keep_cached_system(messages: Sequence[ChatMessage], cached: Sequence[ChatMessage], persona: str) -> list[ChatMessage]:
    """``messages`` (a turn's prompt), with the system message the KV cache holds (``cached``:
    the slot's previous prompt) when only what follows the ``persona`` changed in it (the
    story moved at this turn's start, or the last turn taught a fact): what changed goes as
    a system note right before the player's line instead.

    The system message comes before the examples and the history, so a new one has the whole
    prompt evaluated again: on two cores, at the 10th turn, ~650 tokens and 5.5 s, past the
    first-token budget, and the player got a fallback line right when the story moved. The
    note restates the current goal, facts and name last, where a small model heeds them most;
    the turn's end then warms the prompt with the new system message (``Session._warm_llm``),
    which the next turn uses."""
    if not cached or not messages or cached[0].role != "system" or messages[0].role != "system":
        return list(messages)
    old, new = cached[0].content, messages[0].content
    if old == new or not (old.startswith(persona) and new.startswith(persona)):
        return list(messages)
    note = new[len(persona) :].strip()
    lines = [i for i, m in enumerate(messages) if m.role == "user"]
    if not note or not lines:
        return list(messages)
    at = lines[-1]  # the player's line (an ack the reply goes on from may follow it)
    return [cached[0], *messages[1:at], ChatMessage("system", note), *messages[at:]]
