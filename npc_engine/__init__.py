"""npc-engine: a local, offline, streaming voice engine for game NPCs."""

__version__ = "0.1.0"
