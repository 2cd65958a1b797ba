"""Conversations: one ``Session`` per (player, character), its memory and its microphone."""

from npc_engine.session.session import Session

__all__ = ["Session"]
