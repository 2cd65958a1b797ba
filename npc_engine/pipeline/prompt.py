"""Builds the chat messages for one NPC turn.

Order matters for latency: llama.cpp reuses the longest unchanged token prefix of the
previous request, so the parts that never change for a character (persona, style,
knowledge, cue instructions) come first, and the parts that change with the story (the
current objective, secrets that became tellable) come last in the system prompt.

Secrets whose condition does not hold are left out of the prompt entirely: a small model
cannot be trusted to keep a secret it has been told.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from npc_engine.characters import Character
from npc_engine.pipeline.base import ChatMessage
from npc_engine.store import HistoryEntry


def persona_prompt(character: Character) -> str:
    """The stable part of a character's system prompt (cached across turns)."""
    lines = [
        f"You are {character.name}. {character.persona.strip()}",
        f"How you speak: {character.style.strip()}",
    ]
    if character.knows:
        lines.append("What you know: " + " ".join(_sentence(k) for k in character.knows))
    if character.relationships:
        lines.append(
            "People you know: " + " ".join(f"{who.capitalize()}: {how.strip()}" for who, how in character.relationships.items())
        )
    lines.append(
        f"Stay in character. Answer in at most {character.reply.max_sentences} short sentences of plain speech. "
        "Never mention being an AI."
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


def system_prompt(character: Character, objective: str | None, revealed_secrets: Iterable[str], facts: Iterable[str] = ()) -> str:
    text = persona_prompt(character)
    extra = [_sentence(f) for f in facts]
    secrets = [_sentence(s) for s in revealed_secrets]
    if secrets:
        extra.append("You may now tell the player: " + " ".join(secrets))
    if objective:
        extra.append("Your goal right now: " + _sentence(objective))
    return text + ("\n" + "\n".join(extra) if extra else "")


def build_messages(
    system: str,
    history: Sequence[HistoryEntry],
    user_text: str,
    history_turns: int,
) -> list[ChatMessage]:
    msgs = [ChatMessage("system", system)]
    # Keep whole exchanges so the model never sees an answer without its question.
    recent = list(history)[-2 * history_turns:] if history_turns > 0 else []
    while recent and recent[0].role != "user":
        recent.pop(0)
    for h in recent:
        content = h.content + (" (you were interrupted here)" if h.interrupted else "")
        msgs.append(ChatMessage("user" if h.role == "user" else "assistant", content))
    msgs.append(ChatMessage("user", user_text))
    return msgs


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "!", "?")) else text + "."
