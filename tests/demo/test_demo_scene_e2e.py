"""The demo's scenes end to end, against a real sidecar that the demo spawns itself.

Headless (SDL dummy drivers), real models (embedded LLM, Kokoro; no speech recognizer: the
player types). As a player would: Bram waits at the Crooked Kettle beside Marta, so walking
up to them and pressing E opens one scene of both; a line that names Bram is answered in
Bram's voice, with Bram's lips and subtitles. Then at the forge, with the captain there, the
two argue by themselves (a banter, each line in its speaker's voice), once per visit; on the
next visit the player cuts in and the scene answers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pygame
import pytest

from demo_game import world as W
from demo_game.app import App, build_parser
from demo_game.face import Mouth

from .conftest import free_endpoint, step_until

pytestmark = pytest.mark.slow

ENGINE_START_S = 300.0  # a cold start on a busy 2-core machine; ~15 s when idle
TURN_S = 180.0
BANTER_S = 400.0  # several lines, each generated (or scripted) and spoken in turn


def make_app(endpoint: str, tmp: Path) -> App:
    args = build_parser().parse_args([
        "--endpoint", endpoint, "--engine-data-dir", str(tmp / "engine"), "--player", "Wren",
        "--save", str(tmp / "save.json"), "--no-mic", "--fps", "30", "--no-patrols",
        "--engine-arg=--stt=none", "--engine-arg=--llm-model=fast",
    ])
    return App(args)


def heard(app: App) -> bool:
    conv = app.game.conv
    return conv is not None and conv.ready and conv.turn_done and not conv.thinking and not app.audio.busy()


def walk(app: App, tile: W.Tile) -> None:
    assert app.game.walk_to(tile), f"no way to {tile}"
    step_until(app, lambda: not app.game.player.path, 60, f"walking to {tile}")


def test_tavern_scene_and_forge_banter(tmp_path: Path) -> None:
    app = make_app(free_endpoint(), tmp_path)
    g = app.game
    try:
        step_until(app, lambda: app.state == "playing", ENGINE_START_S, "engine start-up")

        # --- the Kettle: Bram beside Marta, the player walks up to them and presses E
        g.place("bram", W.SPOTS["kettle"])
        walk(app, (31, 19))
        assert sorted(g.group_in_reach()) == ["bram", "marta"]
        g.player.facing = (0, -1)  # towards the door, at neither of them
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_e, mod=0, unicode="e", scancode=0))
        step_until(app, lambda: g.conv is not None and g.conv.ready, 60, "opening the scene")
        conv = g.conv
        assert conv is not None and conv.scene and set(conv.members) == {"bram", "marta"}
        step_until(app, lambda: bool(g.turn_ends) and heard(app), TURN_S, "the greeting")
        greeter = g.turn_ends[-1]["character"]
        assert greeter in ("bram", "marta") and g.turn_ends[-1]["source"] == "greeting"

        # --- a line that names Bram: Bram answers, in his voice, with his lips and subtitles
        n, mark = len(g.turn_ends), time.monotonic()
        g.face("marta")  # facing Marta, but the name comes first
        g.say("Bram, why are you not at your forge today?")
        step_until(app, lambda: any(e.get("source") == "text" for e in g.turn_ends[n:]) and heard(app), TURN_S,
                   "Bram's answer")
        answer = next(e for e in g.turn_ends[n:] if e.get("source") == "text")
        assert answer["character"] == "bram" and answer["status"] in ("ok", "degraded")
        assert answer["audio_seconds"] > 0.3
        # Every message of the turn named Bram: his chunks moved his mouth, nobody else's.
        samples = [s for s in g.mouth_samples if s[0] >= mark and s[3][1] == answer["turn"]]
        assert {s[1] for s in samples} == {"bram"}
        assert any(s[2] != Mouth.CLOSED for s in samples)
        assert g.conv is not None and any(ln.speaker == "bram" for ln in g.conv.log)
        assert not [e for e in g.errors if e.get("request_type") in ("scene.open", "text", "scene.update")]

        # --- the forge, with the captain there: walking in, the two argue by themselves
        g.place("bram", W.NPC_HOME["bram"])
        g.place("aldric", W.SPOTS["forge_yard"])
        walk(app, (15, 19))  # the square's west edge: the conversation at the Kettle ends on the way
        assert g.conv is None
        n, mark = len(g.turn_ends), time.monotonic()
        walk(app, (13, 19))
        step_until(app, lambda: g.conv is not None and g.conv.scene and g.conv.overheard, 10, "the banter's scene")
        assert set(g.conv.members) == {"bram", "aldric"}
        step_until(app, lambda: bool(g.banters) and heard(app), BANTER_S, "the banter")
        lines = [e for e in g.turn_ends[n:] if e.get("source") == "banter"]
        assert {e["character"] for e in lines} == {"bram", "aldric"}, lines
        assert g.banters[-1]["lines"] == len(lines) >= 2 and g.banters[-1]["interrupted"] is False
        assert all(e["audio_seconds"] > 0.3 for e in lines)
        # Each line moved its own speaker's lips.
        for e in lines:
            assert {s[1] for s in g.mouth_samples if s[0] >= mark and s[3][1] == e["turn"]} == {e["character"]}
        assert [ln.speaker for ln in g.conv.log[-len(lines):]] == [e["character"] for e in lines]

        # --- still in the yard: no second banter this visit
        g.end_conversation()
        for _ in range(30):
            app.step(1 / 30)
        assert g.conv is None

        # --- the next visit: it starts again, and the player cuts in
        walk(app, (20, 21))
        walk(app, (13, 19))
        step_until(app, lambda: g.conv is not None and g.conv.overheard and app.audio.current() is not None,
                   BANTER_S, "the second banter speaking")
        first = app.audio.current()[0]
        n = len(g.turn_ends)
        g.say("Stop arguing, both of you. Who took the hammer?")
        assert not app.audio.busy(), "the player's line must silence the banter at once"
        assert (first.character, first.turn) in g.dropped
        step_until(app, lambda: len(g.banters) >= 2, TURN_S, "the second banter's end")
        # The engine sends faster than it speaks: it may have sent every line before the cut
        # (then it says so: all of them, not interrupted), else it stopped and says that.
        assert g.banters[-1]["interrupted"] or g.banters[-1]["lines"] == g.banters[0]["lines"], g.banters
        step_until(app, lambda: any(e.get("source") == "text" for e in g.turn_ends[n:]) and heard(app), TURN_S,
                   "the scene's answer to the player")
        reply = next(e for e in g.turn_ends[n:] if e.get("source") == "text")
        assert reply["character"] in ("bram", "aldric") and reply["status"] in ("ok", "degraded")
        assert g.conv is not None
        assert any(ln.speaker == "player" and ln.text.startswith("Stop arguing") for ln in g.conv.log)
    finally:
        app.close()
    assert app.engine_exit_code == 0
