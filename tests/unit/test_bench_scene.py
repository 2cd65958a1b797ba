"""The bench's scene phase (issue #13), its pure parts: the plan of lines addressed to the
scene's characters, the scene against one-to-one table, its report text and the flags.

No sidecar and no model: ``npc-engine bench --only scenes`` runs the phase on the real models.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from npc_engine.benchmark.replay import TurnResult
from npc_engine.benchmark.report import build, format_text, scene_table
from npc_engine.benchmark.runner import BenchRun
from npc_engine.benchmark.workload import (
    SCENE_CHARACTERS,
    Utterance,
    addressed_by_name,
    plan_scene_turns,
    plan_turns,
)
from npc_engine.characters import Character, load_characters
from npc_engine.cli import bench
from npc_engine.scene.routing import choose_answerer
from tests.harness import REPO


def clips(n: int = 4) -> list[Utterance]:
    return [Utterance("voice", f"line {i}", f"{i}.wav", np.zeros(8000, dtype="<i2"), 0.4) for i in range(n)]


# ---------------------------------------------------------------------------- the plan


def test_a_typed_line_names_its_character_and_keeps_a_capital_i() -> None:
    assert addressed_by_name("What is on the menu tonight?", "marta") == "Marta, what is on the menu tonight?"
    assert addressed_by_name("I will help you.", "bram") == "Bram, I will help you."


def test_the_scene_plan_alternates_the_characters_and_keeps_the_mix_of_the_conversations() -> None:
    plain = plan_turns(10, clips(), 2 / 3, 10, seed=5)
    plan = plan_scene_turns(10, clips(), 2 / 3, 10, seed=5)
    assert plan == plan_scene_turns(10, clips(), 2 / 3, 10, seed=5)
    assert [p.character for p in plan] == ["marta", "bram"] * 5
    assert [p.utterance.kind for p in plan] == [p.utterance.kind for p in plain]
    assert {p.utterance.kind for p in plan} == {"voice", "text"}
    for p, q in zip(plan, plain, strict=True):
        assert p.release_s == q.release_s and p.mode == "push_to_talk"
        if p.utterance.kind == "voice":
            assert p.utterance == q.utterance  # a clip is played as recorded: facing addresses it
        else:
            assert p.utterance.text.startswith(f"{p.character.capitalize()}, ")
    two = plan_scene_turns(8, clips(), 0.5, 4, characters=("bram", "marta"), first_session=7)
    assert {p.session for p in two} == {7, 8}
    assert [p.character for p in two if p.session == 8] == ["bram", "marta", "bram", "marta"]  # each starts afresh


def test_the_scenes_routing_sends_each_typed_line_to_the_character_it_is_for() -> None:
    cast: dict[str, Character] = load_characters(REPO / "characters")
    present = [cast[c] for c in SCENE_CHARACTERS]
    plan = plan_scene_turns(12, clips(), 0.0, 12, seed=1)
    assert all(p.utterance.kind == "text" for p in plan)
    for p in plan:
        # Facing the other one, as the game may still say after a voice turn: the name wins.
        other = next(c for c in SCENE_CHARACTERS if c != p.character)
        choice = choose_answerer(p.utterance.text, present, facing=other, last=other)
        assert (choice.character, choice.rule) == (p.character, "name"), p.utterance.text


# ---------------------------------------------------------------------------- scene against one-to-one


def turn(side: str, kind: str, content: float | None, *, felt: float | None = None, category: str = "content",
         character: str = "marta", answered_by: str | None = None) -> TurnResult:
    r = TurnResult(0, 0, character, kind, "line", side=side, category=category)
    r.content_ms = content
    r.ttfa_ms = felt if felt is not None else content
    r.answered_by = answered_by if answered_by is not None else character
    if content is not None:
        r.timings = {"stt_final": 300.0, "llm_first_token": 300.0 + content / 2} if kind == "voice" else \
            {"llm_first_token": content / 2}
        r.prompt_tokens_evaluated = 100 if side == "scene" else 20
        r.preemptive = kind == "voice" and side == "one_to_one"
    return r


def sample_turns() -> list[TurnResult]:
    return [
        turn("scene", "voice", 1200, felt=300), turn("scene", "voice", 1600, felt=350),
        turn("scene", "text", 1500, character="bram"),
        turn("scene", "text", 1000, character="bram", answered_by="marta"),  # misrouted: still an answer heard
        turn("scene", "voice", 50, category="scripted"),  # a pre-rendered story line: left out
        turn("scene", "voice", None, category="no_turn"),
        turn("one_to_one", "voice", 1000, felt=300), turn("one_to_one", "voice", 1200, felt=300),
        turn("one_to_one", "text", 1000, character="bram"), turn("one_to_one", "text", 1000, character="bram"),
    ]


def test_the_scene_table_puts_scene_and_one_to_one_side_by_side_with_their_ratio() -> None:
    table = scene_table(sample_turns())
    assert table is not None
    rows = {(r["kind"], r["metric"]): r for r in table["rows"]}
    ptt = rows["push_to_talk", "content"]
    assert ptt["scene"]["median"] == pytest.approx(1400) and ptt["scene"]["n"] == 2
    assert ptt["one_to_one"]["median"] == pytest.approx(1100) and ptt["one_to_one"]["n"] == 2
    assert ptt["p50_ratio"] == pytest.approx(1400 / 1100, abs=0.01)  # scene / one-to-one: > 1 is slower
    assert rows["push_to_talk", "felt"]["p50_ratio"] == pytest.approx(325 / 300, abs=0.01)
    assert rows["typed", "content"]["p50_ratio"] == pytest.approx(1.25)
    everything = rows["all", "content"]
    assert everything["scene"]["n"] == 4 and everything["one_to_one"]["n"] == 4
    assert table["turns"] == {"scene": 6, "one_to_one": 4}
    assert table["by_category"]["scene"]["scripted"] == 1 and table["by_category"]["one_to_one"]["scripted"] == 0
    assert table["misrouted"] == 1
    scene, solo = table["stages"]["scene"], table["stages"]["one_to_one"]
    assert scene["llm_first_token_after_line_ms"]["median"] == pytest.approx(675)  # 600 800 750 500: after the line
    assert scene["llm_first_token_after_line_ms"]["n"] == 4  # content turns only: not the story line
    assert (scene["prompt_tokens_evaluated"]["median"], solo["prompt_tokens_evaluated"]["median"]) == (100, 20)
    assert (scene["preemptive_commits"], solo["preemptive_commits"]) == (0, 2)
    assert scene_table([]) is None


def test_a_scene_only_report_has_the_scene_table_and_no_empty_sections() -> None:
    run = BenchRun(config={"stop_after_content": 2, "scene_characters": ["marta", "bram"]}, machine={"cpus": 2},
                   silence_limit_ms=2800.0)
    run.scenes = sample_turns()
    report = build(run)
    text = format_text(report)
    assert "scenes (issue #13)" in text and "marta and bram" in text
    assert "1.27x" in text  # push-to-talk content: 1400 / 1100
    assert "1 scene turn(s) answered by another character" in text
    assert "scene 675 ms / 100 / 0, one-to-one 500 ms / 20 / 2" in text
    assert "targets" not in text and "stage marks" not in text  # no conversations: nothing to show there
    dumped = json.loads(json.dumps(report, default=str))  # the --json file
    assert dumped["scenes"]["rows"] and len(dumped["turns"]["scenes"]) == 10
    assert dumped["turns"]["scenes"][3]["answered_by"] == "marta"


def test_a_full_report_shows_the_scene_table_next_to_the_rest() -> None:
    run = BenchRun(config={"stop_after_content": 2}, machine={"cpus": 2}, silence_limit_ms=2800.0)
    run.streaming = [turn("new", "voice", 1200), turn("new", "text", 900)]
    run.scenes = sample_turns()
    text = format_text(build(run))
    assert "targets" in text and "scenes (issue #13)" in text
    assert format_text(build(BenchRun(config={}, machine={}, streaming=run.streaming))).count("scenes") == 0


# ---------------------------------------------------------------------------- the flags


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.configure(p)
    return p.parse_args(list(argv))


def test_scenes_are_on_by_default_and_add_their_own_time_to_the_budget() -> None:
    cfg = bench.bench_config(parse())
    assert cfg.scene_turns == 10 and cfg.baseline and cfg.turns == 30
    assert cfg.budget_s == pytest.approx(60 * (12.5 + 2.75)) and cfg.scene_reserve_s == pytest.approx(165)
    off = bench.bench_config(parse("--no-scenes"))
    assert off.scene_turns == 0 and off.budget_s == pytest.approx(60 * 12.5)
    assert bench.bench_config(parse("--quick")).scene_turns == 3


def test_only_scenes_runs_the_scene_phase_alone_on_the_new_sidecar() -> None:
    cfg = bench.bench_config(parse("--only", "scenes", "--scene-turns", "12"))
    assert cfg.scene_turns == 12 and not cfg.baseline
    assert (cfg.turns, cfg.open_mic_turns, cfg.concurrency) == (0, 0, ())
    assert cfg.budget_s == pytest.approx(60 * 2.75)
    with pytest.raises(ValueError, match="--only scenes"):
        bench.bench_config(parse("--only", "scenes", "--no-scenes"))
