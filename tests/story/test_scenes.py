"""Story YAML for scenes: a line's own ``character``, a beat's ``lead`` and ``together``.

Pure story logic and ``npc-engine check`` (no models): the fields load, each mistake is one
error at its line, the lead is resolved from who is present, ``together`` gates intent exits,
and a multi-character exchange comes back as SayLine effects in order, each with its speaker.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from npc_engine import world
from npc_engine.cli import check
from npc_engine.story import (
    Beat,
    BeatEntered,
    BeatLine,
    Exit,
    FlagSet,
    IntentMatched,
    SayLine,
    Story,
    load_story,
    read_story,
)
from npc_engine.story.intents import Intent

Writer = Callable[[str, str], Path]
LineNo = Callable[[str, str], int]

BRAM = """\
name: Bram
voice: bm_george
persona: The village blacksmith.
emotions: [neutral, angry]
gestures: [point, wipe_brow]
greetings:
  - id: bram.greet.1
    text: Hm.
fallbacks:
  - id: bram.fallback.1
    text: Say again.
"""

ALDRIC = """\
name: Captain Aldric
voice: am_michael
persona: The captain of the guard.
emotions: [neutral, surprised]
gestures: [salute, cross_arms]
greetings:
  - id: aldric.greet.1
    text: Halt.
fallbacks:
  - id: aldric.fallback.1
    text: What?
"""

STORY = """\
start: [forge_talk, gate]
intents:
  greet:
    keywords: [hello]
  settle:
    keywords: [calm down, stop arguing]
beats:
  forge_talk:
    character: [bram, aldric]
    together: [bram, aldric]
    lead: aldric
    objective: Argue about the gate.
    exits:
      - on_intent: settle
        goto: forge_quiet
        set: {settled: true}
      - on_intent: greet
        set: {greeted: true}
  forge_quiet:
    character: [bram, aldric]
    lines:
      - id: forge.quiet.1
        text: Fine. Fine.
        emotion: angry
      - id: forge.quiet.2
        character: aldric
        text: As you say.
        gesture: salute
      - id: forge.quiet.3
        character: bram
        text: Back to work, then.
        gesture: wipe_brow
  gate:
    character: marta
    lead: marta
    objective: Pour the ale.
"""

MARTA = BRAM.replace("Bram", "Marta").replace("bram.", "marta.").replace("blacksmith", "innkeeper")


def run_check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="npc-engine check")
    check.configure(parser)
    code = check.run(parser.parse_args(list(argv)))
    return code, capsys.readouterr().out.splitlines()


def save(write: Writer, story: str = STORY) -> tuple[list[str], Path]:
    write("characters/bram.yaml", BRAM)
    write("characters/aldric.yaml", ALDRIC)
    write("characters/marta.yaml", MARTA)
    path = write("story/forge.yaml", story)
    return [str(path.parent.parent / "characters"), str(path.parent)], path


@pytest.fixture
def story(tmp_path: Path, write: Writer) -> Story:
    _, path = save(write)
    return load_story(path)


# --------------------------------------------------------------------------- loading


def test_the_three_fields_load(story: Story) -> None:
    talk, quiet = story.beats["forge_talk"], story.beats["forge_quiet"]
    assert talk.lead == "aldric" and talk.together == ["bram", "aldric"]
    assert quiet.lead is None and quiet.together == []
    assert [line.character for line in quiet.lines] == [None, "aldric", "bram"]
    # A line without a character is said by the beat's first character.
    assert [quiet.line_speaker(line) for line in quiet.lines] == ["bram", "aldric", "bram"]


def test_story_lines_name_each_lines_own_speaker(story: Story) -> None:
    """``Story.lines()`` is what the engine pre-renders, each line in its speaker's voice."""
    assert [(who, line.id) for who, line in story.lines()] == [
        ("bram", "forge.quiet.1"),
        ("aldric", "forge.quiet.2"),
        ("bram", "forge.quiet.3"),
    ]


