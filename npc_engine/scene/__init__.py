"""Scenes: one player and several characters in one conversation (``scene.open``)."""

from npc_engine.scene.scene import Scene

__all__ = ["Scene"]
