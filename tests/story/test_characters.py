"""Character files: the shipped cast loads, defaults apply, and mistakes come back with their line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from npc_engine.characters import (
    DEFAULT_EMOTIONS,
    KNOWN_VOICES,
    Character,
    ValidationFailed,
    load_characters,
    read_characters,
)
from npc_engine.yamlsrc import SourceError

Writer = Callable[[str, str], Path]
LineNo = Callable[[str, str], int]


def test_shipped_cast_loads_with_voices_lines_and_cues(repo: Path) -> None:
    cast = load_characters(repo / "characters")
    assert set(cast) == {"bram", "marta", "aldric"}
    assert {c.voice.id for c in cast.values()} == {"bm_george", "af_bella", "am_michael"}
    for ch in cast.values():
        assert ch.voice.id in KNOWN_VOICES
        assert ch.persona and ch.style and ch.knows and ch.secrets
        assert "neutral" in ch.emotions
        assert ch.greetings and ch.fallbacks
        ids = [line.id for line in ch.lines()]
        assert len(ids) == len(set(ids))
        assert all(i.startswith(ch.id + ".") for i in ids)
        for other in ch.relationships:
            assert other in cast and other != ch.id
    assert "give_item" in cast["bram"].actions
    assert "open_door" in cast["aldric"].actions
    # Secrets carry reveal conditions the story can evaluate.
    assert cast["aldric"].secrets[0].reveal_when == 'beat == "aldric_opens"'


def test_minimal_character_gets_defaults_and_id_from_file_name(
    write: Writer, tmp_path: Path, minimal_character: str
) -> None:
    write("characters/old_tom.yaml", minimal_character)
    cast = load_characters(tmp_path / "characters")
    tom = cast["old_tom"]
    assert tom.id == "old_tom"
    assert tom.voice.id == "bm_george" and tom.voice.speed == 1.0  # `voice: id` shorthand
    assert tom.emotions == list(DEFAULT_EMOTIONS)
    assert tom.gestures == [] and tom.actions == []
    assert tom.reply.max_sentences == 2 and tom.reply.max_tokens == 80
    assert tom.style == "" and tom.secrets == [] and tom.relationships == {}


def test_secret_shorthand_means_never_reveal(write: Writer, tmp_path: Path, minimal_character: str) -> None:
    write("characters/bram.yaml", minimal_character + "secrets:\n  - He cheats at dice.\n")
    (bram,) = load_characters(tmp_path / "characters").values()
    assert bram.secrets[0].text == "He cheats at dice."
    assert bram.secrets[0].reveal_when is None


def test_errors_carry_file_and_line(write: Writer, tmp_path: Path, line_no: LineNo) -> None:
    path = write(
        "characters/bram.yaml",
        """\
        name: Bram
        voice:
          id: bm_george
          speed: fast
        persnoa: The smith.
        greetings:
          - text: no id
        """,
    )
    text = path.read_text()
    with pytest.raises(ValidationFailed) as info:
        load_characters(tmp_path / "characters")
    errors = [e for e in info.value.errors if e.is_error]
    got = {(e.line, e.message) for e in errors}
    file = str(path)
    assert all(e.file == file for e in errors)
    assert (line_no(text, "persnoa"), "unknown field 'persnoa' (did you mean 'persona'?)") in got
    assert any(ln == line_no(text, "speed: fast") and "voice.speed" in m and "'fast'" in m for ln, m in got)
    assert any(ln == line_no(text, "- text: no id") and "missing required field 'id'" in m for ln, m in got)
    assert any(ln == 1 and "missing required field 'persona'" in m for ln, m in got)
    # The exception's own text is what a server log shows: file:line lines.
    assert f"{file}:{line_no(text, 'persnoa')}: unknown field 'persnoa'" in str(info.value)


def test_id_written_in_file_is_rejected(write: Writer, tmp_path: Path, minimal_character: str) -> None:
    path = write("characters/bram.yaml", "id: smith\n" + minimal_character)
    _, problems = read_characters(tmp_path / "characters")
    assert SourceError(str(path), 1, "remove 'id': a character's id is its file name") in problems


def test_bad_line_id_and_duplicates(
    write: Writer, tmp_path: Path, minimal_character: str, line_no: LineNo
) -> None:
    path = write(
        "characters/bram.yaml",
        minimal_character
        + "  - id: bram.greet.1\n    text: Again.\n"  # appended to fallbacks: a duplicate id
        + "knows: [x]\n",
    )
    text = path.read_text()
    _, problems = read_characters(tmp_path / "characters")
    dup = [p for p in problems if "duplicate line id 'bram.greet.1'" in p.message]
    assert len(dup) == 1 and dup[0].is_error
    assert dup[0].line == len(minimal_character.splitlines()) + 1
    assert f"first used on line {line_no(text, 'id: bram.greet.1')}" in dup[0].message

    path = write("characters/bram.yaml", minimal_character.replace("bram.greet.1", "bram greet 1"))
    _, problems = read_characters(tmp_path / "characters")
    (err,) = [p for p in problems if p.is_error]
    assert err.line == line_no(path.read_text(), "bram greet 1")
    assert "may only use letters, digits" in err.message


def test_unknown_relationship_and_voice(
    write: Writer, tmp_path: Path, minimal_character: str, line_no: LineNo
) -> None:
    path = write(
        "characters/bram.yaml",
        minimal_character.replace("voice: bm_george", "voice: bm_georg")
        + "relationships:\n  marat: Fond of her.\n",
    )
    write("characters/marta.yaml", minimal_character.replace("bram.", "marta."))
    text = path.read_text()
    cast, problems = read_characters(tmp_path / "characters")
    rel = [p for p in problems if "relationship" in p.message]
    assert [(p.line, p.is_error) for p in rel] == [(line_no(text, "marat:"), True)]
    assert "(did you mean 'marta'?)" in rel[0].message
    voice = [p for p in problems if "unknown voice" in p.message]
    assert [(p.line, p.severity) for p in voice] == [(line_no(text, "bm_georg"), "warning")]
    assert "did you mean 'bm_george'" in voice[0].message
    # The voice problem alone is only a warning: the character still loads.
    assert "bram" in cast


def test_line_cues_must_be_allowed(
    write: Writer, tmp_path: Path, minimal_character: str, line_no: LineNo
) -> None:
    text = minimal_character.replace(
        "    text: Say again.\n", "    text: Say again.\n    emotion: happy\n    gesture: wave\n"
    )
    write("characters/bram.yaml", text + "gestures: [nod]\nemotions: [neutral, angry]\n")
    _, problems = read_characters(tmp_path / "characters")
    errs = sorted((p.line, p.message.split(" is not")[0]) for p in problems if p.is_error)
    assert errs == [
        (line_no(text, "emotion: happy"), "emotion 'happy'"),
        (line_no(text, "gesture: wave"), "gesture 'wave'"),
    ]


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="no such file or folder"):
        load_characters(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationFailed, match=r"no character files"):
        load_characters(tmp_path / "empty")


def test_character_model_is_plain_data() -> None:
    ch = Character.model_validate(
        {
            "id": "x",
            "name": "X",
            "voice": {"id": "af_heart"},
            "persona": "p",
            "greetings": [{"id": "x.1", "text": "Hi"}],
        }
    )
    assert ch.src_line() == 0  # built in code: no source position
    assert ch.model_dump()["greetings"][0] == {"id": "x.1", "text": "Hi", "emotion": None, "gesture": None}
