"""Fixtures for the characters/story/check tests: write small YAML projects into tmp_path.

Helpers are fixtures (not imports) because test folders here are not packages.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

MINIMAL_CHARACTER = """\
name: Bram
voice: bm_george
persona: The village blacksmith.
greetings:
  - id: bram.greet.1
    text: Hm.
fallbacks:
  - id: bram.fallback.1
    text: Say again.
"""


def _line_no(text: str, needle: str) -> int:
    for n, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in the test YAML")


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (the shipped characters/ and story/ live there)."""
    return Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def minimal_character() -> str:
    """A valid character file's text (id from the file name it is written to)."""
    return MINIMAL_CHARACTER


@pytest.fixture(scope="session")
def line_no() -> Callable[[str, str], int]:
    """line_no(text, needle): the 1-based line of the first line of text containing needle."""
    return _line_no


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """write("characters/bram.yaml", yaml_text) -> the file's path (text is dedented)."""

    def _write(rel: str, text: str) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write
