"""End of turn by meaning on the real models: Smart Turn v3.2, Silero VAD, Kokoro speech.

The fixture lines are said whole and must read as complete; a pause in the middle of a
sentence (Kokoro says the whole sentence, a silence is spliced in at a word boundary, so the
voice is mid-sentence there) must not end the turn, though 600 ms of silence alone would.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from npc_engine.pipeline.base import STT_SAMPLE_RATE as SR
from npc_engine.pipeline.base import Voice
from npc_engine.pipeline.smart_turn import MODEL, SmartTurn, ensure_model
from npc_engine.pipeline.vad import EndOfTurnDetector, SileroVad, TurnConfig, TurnEvent

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "speech"


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    model = SmartTurn()
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def fixture(name: str) -> tuple[np.ndarray, dict[str, object]]:
    entry = next(c for c in json.loads((FIXTURES / "manifest.json").read_text())["clips"] if c["file"] == name)
    with wave.open(str(FIXTURES / name)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), entry


def run(vad: SileroVad, pcm: np.ndarray, config: TurnConfig, model: SmartTurn | None) -> list[TurnEvent]:
    det = EndOfTurnDetector(vad, config, model)
    return [e for i in range(0, len(pcm), 320) for e in det.feed(pcm[i : i + 320])]


def test_the_model_file_is_installed_and_verified(tmp_path: Path) -> None:
    path = ensure_model(verify=True, cache_dir=tmp_path)
    assert path.name == "smart-turn-v3.2-cpu.onnx" and MODEL.sha256.startswith("2bb02631")


def test_finished_lines_read_as_complete(smart_turn: SmartTurn) -> None:
    """The natural Kokoro lines of the fixture set, up to 200 ms after their last word."""
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    names = [c["file"] for c in manifest["clips"] if c["file"].startswith("kokoro_")]
    complete = []
    for name in names:
        pcm, entry = fixture(name)
        start = int((float(entry["speech_start_s"]) - 0.25) * SR)  # type: ignore[arg-type]
        end = int((float(entry["speech_end_s"]) + 0.2) * SR)  # type: ignore[arg-type]
        complete.append(smart_turn.predict(pcm[start:end]) >= 0.5)
    assert len(names) == 13 and sum(complete) >= 11, dict(zip(names, complete, strict=True))


@pytest.fixture(scope="module")
def paused_lines() -> list[tuple[str, np.ndarray, float, float]]:
    """(what, clip, pause start, pause end): whole-sentence Kokoro with 700 ms spliced in."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from make_fixtures import resample

    from npc_engine.pipeline.tts_kokoro import KokoroSynthesizer

    tts = KokoroSynthesizer()
    rng = np.random.default_rng(5)
    out = []
    for text, voice, after in (("What happened to the village last night?", "af_heart", 2),
                               ("Where is the missing key?", "bm_george", 1),
                               ("How much for the healing potion?", "bf_emma", 2)):
        chunk = tts.synthesize(text, Voice(voice, speed=1.1))
        x = resample(chunk.pcm.astype(np.float32) / 32768.0, chunk.sample_rate)
        words = chunk.words
        split = int((words[after].end + words[after + 1].start) / 2 * SR)
        lead, gap, tail = np.zeros(SR // 2, np.float32), np.zeros(int(0.7 * SR), np.float32), np.zeros(2 * SR, np.float32)
        y = np.concatenate([lead, x[:split], gap, x[split:], tail])
        y = y / np.abs(y).max() * 0.6 + rng.normal(0, 0.0005, len(y))
        pause = (len(lead) + split) / SR
        what = " ".join(w.label for w in words[: after + 1]) + " | " + " ".join(w.label for w in words[after + 1 :])
        out.append((what, (y * 32767).astype(np.int16), pause, pause + 0.7))
    return out


def test_a_mid_sentence_pause_is_not_cut(vad: SileroVad, smart_turn: SmartTurn, paused_lines) -> None:
    for what, pcm, _, pause_end in paused_lines:
        events = run(vad, pcm, TurnConfig(smart_turn_ms=200, complete_ms=None, incomplete_ms=1200), smart_turn)
        ends = [e for e in events if e.kind == "end_of_turn"]
        assert len(ends) == 1 and ends[0].sample / SR > pause_end, (what, [(e.kind, e.sample / SR) for e in events])


def test_silence_alone_cuts_those_pauses(vad: SileroVad, paused_lines) -> None:
    """The test above can fail: 600 ms of silence (the rule without the model) cuts every one."""
    for what, pcm, pause_start, pause_end in paused_lines:
        ends = [e for e in run(vad, pcm, TurnConfig(end_of_turn_ms=600), None) if e.kind == "end_of_turn"]
        assert any(pause_start < e.decided_at / SR < pause_end + 0.3 for e in ends), what


def test_a_finished_line_ends_at_the_first_question(vad: SileroVad, smart_turn: SmartTurn) -> None:
    pcm, _ = fixture("kokoro_af_heart_05.wav")  # "How much for the healing potion?"
    events = run(vad, pcm, TurnConfig(smart_turn_ms=200, complete_ms=None, incomplete_ms=1200), smart_turn)
    (end,) = [e for e in events if e.kind == "end_of_turn"]
    assert end.p_complete is not None and end.p_complete >= 0.5
    assert end.delay_ms < 600  # stream time: the decision came before the silence rule's


def test_the_paused_fixture_is_one_turn_with_the_default_wait(vad: SileroVad, smart_turn: SmartTurn) -> None:
    """pause_mid_sentence.wav: "I found the amulet" <350 ms> "in the old mill", two halves
    synthesized apart. The first half is a finished sentence to the model too (it reads it as
    complete), so it is the default's 600 ms wait for a complete turn that keeps it one turn."""
    pcm, entry = fixture("pause_mid_sentence.wav")
    pcm = np.concatenate([pcm, np.zeros(SR, np.int16)])  # the mic stays open after the clip
    pause_end = float(entry["pauses"][0][1])  # type: ignore[index]
    events = run(vad, pcm, TurnConfig(), smart_turn)
    ends = [e for e in events if e.kind == "end_of_turn"]
    assert len(ends) == 1 and ends[0].sample / SR > pause_end, [(e.kind, e.sample / SR) for e in events]
    # Ending a complete turn at once (complete_ms=None) cuts it there: what the wait is for.
    cut = [e for e in run(vad, pcm, TurnConfig(complete_ms=None), smart_turn) if e.kind == "end_of_turn"]
    assert cut[0].decided_at / SR < pause_end + 0.3 and cut[0].p_complete is not None and cut[0].p_complete >= 0.5
