"""Oakhollow, the npc-engine demo game: a pygame client of the sidecar, like a Unity or Godot game."""

import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
