"""The character fields the guard and the prompt use (facts, secret keys, examples,
deflections): how they load, and the file:line problems `npc-engine check` reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from npc_engine.characters import load_characters, read_characters

Writer = Callable[[str, str], Path]
LineNo = Callable[[str, str], int]


def test_shipped_characters_have_every_quality_field(repo: Path) -> None:
    for ch in load_characters(repo / "characters").values():
        assert ch.deflections and ch.examples, ch.id
        assert any(f.about and f.value for f in ch.facts), f"{ch.id} has no checkable fact"
        assert all(s.keys for s in ch.secrets), f"{ch.id} has a secret without keys"
        assert all(line.id.startswith(f"{ch.id}.deflect.") for line in ch.deflections)
        ids = {line.id for line in ch.lines()}
        assert {line.id for line in ch.deflections} <= ids, "deflections are scripted lines (pre-rendered)"


def test_fields_load_with_their_shorthands(write: Writer, tmp_path: Path, minimal_character: str) -> None:
    write(
        "characters/bram.yaml",
        minimal_character
        + """\
facts:
  - Bram is the smith.
  - text: Shoeing a horse costs two copper.
    about: horseshoe
    value: 2 copper
  - text: The inn is the Crooked Kettle.
    about: [inn]
    value: [Crooked Kettle, Kettle]
secrets:
  - text: He owes Marta twelve silver.
    keys: [12 silver, owe + Marta]
deflections:
  - id: bram.deflect.1
    text: Not for a smith to say.
examples:
  - player: Hello?
    reply: Hm. What do you need?
""",
    )
    (bram,) = load_characters(tmp_path / "characters").values()
    assert [(f.text, f.about, f.value) for f in bram.facts] == [
        ("Bram is the smith.", [], []),
        ("Shoeing a horse costs two copper.", ["horseshoe"], ["2 copper"]),
        ("The inn is the Crooked Kettle.", ["inn"], ["Crooked Kettle", "Kettle"]),
    ]
    assert bram.secrets[0].keys == ["12 silver", "owe + Marta"]
    assert [line.id for line in bram.lines()][-1] == "bram.deflect.1"
    assert (bram.examples[0].player, bram.examples[0].reply) == ("Hello?", "Hm. What do you need?")


def test_problems_point_at_their_line(write: Writer, tmp_path: Path, minimal_character: str, line_no: LineNo) -> None:
    path = write(
        "characters/bram.yaml",
        minimal_character
        + """\
knows:
  - His hammer is old.
facts:
  - text: A nail costs one copper.
    value: 1 copper
  - text: The mill is north.
    about: [mill]
  - text: The inn is the Crooked Kettle.
    about: [inn]
    value: Crooked Kettel
secrets:
  - text: He cheats at dice.
  - text: He loves his hammer.
    keys: [hammer, " + "]
examples:
  - player: Hi.
    reply: One. Two. Three.
""",
    )
    text = path.read_text()
    _, problems = read_characters(tmp_path / "characters")
    got = {(p.line, p.severity, p.message.split(":")[0]) for p in problems}
    assert (line_no(text, "value: 1 copper"), "error", "'value' without 'about'") in got
    assert (line_no(text, "about: [mill]"), "warning", "'about' without 'value'") in got
    assert any(p.line == line_no(text, "Crooked Kettel") and "is it a typo" in p.message for p in problems)
    assert any(
        p.line == line_no(text, "He cheats at dice") and p.severity == "warning" and "without keys" in p.message
        for p in problems
    )
    assert any("key 'hammer' also appears in knows 1" in p.message and p.severity == "warning" for p in problems)
    assert any("' + ' has an empty part" in p.message and p.is_error for p in problems)
    assert any(
        p.line == line_no(text, "reply: One. Two. Three.") and "3 sentences" in p.message for p in problems
    )
    assert any("no deflections" in p.message and p.severity == "warning" for p in problems)


def test_deflection_ids_share_the_line_id_namespace(write: Writer, tmp_path: Path, minimal_character: str) -> None:
    write(
        "characters/bram.yaml",
        minimal_character + "deflections:\n  - id: bram.greet.1\n    text: Hm.\n",
    )
    _, problems = read_characters(tmp_path / "characters")
    assert any("duplicate line id 'bram.greet.1'" in p.message and p.is_error for p in problems)
