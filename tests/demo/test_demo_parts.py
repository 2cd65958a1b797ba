"""The demo game's parts, without an engine: lips, playback clock, map, loading log, WAV
input, the no-engine screen, the script runner, and the rule that it is a plain client."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pygame
import pytest

from demo_game import world as W
from demo_game.audio_in import FRAME_BYTES, frames_of, load_wav_16k
from demo_game.audio_out import AudioOut, PlayChunk, resample
from demo_game.engine_proc import EngineProcess
from demo_game.face import VISEME_SHAPES, Mouth, VisemeTrack, shape_for, viseme_at
from npc_engine.pipeline.base import VISEMES as ENGINE_VISEMES

from .conftest import REPO, SPEECH, free_endpoint


def test_every_engine_viseme_has_a_mouth_shape() -> None:
    assert set(VISEME_SHAPES) == set(ENGINE_VISEMES)
    shapes = {shape_for(v)[0] for v in ENGINE_VISEMES}
    assert shapes == set(Mouth)  # all five shapes are used
    assert shape_for("PP")[0] == Mouth.CLOSED and shape_for("aa")[0] == Mouth.OPEN and shape_for("ou")[0] == Mouth.ROUND


def test_viseme_lookup_follows_the_chunk_time() -> None:
    track = VisemeTrack.from_cue(
        [{"viseme": "aa", "start": 0.10, "end": 0.20}, {"viseme": "PP", "start": 0.0, "end": 0.10},
         {"viseme": "oh", "start": 0.30, "end": 0.45}]
    )
    assert track.labels == ("PP", "aa", "oh")  # sorted whatever order they came in
    assert viseme_at(track, 0.05) == "PP"
    assert viseme_at(track, 0.15) == "aa"
    assert viseme_at(track, 0.25) == "sil"  # a gap
    assert viseme_at(track, 0.40) == "oh"
    assert viseme_at(track, 0.50) == "sil"
    assert viseme_at(track, -0.1) == "sil"


def _silence(seconds: float, rate: int = 24_000) -> bytes:
    return np.zeros(int(seconds * rate), dtype="<i2").tobytes()


def test_playback_clock_queues_chunks_back_to_back() -> None:
    pygame.mixer.pre_init(frequency=24_000, size=-16, channels=1)
    pygame.init()
    try:
        now = [100.0]
        out = AudioOut(enabled=True, clock=lambda: now[0])
        assert out.problem is None and out.rate == 24_000
        a = PlayChunk("bram", 1, 0, _silence(0.2), 24_000, 0.2, "first")
        b = PlayChunk("bram", 1, 1, _silence(0.3), 24_000, 0.3, "second")
        out.push(a)
        out.push(b)
        started = out.update()
        assert started == [a] and a.started_at == 100.0
        assert b.started_at == pytest.approx(100.2)  # queued to start exactly when `a` ends
        now[0] = 100.1
        cur = out.current()
        assert cur is not None and cur[0] is a and cur[1] == pytest.approx(0.1)
        now[0] = 100.25
        assert out.update() == [b]
        cur = out.current()
        assert cur is not None and cur[0] is b and cur[1] == pytest.approx(0.05)
        assert out.busy("bram") and not out.busy("marta")
        out.stop("bram")  # barge-in
        assert out.current() is None and not out.busy()
        # A chunk arriving after silence starts when it arrives, not in the past.
        now[0] = 105.0
        c = PlayChunk("bram", 2, 0, _silence(0.1), 24_000, 0.1, "late")
        out.push(c)
        out.update()
        assert c.started_at == 105.0
    finally:
        pygame.quit()


def test_resample_keeps_duration() -> None:
    pcm = np.arange(22_050, dtype="<i2").tobytes()  # 1 s at 22.05 kHz (the espeak voice's rate)
    assert len(resample(pcm, 22_050, 24_000)) == 24_000 * 2


def test_loudness_drives_the_mouth_when_a_chunk_has_no_visemes() -> None:
    rate = 24_000
    t = np.arange(rate) / rate
    pcm = (np.where(t < 0.5, 0.0, 0.8 * np.sin(2 * np.pi * 200 * t)) * 32767).astype("<i2").tobytes()
    chunk = PlayChunk("bram", 1, 0, pcm, rate, 1.0, "")
    assert chunk.level_at(0.25) < 0.05
    assert chunk.level_at(0.75) > 0.5


def test_map_gate_guards_the_mill() -> None:
    w = W.World()
    square, hammer = (20, 21), W.ITEMS[0].tile
    assert W.ITEMS[0].item == "hammer"  # the item story/oakhollow.yaml waits for
    assert w.area_at(*hammer) is not None and w.area_at(*hammer).id == "mill"
    assert w.path(square, hammer) is None  # the north gate is shut
    w.open_doors.add("north_gate")
    path = w.path(square, hammer)
    assert path is not None and ((19, 10) in path or (20, 10) in path)
    for cid, home in W.NPC_HOME.items():
        assert not w.solid(*home), cid
    for name, spot in W.SPOTS.items():
        assert not w.solid(*spot), name
    assert not w.solid(*W.PLAYER_START)
    assert all(len(row) == W.WIDTH for row in W.TERRAIN)


def test_paths_walk_around_people() -> None:
    w = W.World()
    blocked = frozenset({(20, 20)})
    path = w.path((20, 22), (20, 18), avoid=blocked)
    assert path is not None and (20, 20) not in path
    straight = w.path((15, 22), (15, 18))
    assert straight is not None and len(straight) == 5


ENGINE_LOG = """\
00:36:44 INFO  npc_engine.engine: loading characters from characters/ and story from story/ ...
00:36:44 INFO  npc_engine.engine: loaded characters from characters/ and story from story/ in 0.1 s
00:36:44 INFO  npc_engine.engine: loading LLM (embedded) ...
00:36:46 INFO  npc_engine.pipeline.llm_llamacpp: LLM SmolLM2-135M-Instruct.Q4_1.gguf loaded in 1.40 s (4 slots, 1 thread(s))
00:36:46 INFO  npc_engine.engine: loaded LLM (embedded) in 1.4 s
00:36:46 INFO  npc_engine.engine: loading TTS (kokoro) ..."""


def test_loading_screen_reads_the_engine_log() -> None:
    proc = EngineProcess("tcp://127.0.0.1:1")
    for line in ENGINE_LOG.splitlines():
        proc._parse(line)
    assert [s.what for s in proc.steps] == ["characters from characters/ and story from story/", "LLM (embedded)", "TTS (kokoro)"]
    assert [s.done for s in proc.steps] == [True, True, False]
    assert proc.steps[1].seconds == 1.4
    assert 0 < proc.progress < 1 and not proc.ready
    before = proc.progress
    proc._parse("00:36:57 INFO  npc_engine.engine: engine ready in 13.1 s")
    assert proc.ready and proc.progress == 1.0 > before


def test_spawn_command_points_at_the_repo_content(tmp_path: Path) -> None:
    cmd = EngineProcess("tcp://127.0.0.1:7", data_dir=tmp_path, extra_args=["--tts", "espeak"]).command()
    assert cmd[1:4] == ["-m", "npc_engine", "serve"]
    assert cmd[cmd.index("--endpoint") + 1] == "tcp://127.0.0.1:7"
    assert cmd[cmd.index("--data-dir") + 1] == str(tmp_path)
    assert cmd[cmd.index("--characters") + 1] == str(REPO / "characters")
    assert cmd[-2:] == ["--tts", "espeak"]


def test_wav_input_is_16k_mono_in_20ms_frames(tmp_path: Path) -> None:
    clip = SPEECH / "kokoro_bm_george_00.wav"
    with wave.open(str(clip)) as w:
        n = w.getnframes()
    assert len(load_wav_16k(clip)) == 2 * n
    # 48 kHz stereo in, 16 kHz mono out, same duration.
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(np.zeros(48_000 * 2, dtype="<i2").tobytes())
    pcm = load_wav_16k(path)
    assert len(pcm) == 16_000 * 2
    frames = frames_of(pcm + b"\1\0")
    assert all(len(f) == FRAME_BYTES for f in frames) and len(frames) == 51
    with pytest.raises(ValueError, match="no WAV file"):
        load_wav_16k(tmp_path / "missing.wav")


def test_no_engine_shows_an_error_and_retries() -> None:
    from demo_game.app import App, build_parser

    app = App(build_parser().parse_args(["--no-spawn", "--endpoint", free_endpoint(), "--no-mic", "--fps", "30"]))
    try:
        t0 = time.monotonic()
        while app.state != "error" and time.monotonic() - t0 < 10:
            app.step(1 / 30)
            app.tick()
        assert app.state == "error"
        assert "No npc-engine" in app.error_title
        assert any("npc-engine serve" in line for line in app.error_lines)  # says what to do
        assert app.proc is None  # --no-spawn: nothing started
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_r, mod=0, unicode="r", scancode=0))
        app.step(1 / 30)
        assert app.state == "connecting"
        t0 = time.monotonic()
        while app.state != "error" and time.monotonic() - t0 < 10:
            app.step(1 / 30)
            app.tick()
        assert app.state == "error"
        # The screen shows something (the village behind the message), not a black frame.
        arr = pygame.surfarray.array3d(app.screen)
        assert arr.mean() > 10
    finally:
        app.close()


def test_headless_script_and_help(tmp_path: Path) -> None:
    script = tmp_path / "s.txt"
    shot = tmp_path / "shot.png"
    script.write_text(f"# no engine here: the error screen\nwait 0.3\nscreenshot {shot}\nquit\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "demo_game", "--no-spawn", "--endpoint", free_endpoint(), "--no-mic",
         "--headless-script", str(script)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert shot.stat().st_size > 10_000
    script.write_text("dance wildly\n")
    bad = subprocess.run([sys.executable, "-m", "demo_game", "--headless-script", str(script)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command 'dance'" in bad.stderr
    helped = subprocess.run([sys.executable, "-m", "demo_game", "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for flag in ("--endpoint", "--no-spawn", "--say", "--player", "--save", "--text-only", "--headless-script",
                 "--no-patrols"):
        assert flag in helped.stdout


def test_demo_uses_only_the_public_client() -> None:
    """The demo is a client like a Unity or Godot game: npc_engine.client, and the default endpoint."""
    allowed = {"npc_engine.client", "npc_engine.config"}
    for path in (REPO / "demo_game").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("npc_engine"):
                assert node.module in allowed, f"{path.name} imports {node.module}"
                if node.module == "npc_engine.config":
                    assert [a.name for a in node.names] == ["DEFAULT_ENDPOINT"], path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("npc_engine") for a in node.names), path.name


class RecordingNet:
    """Test double for ``demo_game.net.Net``: records the quest log's asks, does nothing else."""

    def __init__(self) -> None:
        self.beats_asked: list[str] = []

    def query_beats(self, player: str) -> None:
        self.beats_asked.append(player)


