"""``npc-engine say``: a line in a character's voice, written as WAV plus its tracks as JSON."""

from __future__ import annotations

import argparse
import json
import wave
from pathlib import Path

import pytest

from npc_engine.cli import say
from npc_engine.pipeline.base import VISEMES, Voice

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    say.configure(parser)
    return parser.parse_args(list(argv))


def test_say_writes_wav_and_tracks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "line.wav"
    args = parse("bram", "Hm. You need something forged?", "-o", str(out), "--backend", "espeak",
                 "--characters-dir", str(REPO / "characters"))
    assert say.run(args) == 0
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        duration = wav.getnframes() / 24_000
    tracks = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert tracks["voice"] == {"id": "bm_george", "speed": 0.95}  # from characters/bram.yaml
    assert tracks["duration"] == pytest.approx(duration)
    assert {v["label"] for v in tracks["visemes"]} <= set(VISEMES)
    assert tracks["visemes"][-1]["end"] == pytest.approx(duration, abs=0.025)
    assert [w["word"] for w in tracks["words"]] == ["Hm", "You", "need", "something", "forged"]
    assert "wrote" in capsys.readouterr().out


def test_voice_resolution(tmp_path: Path) -> None:
    characters = tmp_path / "characters"
    characters.mkdir()
    (characters / "wren.yaml").write_text("voice: {id: bf_emma, speed: 1.1}\n", encoding="utf-8")
    assert say._yaml_voice(characters / "wren.yaml") == Voice("bf_emma", 1.1)
    assert say.resolve_voice("af_heart", characters) == Voice("af_heart")
    assert say.resolve_voice("af_heart", characters, speed=1.3) == Voice("af_heart", 1.3)
    assert say.resolve_voice("bram", REPO / "characters", voice_id="af_bella") == Voice("af_bella", 0.95)
    with pytest.raises(say.SayError, match="neither a character"):
        say.resolve_voice("nobody", characters)
    (characters / "broken.yaml").write_text("name: Broken\n", encoding="utf-8")
    with pytest.raises(say.SayError, match="voice"):
        say._yaml_voice(characters / "broken.yaml")


def test_user_errors_exit_2_with_a_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("nobody", "Hello.", "-o", str(tmp_path / "x.wav"), "--backend", "espeak",
                 "--characters-dir", str(tmp_path))
    assert say.run(args) == 2
    assert "neither a character" in capsys.readouterr().err
    args = parse("af_heart", "[nods]", "-o", str(tmp_path / "x.wav"), "--backend", "espeak")
    assert say.run(args) == 2
    assert "nothing to say" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
