"""`npc-engine check`: every error class from a small broken project, with its exact line, and exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from npc_engine import world
from npc_engine.cli import check
from npc_engine.yamlsrc import ValidationFailed

Writer = Callable[[str, str], Path]
LineNo = Callable[[str, str], int]

STORY = """\
start: intro
vars:
  gold: 0
intents:
  greet:
    keywords: [hello]
beats:
  intro:
    character: bram
    objective: Say hello.
    exits:
      - on_intent: greet
        when: gold >= 0
        goto: outro
  outro:
    character: bram
    lines:
      - id: bram.outro.1
        text: Bye.
"""


def run_check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="npc-engine check")
    check.configure(parser)
    code = check.run(parser.parse_args(list(argv)))
    return code, capsys.readouterr().out.splitlines()


class Project:
    """A small valid project in tmp_path that tests break one way at a time."""

    def __init__(self, root: Path, write: Writer, character: str) -> None:
        self.root = root
        self.write = write
        self.character_text = character
        self.story_text = STORY

    def save(self) -> tuple[Path, Path]:
        ch = self.write("characters/bram.yaml", self.character_text)
        st = self.write("story/quest.yaml", self.story_text)
        return ch, st

    def args(self) -> list[str]:
        return [str(self.root / "characters"), str(self.root / "story")]


@pytest.fixture
def project(tmp_path: Path, write: Writer, minimal_character: str) -> Project:
    return Project(tmp_path, write, minimal_character)


def problem_lines(out: list[str], file: Path) -> list[str]:
    return [line for line in out if line.startswith(f"{file}:")]


def test_clean_project_exits_zero(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.save()
    code, out = run_check(capsys, *project.args())
    assert code == 0
    assert out == ["checked 1 character file, 1 story file, 2 beats, 1 intent: no problems"]


def test_shipped_content_checks_clean(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(capsys, str(repo / "characters"), str(repo / "story"))
    assert code == 0, "\n".join(out)
    assert out[-1].endswith("no problems")
    assert "3 character files" in out[-1]


def test_default_paths_are_relative_to_the_current_folder(
    project: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project.story_text = STORY.replace("goto: outro", "goto: outr")
    project.save()
    monkeypatch.chdir(project.root)
    code, out = run_check(capsys)
    line = STORY.splitlines().index("        goto: outro") + 1
    assert code == 1
    assert out[0] == f"story/quest.yaml:{line}: goto: unknown beat 'outr' (did you mean 'outro'?)"
    # The typo also leaves 'outro' unreachable: both are reported.
    assert any("beat 'outro' can never be reached" in line for line in out)
    assert out[-1].endswith("2 errors, 0 warnings")


def test_missing_default_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = run_check(capsys)
    assert code == 1
    assert (
        out[0]
        == "characters: no such file or folder (run from the project folder, or pass the paths to check)"
    )


# Each case: which file to break, the replacement, the text on the offending line, a message fragment.
STORY_ERRORS = [
    (
        "yaml syntax",
        "objective: Say hello.",
        "objective: Say: hello.",
        "Say: hello",
        "YAML syntax error: mapping values",
    ),
    ("yaml unclosed quote", "objective: Say hello.", 'objective: "Say hello.', '"Say hello.', "never closed"),
    ("yaml tab", "    objective: Say hello.", "\tobjective: Say hello.", "\tobjective", "indent with spaces"),
    (
        "unknown field",
        "objective: Say hello.",
        "objectve: Say hello.",
        "objectve",
        "unknown field 'objectve' (did you mean 'objective'?)",
    ),
    (
        "missing field",
        "  outro:\n    character: bram\n",
        "  outro:\n",
        "  outro:",
        "beats.outro: missing required field 'character'",
    ),
    (
        "unknown character",
        "  intro:\n    character: bram",
        "  intro:\n    character: bran",
        "character: bran",
        "unknown character 'bran' (did you mean 'bram'?)",
    ),
    ("unknown goto", "goto: outro", "goto: finale", "goto: finale", "goto: unknown beat 'finale'"),
    (
        "unreachable",
        "        goto: outro\n",
        "        set: {seen: true}\n",
        "  outro:",
        "beat 'outro' can never be reached",
    ),
    (
        "missing line id",
        "      - id: bram.outro.1\n        text: Bye.",
        "      - text: Bye.",
        "- text: Bye.",
        "missing required field 'id'",
    ),
    (
        "duplicate line id",
        "id: bram.outro.1",
        "id: bram.greet.1",
        "id: bram.greet.1",
        "duplicate line id 'bram.greet.1' (already used at ",
    ),
    (
        "bad condition",
        "when: gold >= 0",
        "when: gold >= ",
        "when: gold",
        'bad condition "gold >=": expected a value after',
    ),
    ("condition =", "when: gold >= 0", "when: gold = 0", "when: gold", "use '==' to compare"),
    (
        "unknown beat in visited()",
        "when: gold >= 0",
        'when: visited("intr")',
        "visited",
        "visited(\"intr\"): unknown beat (did you mean 'intro'?)",
    ),
    (
        "unknown intent",
        "on_intent: greet",
        "on_intent: gret",
        "on_intent: gret",
        "unknown intent 'gret' (did you mean 'greet'?)",
    ),
    ("no start", "start: intro\n", "", "vars:", "no start beat"),
    (
        "exit both triggers",
        "      - on_intent: greet\n",
        "      - on_intent: greet\n        on_event: bell\n",
        "- on_intent: greet",
        "on_event or on_intent, not both",
    ),
    ("beat without content", "    objective: Say hello.\n", "", "  intro:", "needs an objective"),
]


@pytest.mark.parametrize(
    ("case", "old", "new", "needle", "fragment"), STORY_ERRORS, ids=[c[0] for c in STORY_ERRORS]
)
def test_story_errors_point_at_their_line(
    project: Project,
    capsys: pytest.CaptureFixture[str],
    line_no: LineNo,
    case: str,
    old: str,
    new: str,
    needle: str,
    fragment: str,
) -> None:
    assert old in STORY
    project.story_text = STORY.replace(old, new, 1)
    _, story = project.save()
    code, out = run_check(capsys, *project.args())
    expected = 1 if case == "no start" else line_no(story.read_text(), needle)
    errors = [line for line in problem_lines(out, story) if ": warning: " not in line]
    assert code == 1
    assert any(line.startswith(f"{story}:{expected}: ") and fragment in line for line in errors), "\n".join(
        out
    )


CHARACTER_ERRORS = [
    ("unknown field", "persona:", "persnoa:", "persnoa", "unknown field 'persnoa' (did you mean 'persona'?)"),
    ("missing field", "name: Bram\n", "", "voice:", "missing required field 'name'"),
    (
        "unknown relationship",
        "greetings:",
        "relationships:\n  marat: hm\ngreetings:",
        "marat",
        "relationship with unknown character 'marat'",
    ),
    (
        "duplicate line id",
        "bram.fallback.1",
        "bram.greet.1",
        "id: bram.greet.1\n    text: Say",
        "duplicate line id 'bram.greet.1'",
    ),
    (
        "bad reveal_when",
        "greetings:",
        "secrets:\n  - text: x\n    reveal_when: gold >\ngreetings:",
        "reveal_when",
        "bad condition",
    ),
    (
        "yaml syntax",
        "persona: The village blacksmith.",
        "persona: The village: blacksmith.",
        "persona",
        "YAML syntax error",
    ),
]


@pytest.mark.parametrize(
    ("case", "old", "new", "needle", "fragment"), CHARACTER_ERRORS, ids=[c[0] for c in CHARACTER_ERRORS]
)
def test_character_errors_point_at_their_line(
    project: Project,
    capsys: pytest.CaptureFixture[str],
    line_no: LineNo,
    case: str,
    old: str,
    new: str,
    needle: str,
    fragment: str,
) -> None:
    assert old in project.character_text
    project.character_text = project.character_text.replace(old, new, 1)
    character, _ = project.save()
    code, out = run_check(capsys, *project.args())
    text = character.read_text()
    if "\n" in needle:  # a needle spanning lines: the line where it starts
        expected = text[: text.index(needle)].count("\n") + 1
    else:
        expected = 1 if case == "missing field" else line_no(text, needle)
    assert code == 1
    assert any(
        line.startswith(f"{character}:{expected}: ") and fragment in line
        for line in problem_lines(out, character)
    ), "\n".join(out)


def test_warnings_do_not_fail_unless_strict(
    project: Project, capsys: pytest.CaptureFixture[str], line_no: LineNo
) -> None:
    project.character_text = project.character_text.replace("voice: bm_george", "voice: af_sky")
    project.story_text = STORY.replace("when: gold >= 0", "when: has_sword")
    character, story = project.save()
    code, out = run_check(capsys, *project.args())
    assert code == 0
    assert (
        f"{character}:{line_no(character.read_text(), 'af_sky')}: warning: unknown voice 'af_sky'"
        in "\n".join(out)
    )
    flag = [line for line in out if "'has_sword' is never set" in line]
    assert flag and flag[0].startswith(f"{story}:{line_no(story.read_text(), 'has_sword')}: warning: ")
    assert out[-1].endswith("0 errors, 2 warnings")
    code, _ = run_check(capsys, "--strict", *project.args())
    assert code == 1


def test_unknown_template_variable_is_a_warning(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.story_text = STORY.replace("text: Bye.", "text: Bye, {player_nme}.")
    project.save()
    code, out = run_check(capsys, *project.args())
    assert code == 0
    assert any("template '{player_nme}' names no declared variable" in line for line in out)


def test_single_files_are_classified_by_content(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    character, story = project.save()
    loose = project.root / "loose"
    loose.mkdir()
    (loose / "bram.yaml").write_text(character.read_text())
    (loose / "quest.yaml").write_text(story.read_text())
    code, out = run_check(capsys, str(loose / "bram.yaml"), str(loose / "quest.yaml"))
    assert code == 0 and out[-1].startswith("checked 1 character file, 1 story file")
    # A project folder expands to its characters/ and story/.
    code, out = run_check(capsys, str(project.root))
    assert code == 0 and "1 character file, 1 story file" in out[-1]


def test_explain_prints_intent_scores(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.save()
    code, out = run_check(capsys, "--explain", "well hello there", *project.args())
    assert code == 0
    assert any(line.startswith(" * greet") and "keyword 'hello'" in line for line in out)


def test_load_world_raises_with_every_error(project: Project, repo: Path) -> None:
    project.story_text = STORY.replace("character: bram", "character: bran", 1)
    project.save()
    with pytest.raises(ValidationFailed) as info:
        world.load_world(project.root / "characters", project.root / "story")
    assert any("unknown character 'bran'" in e.message for e in info.value.errors)
    characters, story = world.load_world(repo / "characters", repo / "story")
    assert set(characters) == {"bram", "marta", "aldric"} and len(story.beats) >= 6


def test_main_entry_point(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main([str(repo / "characters"), str(repo / "story")]) == 0
    assert capsys.readouterr().out.strip().endswith("no problems")