def test_a_quest_log_that_could_not_be_read_is_asked_again_when_opened() -> None:
    from demo_game.game import Game, GameOptions

    pygame.init()
    net = RecordingNet()
    game = Game(net, AudioOut(enabled=False), GameOptions(microphone=False, patrols=False))  # type: ignore[arg-type]
    game.on_connected({"type": "hello.ok", "stt": False, "characters": [{"id": "bram", "name": "Bram"}]})
    assert net.beats_asked == [game.player_id]
    j = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_j, mod=0, unicode="j", scancode=0)
    # The engine could not answer (busy, restarting): the player is told, and J asks again.
    game._on_error(None, {"type": "error", "code": "timeout", "message": "the engine did not answer the state.get in time",
                          "request_type": "state.get"})
    assert any("quest log" in t.text and "J" in t.text for t in game.toasts), [t.text for t in game.toasts]
    game.show_quest = False
    game.handle_event(j)
    assert net.beats_asked == [game.player_id] * 2 and game.show_quest
    # Answered: J only shows and hides the log again.
    game._on_net_beats(None, {"beats": {"bram": "bram_intro"}})
    assert game.quest.beats["bram"] == "bram_intro"
    game.handle_event(j)
    game.handle_event(j)
    assert len(net.beats_asked) == 2 and game.show_quest
