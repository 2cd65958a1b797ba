"""The bench's pure parts: where speech ends in a clip, felt and content TTFA and the longest
silence from a turn's messages, the new-vs-baseline table, the targets and the report text.

No sidecar and no model: ``npc-engine bench --quick`` runs the whole thing on the real models.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npc_engine.benchmark.felt import compare, find_speech_end, listen, speech_end
from npc_engine.benchmark.replay import TurnResult, push_to_talk_audio
from npc_engine.benchmark.report import (
    ab_table,
    build,
    concurrency_table,
    format_text,
    silence_summary,
    targets,
)
from npc_engine.benchmark.runner import BenchRun
from npc_engine.benchmark.sidecar import Sidecar
from npc_engine.benchmark.workload import RELEASE_S, Utterance, plan_turns
from npc_engine.cli import serve
from npc_engine.config import EngineConfig, baseline

RATE = 16_000
CLIPS = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "speech"


def tone(seconds: float, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype("<i2")


def quiet(seconds: float, noise: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-noise, noise + 1, round(seconds * RATE)).astype("<i2")


# ---------------------------------------------------------------------------- end of speech


def test_the_end_of_speech_is_the_end_of_the_last_loud_stretch() -> None:
    pcm = np.concatenate([quiet(0.5, 30), tone(0.8), quiet(0.3, 30), tone(0.6), quiet(1.0, 30)])
    assert find_speech_end(pcm, RATE) == pytest.approx(2.2, abs=0.021)


def test_a_clip_without_speech_has_no_end_of_speech() -> None:
    assert find_speech_end(quiet(2.0, 40), RATE) is None
    assert find_speech_end(np.zeros(0, dtype="<i2"), RATE) is None


def test_the_manifest_end_of_speech_wins_and_the_scan_is_the_fallback() -> None:
    pcm = np.concatenate([tone(1.0), quiet(1.0)])
    assert speech_end({"speech_end_s": 1.25}, pcm, RATE) == 1.25
    assert speech_end({}, pcm, RATE) == pytest.approx(1.0, abs=0.021)
    assert speech_end({"speech_end_s": 9.0}, pcm, RATE) == pytest.approx(1.0, abs=0.021)  # past the clip: not trusted
    assert speech_end({}, quiet(1.5), RATE) == 1.5  # nothing found: the whole clip


def test_the_scan_agrees_with_the_fixture_manifest() -> None:
    entries = json.loads((CLIPS / "manifest.json").read_text())["clips"]
    assert entries
    for c in entries:
        with wave.open(str(CLIPS / c["file"])) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        found = find_speech_end(pcm, RATE)
        assert found is not None and abs(found - c["speech_end_s"]) < 0.1, c["file"]


def test_push_to_talk_sends_the_clip_to_its_end_of_speech_plus_the_release_delay() -> None:
    pcm = np.concatenate([tone(1.0), quiet(0.1)])
    utt = Utterance("voice", "hello", "x.wav", pcm, speech_end_s=1.0)
    assert len(push_to_talk_audio(utt, 0.05)) == round(1.05 * RATE)
    held = push_to_talk_audio(utt, 0.25)  # longer than the clip's own tail: padded with silence
    assert len(held) == round(1.25 * RATE)
    assert not held[round(1.1 * RATE):].any()


def test_release_delays_are_seeded_and_within_the_range() -> None:
    clips = [Utterance("voice", f"line {i}", f"{i}.wav", tone(0.5), 0.5) for i in range(4)]
    plan = plan_turns(20, clips, 2 / 3, 10, seed=3)
    assert plan == plan_turns(20, clips, 2 / 3, 10, seed=3)
    assert [p.release_s for p in plan] == [p.release_s for p in plan_turns(20, clips, 2 / 3, 10, seed=3)]
    assert all(RELEASE_S[0] <= p.release_s <= RELEASE_S[1] for p in plan)
    assert len({p.release_s for p in plan}) > 1
    assert {p.session for p in plan} == {0, 1}
    assert {p.mode for p in plan_turns(4, clips, 1.0, 4, mode="open_mic")} == {"open_mic"}


# ---------------------------------------------------------------------------- felt and content TTFA


def audio(duration: float, ack: bool | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "reply.audio", "duration": duration, "text": "x"}
    if ack is not None:
        msg["ack"] = ack
    return msg


def test_felt_counts_the_acknowledgement_and_content_waits_for_the_reply() -> None:
    t0 = 100.0
    events = [
        (t0 + 0.01, {"type": "turn.start"}),
        (t0 + 0.2, audio(0.4, ack=True)),  # "Hm." plays to 0.6
        (t0 + 1.0, {"type": "reply.text", "text": "Well"}),
        (t0 + 1.5, audio(2.0, ack=False)),  # 0.9 s of silence after the ack; plays to 3.5
        (t0 + 3.0, audio(1.0, ack=False)),  # arrived while the one before played: no gap
        (t0 + 5.0, audio(1.0, ack=False)),  # 0.5 s after the last one ended (4.5)
        (t0 + 5.1, {"type": "turn.end"}),
    ]
    heard = listen(events, t0)
    assert heard.felt_ms == pytest.approx(200)
    assert heard.content_ms == pytest.approx(1500)
    assert heard.acks == 1
    assert heard.gaps_ms == pytest.approx((900, 500))
    assert heard.longest_silence_ms == pytest.approx(900)


def test_without_an_ack_field_the_first_audio_is_content() -> None:
    heard = listen([(10.0, {"type": "turn.start"}), (12.5, audio(1.0)), (12.6, audio(1.0))], 10.0)
    assert heard.felt_ms == heard.content_ms == pytest.approx(2500)
    assert heard.acks == 0
    assert heard.gaps_ms == ()
    assert heard.longest_silence_ms == pytest.approx(2500)  # the wait for the first audio


def test_a_turn_without_audio_has_no_ttfa_and_only_acks_have_no_content() -> None:
    silent = listen([(1.0, {"type": "turn.start"}), (2.0, {"type": "turn.end"})], 0.0)
    assert silent.felt_ms is None and silent.content_ms is None and silent.longest_silence_ms is None
    only_ack = listen([(1.0, audio(0.3, ack=True))], 0.5)
    assert only_ack.felt_ms == pytest.approx(500) and only_ack.content_ms is None and only_ack.acks == 1


def test_transport_is_measured_on_the_first_chunk_of_content_not_on_the_ack() -> None:
    r = TurnResult(0, 0, "bram", "voice", "line")
    r.ttfa_ms, r.content_ms = 1000.0, 2510.0
    r.timings = {"ack_sent": 995.0, "first_audio_sent": 2500.0}
    assert r.transport_ms == pytest.approx(10.0)
    r.mode = "open_mic"  # its clock starts at the end of speech, before the engine's
    assert r.transport_ms is None


# ---------------------------------------------------------------------------- new vs baseline


def result(side: str, kind: str, felt: float | None, content: float | None, *, mode: str = "push_to_talk",
           category: str = "content", session: int = 0, silence: float | None = None) -> TurnResult:
    r = TurnResult(0, session, "bram", kind, "line", mode=mode, side=side, category=category)
    r.ttfa_ms, r.content_ms = felt, content
    r.longest_silence_ms = silence if silence is not None else felt
    return r


def test_the_ratio_is_baseline_over_new_at_p50_and_p95() -> None:
    row = compare("push_to_talk", "content", [1000, 1000, 1000], [2000, 3000, 4000])
    assert row.p50_ratio == pytest.approx(3.0)
    assert row.p95_ratio == pytest.approx(3.9)
    alone = compare("typed", "felt", [100.0, None], [])
    assert alone.new is not None and alone.new.n == 1
    assert alone.baseline is None and alone.p50_ratio is None and alone.p95_ratio is None


def test_the_ab_table_splits_by_kind_and_leaves_story_lines_out() -> None:
    new = [result("new", "voice", 200, 1200), result("new", "voice", 250, 1400),
           result("new", "text", 150, 900),
           result("new", "voice", 300, 1800, mode="open_mic"),
           result("new", "voice", 50, 60, category="scripted"),  # a pre-rendered story line
           result("new", "voice", None, None, category="no_turn")]
    base = [result("baseline", "voice", 2600, 2600), result("baseline", "voice", 3000, 3000),
            result("baseline", "text", 1800, 1800)]
    rows = {(c.kind, c.metric): c for c in ab_table(new, base)}
    ptt = rows["push_to_talk", "content"]
    assert ptt.new is not None and ptt.new.n == 2 and ptt.new.median == pytest.approx(1300)
    assert ptt.baseline is not None and ptt.p50_ratio == pytest.approx(2800 / 1300, abs=0.01)
    assert rows["push_to_talk", "felt"].p50_ratio == pytest.approx(2800 / 225, abs=0.01)
    assert rows["typed", "content"].p50_ratio == pytest.approx(2.0)
    assert rows["open_mic", "content"].baseline is None
    everything = rows["all", "content"].new
    assert everything is not None and everything.n == 4  # the story line and the turn that never started left out


def test_silences_over_the_limit_are_counted_by_kind() -> None:
    rs = [result("new", "voice", 300, 1000, silence=3000), result("new", "text", 200, 900, silence=800),
          result("new", "voice", None, None, category="no_audio")]
    rs[0].gaps_ms = [3000.0]
    s = silence_summary(rs, 2800.0)
    assert s["over_limit"] == 1 and s["over_limit_by_kind"]["push_to_talk"] == 1 and s["over_limit_in_a_gap"] == 1
    assert s["no_audio"] == 1 and s["turns"] == 3


def test_concurrency_reports_the_worst_sessions_median() -> None:
    rs = [result("new", "voice", 100, v, session=s) for s, v in ((0, 1000), (0, 2000), (1, 4000), (1, 5000))]
    (row,) = concurrency_table({2: rs})
    assert row["worst_session_p50_ms"] == pytest.approx(4500)
    assert row["ttfa_ms"]["median"] == pytest.approx(3000)


def test_the_worst_sessions_median_is_also_given_over_the_models_own_replies() -> None:
    # Session 1 fell back at the budget twice: fast audio, but no answer.
    rs = [result("new", "voice", 100, v, session=0) for v in (1000, 2000)]
    rs += [result("new", "voice", 100, 2500, session=1, category="fallback") for _ in range(2)]
    rs.append(result("new", "voice", 100, 4200, session=1))
    (row,) = concurrency_table({4: rs})
    assert row["worst_session_p50_ms"] == pytest.approx(2500)
    assert row["worst_session_answers_p50_ms"] == pytest.approx(4200)


def test_targets_say_met_missed_or_not_measured() -> None:
    new = [result("new", "voice", 200, 1200), result("new", "voice", 250, 1400)]
    base = [result("baseline", "voice", 2600, 2600), result("baseline", "voice", 3000, 3000)]
    ab = ab_table(new, base)
    got = {t["target"]: t["ok"] for t in targets(ab, silence_summary(new, 2800.0), [])}
    assert got["felt TTFA p50, all turns"] is True
    assert got["push-to-talk content TTFA p50"] is True
    assert got["push-to-talk content TTFA p50, baseline/new"] is True  # 2800 / 1300
    assert got["open mic, end of speech -> content p50"] is None
    assert got["N=4: content TTFA p50 of the worst session"] is None
    assert got["N=4: the same, the model's own replies only"] is None
    slow = ab_table([result("new", "voice", 900, 2000)], base)
    got = {t["target"]: t["ok"] for t in targets(slow, silence_summary(new, 2800.0), [])}
    assert got["felt TTFA p50, all turns"] is False
    assert got["push-to-talk content TTFA p50, baseline/new"] is False  # 1.4x


def test_the_report_shows_both_sides_the_ratios_and_the_targets() -> None:
    run = BenchRun(config={"stop_after_content": 2}, machine={"cpus": 2}, silence_limit_ms=2800.0)
    run.streaming = [result("new", "voice", 200, 1200), result("new", "text", 150, 900),
                     result("new", "voice", 300, 1700, mode="open_mic")]
    run.baseline = [result("baseline", "voice", 2400, 2400), result("baseline", "text", 1800, 1800),
                    result("baseline", "voice", 3300, 3300, mode="open_mic")]
    run.concurrency = {1: run.streaming[:2], 4: [result("new", "voice", 400, 2500, session=i) for i in range(4)]}
    report = build(run)
    text = format_text(report)
    assert "2.00x" in text  # push-to-talk content: 2400 / 1200
    assert "targets" in text and "MISSED" not in text
    assert [r["sessions"] for r in report["concurrency"]] == [1, 4]
    json.dumps(report, default=str)  # the --json file


# ---------------------------------------------------------------------------- the baseline preset


def test_the_baseline_preset_switches_the_latency_work_off_and_nothing_else() -> None:
    cfg = EngineConfig(llm_slots=2, end_of_turn_ms=700)
    old = baseline(cfg)
    assert (old.acks, old.preemptive, old.smart_turn, old.history_block) == (False, False, False, 1)
    assert (old.tts_threads, old.stt_threads, old.stt_final_window) == (1, 1, "full")
    assert (cfg.tts_threads, cfg.stt_threads, cfg.stt_final_window) == (2, 2, "fit")
    assert (old.llm_slots, old.end_of_turn_ms, old.guard) == (2, 700, cfg.guard)
    assert (cfg.acks, cfg.preemptive, cfg.smart_turn) == (True, True, True)  # a copy: the original is untouched


def test_serve_baseline_flag_applies_the_preset() -> None:
    p = argparse.ArgumentParser()
    serve.configure(p)
    assert serve.config_from_args(p.parse_args(["--baseline"])).history_block == 1
    assert serve.config_from_args(p.parse_args([])).acks is True


# ---------------------------------------------------------------------------- the sidecars


def test_a_sidecar_is_idle_only_once_its_log_says_the_pre_rendering_is_done(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    log = tmp_path / "sidecar.log"
    log.write_text("npc-engine ready on tcp://127.0.0.1:1\n")
    sidecar = Sidecar(proc, "tcp://127.0.0.1:1", tmp_path / "data", log)
    assert not sidecar.prerendering()  # nothing to render: the log never says it started
    log.write_text(log.read_text() + "09:21:03 INFO  npc_engine.engine: pre-rendering 40 scripted lines in the background\n")
    assert sidecar.prerendering()
    assert sidecar.wait_idle(max_wait=0.3, window=0.1) >= 0.3  # still rendering: waits to the end
    log.write_text(log.read_text() + "09:23:49 INFO  npc_engine.engine: pre-rendered 40 lines in 165.4 s\n")
    assert not sidecar.prerendering()
    assert sidecar.wait_idle(max_wait=30.0, window=0.1) < 30.0