def test_shipped_check_is_clean_with_a_clean_project(
    tmp_path: Path, write: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    args, _ = save(write)
    code, out = run_check(capsys, *args)
    assert code == 0, "\n".join(out)
    assert out == ["checked 3 character files, 1 story file, 3 beats, 2 intents: no problems"]


def test_a_greeting_has_no_speaker_of_its_own(
    tmp_path: Path, write: Writer, line_no: LineNo, capsys: pytest.CaptureFixture[str]
) -> None:
    """``character`` is a beat line's field only: on a character's greeting it is unknown."""
    args, _ = save(write)
    text = BRAM.replace("    text: Hm.\n", "    text: Hm.\n    character: aldric\n")
    path = write("characters/bram.yaml", text)
    code, out = run_check(capsys, *args)
    assert code == 1
    assert [line for line in out if line.startswith(f"{path}:")] == [
        f"{path}:{line_no(text, 'character: aldric')}: greetings[0]: unknown field 'character' "
        "(allowed here: id, text, emotion, gesture)"
    ]


# --------------------------------------------------------------------------- check errors

# Each case: the replacement in STORY, the text on the offending line, the one error message.
MISTAKES = [
    (
        "line character not in the beat",
        ("        character: bram\n        text: Back", "        character: brm\n        text: Back"),
        "character: brm",
        "line 'forge.quiet.3': character 'brm' is not one of the beat's characters (bram, aldric) "
        "(did you mean 'bram'?)",
    ),
    (
        "line character of another beat",
        ("        character: bram\n        text: Back", "        character: marta\n        text: Back"),
        "character: marta",
        "line 'forge.quiet.3': character 'marta' is not one of the beat's characters (bram, aldric)",
    ),
    (
        "lead not in the beat",
        ("    lead: aldric\n", "    lead: marta\n"),
        "lead: marta",
        "lead 'marta' is not one of the beat's characters (bram, aldric)",
    ),
    (
        "lead unknown",
        ("    lead: aldric\n", "    lead: aldrik\n"),
        "lead: aldrik",
        "lead 'aldrik' is not one of the beat's characters (bram, aldric) (did you mean 'aldric'?)",
    ),
    (
        "together not a subset",
        ("    together: [bram, aldric]\n", "    together:\n      - bram\n      - marta\n"),
        "- marta",
        "together: 'marta' is not one of the beat's characters (bram, aldric)",
    ),
    (
        "together of one",
        ("    together: [bram, aldric]\n", "    together: [bram]\n"),
        "together: [bram]",
        "together needs two or more different characters",
    ),
    (
        "together of one, twice",
        ("    together: [bram, aldric]\n", "    together: [bram, bram]\n"),
        "together: [bram, bram]",
        "together needs two or more different characters",
    ),
    (
        "emotion of the beat's first character, on another speaker's line",
        ("        character: aldric\n        text: As you say.\n", "        character: aldric\n        text: As you say.\n        emotion: angry\n"),
        "emotion: angry\n        gesture: salute",
        "emotion 'angry' is not one of aldric's emotions",
    ),
    (
        "gesture of another speaker",
        ("        gesture: salute\n", "        gesture: wipe_brow\n        emotion: surprised\n"),
        "gesture: wipe_brow\n        emotion: surprised",
        "gesture 'wipe_brow' is not one of aldric's gestures",
    ),
]


@pytest.mark.parametrize(("case", "edit", "needle", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_one_error_at_its_line(
    case: str,
    edit: tuple[str, str],
    needle: str,
    message: str,
    tmp_path: Path,
    write: Writer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = edit
    assert STORY.count(old) == 1, case
    text = STORY.replace(old, new)
    args, path = save(write, text)
    code, out = run_check(capsys, *args)
    assert code == 1
    # The needle may span lines (to pick one of several equal lines): the error is at its first.
    at = text[: text.index(needle)].count("\n") + 1
    problems = [line for line in out if line.startswith(f"{path}:")]
    assert len(problems) == 1, "\n".join(out)
    assert problems[0].startswith(f"{path}:{at}: {message}"), problems[0]
    assert out[-1].endswith("1 error, 0 warnings")


def test_a_story_built_in_code_refuses_the_same_mistakes() -> None:
    beat = Beat(
        id="b", character=["bram", "aldric"], lead="marta", together=["bram"],
        lines=[BeatLine(id="b.1", text="Hm.", character="marta")],
    )
    with pytest.raises(ValueError) as caught:
        Story([beat], start=["b"])
    message = str(caught.value)
    for part in (
        "line 'b.1': character 'marta' is not one of the beat's characters",
        "lead 'marta' is not one of the beat's characters",
        "together needs two or more different characters",
    ):
        assert part in message


def test_an_exchange_nobody_enters_is_content_but_a_lone_beat_is_not(
    tmp_path: Path, write: Writer, line_no: LineNo, capsys: pytest.CaptureFixture[str]
) -> None:
    """scene.banter {beat} plays an exchange without entering it: no 'never reached' for it."""
    text = STORY.replace("        goto: forge_quiet\n", "") + (
        "  lonely:\n"
        "    character: bram\n"
        "    lines:\n"
        "      - id: lonely.1\n"
        "        text: Nobody comes here.\n"
    )
    args, path = save(write, text)
    code, out = run_check(capsys, *args)
    assert code == 1
    assert [line for line in out if line.startswith(f"{path}:")] == [
        f"{path}:{line_no(text, '  lonely:')}: beat 'lonely' can never be reached: no start entry or goto leads to it"
    ]


def test_shipped_story_has_the_forge_exchange_and_a_tavern_lead(repo: Path) -> None:
    story = load_story(repo / "story")
    forge = story.beats["forge_argument"]
    assert forge.together == ["bram", "aldric"]
    assert [(forge.line_speaker(line), line.id) for line in forge.lines] == [
        ("bram", "forge.argument.1"),
        ("aldric", "forge.argument.2"),
        ("bram", "forge.argument.3"),
        ("aldric", "forge.argument.4"),
    ]
    # Nobody is ever in it: the quest's beats are as they were.
    state = story.initial_state()
    assert {c: story.active_beat(state, c).id for c in ("bram", "marta", "aldric")} == {  # type: ignore[union-attr]
        "bram": "bram_hammer_stolen", "marta": "marta_tavern", "aldric": "aldric_gate",
    }
    assert story.lead(state, ["bram", "marta"]) == "marta"
    assert story.lead(state, ["bram", "aldric"]) is None
    report = world.check_paths([repo / "characters", repo / "story"])
    assert not report.problems, "\n".join(map(str, report.problems))


# --------------------------------------------------------------------------- lead


def test_lead_is_the_first_present_characters_beat_lead_who_is_present(story: Story) -> None:
    state = story.initial_state()
    assert story.lead(state, ["bram", "aldric"]) == "aldric"
    assert story.lead(state, ["aldric", "bram"]) == "aldric"
    # The beat's lead is not here: no lead from that beat (marta's own beat leads to her).
    assert story.lead(state, ["bram"]) is None
    assert story.lead(state, ["bram", "marta"]) == "marta"
    # In present order: bram's beat names aldric before marta's beat names marta.
    assert story.lead(state, ["bram", "marta", "aldric"]) == "aldric"
    assert story.lead(state, ["marta", "bram", "aldric"]) == "marta"
    assert story.lead(state, []) is None
    # A beat without a lead: the story names nobody.
    story.on_player_line(state, "bram", "stop arguing, calm down", present=["bram", "aldric"])
    assert story.active_beat(state, "bram").id == "forge_quiet"  # type: ignore[union-attr]
    assert story.lead(state, ["bram", "aldric"]) is None


def test_lead_of_a_character_with_no_beat_is_none(story: Story) -> None:
    state = story.initial_state()
    assert story.lead(state, ["someone", "marta"]) == "marta"
    assert story.lead(state, ["someone"]) is None


# --------------------------------------------------------------------------- together


@pytest.mark.parametrize(
    ("present", "fires"),
    [
        (None, False),  # a one-to-one session: never
        (["bram"], False),
        (["bram", "marta"], False),
        (("bram", "aldric"), True),
        (["marta", "aldric", "bram"], True),
        ({"aldric", "bram"}, True),
    ],
)
def test_together_gates_intent_exits_on_who_is_present(
    story: Story, present: list[str] | tuple[str, ...] | set[str] | None, fires: bool
) -> None:
    state = story.initial_state()
    effects = story.on_player_line(state, "bram", "Calm down, you two.", present=present)
    matched = [e for e in effects if isinstance(e, IntentMatched)]
    assert bool(matched) is fires
    assert (story.active_beat(state, "aldric").id == "forge_quiet") is fires  # type: ignore[union-attr]
    assert (state.flags.get("settled") is True) is fires
    # explain shows the same: the intents listened for only when they can fire.
    fresh = story.initial_state()
    listened = {m.intent for m in story.explain(fresh, "bram", "Calm down, you two.", present=present)}
    assert listened == ({"settle", "greet"} if fires else set())


def test_together_gates_an_exit_that_only_sets(story: Story) -> None:
    state = story.initial_state()
    assert story.on_player_line(state, "aldric", "hello") == []
    assert "greeted" not in state.flags
    effects = story.on_player_line(state, "aldric", "hello", present=["aldric", "bram"])
    assert FlagSet("greeted", True) in effects


def test_beats_without_together_fire_without_present() -> None:
    """One-to-one sessions (present None) work as before for every other beat."""
    beat = Beat(
        id="a", character=["bram"], objective="Work.",
        exits=[Exit(on_intent="greet", set={"hi": True})],
    )
    story = Story([beat], [Intent(name="greet", keywords=["hello"])], start=["a"])
    state = story.initial_state()
    assert FlagSet("hi", True) in story.on_player_line(state, "bram", "hello")
    state = story.initial_state()
    assert FlagSet("hi", True) in story.on_player_line(state, "bram", "hello", present=["bram"])


# --------------------------------------------------------------------------- exchanges


def test_an_exchange_comes_back_as_say_lines_in_order_each_with_its_speaker(story: Story) -> None:
    state = story.initial_state()
    effects = story.on_player_line(state, "aldric", "stop arguing!", present=["bram", "aldric"])
    said = [e for e in effects if isinstance(e, SayLine)]
    assert [(e.character, e.line_id, e.text) for e in said] == [
        ("bram", "forge.quiet.1", "Fine. Fine."),
        ("aldric", "forge.quiet.2", "As you say."),
        ("bram", "forge.quiet.3", "Back to work, then."),
    ]
    assert [(e.emotion, e.gesture) for e in said] == [("angry", None), (None, "salute"), (None, "wipe_brow")]
    # Both characters entered the beat before its lines were said.
    entered = [e for e in effects if isinstance(e, BeatEntered)]
    assert {e.character for e in entered} == {"bram", "aldric"}
    assert max(effects.index(e) for e in entered) < effects.index(said[0])
    assert state.said_lines >= {"forge.quiet.1", "forge.quiet.2", "forge.quiet.3"}


def test_read_story_reports_and_refuses_a_bad_lead(tmp_path: Path, write: Writer) -> None:
    path = write("story/forge.yaml", STORY.replace("    lead: aldric\n", "    lead: marta\n"))
    loaded, problems = read_story(path)
    assert loaded is None
    assert [p.message for p in problems if p.is_error] == [
        "lead 'marta' is not one of the beat's characters (bram, aldric)"
    ]
