"""Shared fixtures. Models load once per test session; engines bind free loopback ports."""

from __future__ import annotations

import os

# No test may reach a model hub (design notes: weights come from registry packages only).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
