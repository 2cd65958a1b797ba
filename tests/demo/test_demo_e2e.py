"""The demo game end to end against a real sidecar that the demo spawns itself.

Headless (SDL dummy drivers), real models (embedded LLM, Kokoro, Whisper). One long
scenario, as a player would play it: the loading screen, walking to Bram, the greeting
with lips following visemes, a typed line that moves the quest, a spoken (WAV) line,
F5, a further quest step, quitting (which must stop the engine), a new game with a new
client and engine on the same data dir, F9, and the quest back where it was saved.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pygame
import pytest

from demo_game.app import App, build_parser
from demo_game.face import Mouth

from .conftest import SPEECH, free_endpoint, step_until

pytestmark = pytest.mark.slow

ENGINE_START_S = 300.0  # a cold start on a busy 2-core machine; ~15 s when idle
TURN_S = 180.0
WAV = SPEECH / "kokoro_bm_george_00.wav"  # "Hello blacksmith, can you fix my sword?"


def make_app(endpoint: str, tmp: Path) -> App:
    args = build_parser().parse_args([
        "--endpoint", endpoint, "--engine-data-dir", str(tmp / "engine"), "--player", "Tess",
        "--save", str(tmp / "save.json"), "--no-mic", "--fps", "30",
        "--no-patrols",  # the captain stays at his gate: no banter at the forge in this one-to-one story
    ])
    return App(args)


def key(k: int, unicode: str = "") -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode=unicode, scancode=0))


def type_text(text: str) -> None:
    for ch in text:
        pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, text=ch))


def heard(app: App) -> bool:
    conv = app.game.conv
    return conv is not None and conv.ready and conv.turn_done and not conv.thinking and not app.audio.busy()


def wait_turn(app: App, n_before: int, what: str) -> dict[str, Any]:
    """Wait for the next turn.end of the conversation's character and for its audio to finish."""
    step_until(app, lambda: len(app.game.turn_ends) > n_before and heard(app), TURN_S, what)
    return app.game.turn_ends[-1]


def test_play_save_restart_load(tmp_path: Path) -> None:
    endpoint = free_endpoint()
    app = make_app(endpoint, tmp_path)
    g = app.game
    try:
        # --- no engine at the endpoint: the demo starts one and shows its progress
        step_until(app, lambda: app.state == "loading", 30, "spawning the engine")
        assert app.proc is not None and app.proc.exit_code is None
        step_until(app, lambda: app.state == "playing", ENGINE_START_S, "engine start-up")
        assert app.proc.ready and len(app.proc.steps) >= 3 and all(s.done for s in app.proc.steps)
        assert {c["id"] for c in g.hello["characters"]} >= {"bram", "marta", "aldric"}
        assert g.hello.get("stt") and g.hello.get("audio_out")
        step_until(app, lambda: g.quest.beats.get("bram") == "bram_hammer_stolen", 60, "quest log from the engine")

        # --- walk to Bram and press E: the greeting plays with moving lips
        assert g.walk_to_npc("bram")
        step_until(app, lambda: not g.player.path, 30, "walking to Bram")
        assert g.nearest_npc() is not None and g.nearest_npc().id == "bram"
        key(pygame.K_e)
        step_until(app, lambda: g.conv is not None and g.conv.ready, 60, "opening the conversation")
        greeting = wait_turn(app, 0, "greeting")
        assert greeting["status"] in ("ok", "degraded") and greeting["audio_seconds"] > 0.3
        samples = [s for s in g.mouth_samples if s[1] == "bram"]
        assert samples, "no frame ever drew Bram's mouth from a playing chunk"
        shapes = {s[2] for s in samples}
        assert len(shapes - {Mouth.CLOSED}) >= 2, f"the mouth barely moved during the greeting: {shapes}"
        changes = sum(1 for a, b in itertools.pairwise(samples) if a[2] != b[2])
        assert changes >= 4
        times = [s[0] for s in samples]
        assert times == sorted(times)
        # Lips came from viseme cues (not the loudness fallback): Kokoro sends them with each chunk.
        assert g.viseme_chunks >= 1

        # --- a typed line that the story understands: Bram's quest starts (one beat on)
        n = len(g.turn_ends)
        key(pygame.K_t)
        app.step(0.0)
        assert g.conv.typing
        type_text("I can help you find it, leave it to me")
        key(pygame.K_RETURN)
        reply = wait_turn(app, n, "reply to the typed line")
        assert reply["status"] in ("ok", "degraded")
        assert g.quest.beats["bram"] == "bram_waiting"
        assert g.quest.flags.get("quest_started") is True
        assert any(e.get("kind") == "emit_event" and e.get("name") == "quest.started" for e in g.story_log)
        assert g.quest.title == "The Smith's Stolen Hammer"
        assert g.conv.log[-2].speaker == "player" and g.conv.log[-2].text.startswith("I can help")

        # --- typing over Bram while he talks cuts him off, and the new line gets its own reply
        n = len(g.turn_ends)
        g.say("Tell me about your forge and your work, in detail.")
        step_until(app, lambda: app.audio.current() is not None and app.audio.current()[0].character == "bram",
                   TURN_S, "Bram starting to answer")
        cut_turn = app.audio.current()[0].turn
        key(pygame.K_t)
        type_text("W")
        app.step(0.0)
        assert not app.audio.busy("bram"), "typing did not stop Bram's voice"
        assert ("bram", cut_turn) in g.dropped
        type_text("ait, where should I look?")
        key(pygame.K_RETURN)
        step_until(app, lambda: any(e["turn"] > cut_turn for e in g.turn_ends[n:]) and heard(app), TURN_S, "reply after barge-in")
        assert not any(s[3][1] == cut_turn for s in g.mouth_samples if s[0] > time.monotonic() - 1.0)
        answered = [e for e in g.turn_ends[n:] if e["turn"] > cut_turn]
        assert answered[-1]["status"] in ("ok", "degraded")
        # The log: Bram's cut-off line (what was heard of it), the player's interruption, the new reply.
        assert [ln.speaker for ln in g.conv.log[-3:]] == ["bram", "player", "bram"]
        assert g.conv.log[-3].note == "interrupted" and g.conv.log[-2].text.startswith("Wait, where")

        # --- a spoken line from a WAV file, fed at real-time pace like a microphone
        n = len(g.turn_ends)
        t0 = time.monotonic()
        g.send_wav(WAV)
        spoken = wait_turn(app, n, "reply to the WAV line")
        assert time.monotonic() - t0 > 4.0  # the 4.4 s clip really took its time to send
        voice_start = [m for m in g.conv.log if m.speaker == "player"][-1]
        assert voice_start.note == "spoken" and len(voice_start.text.split()) >= 4, voice_start
        assert spoken["status"] in ("ok", "degraded") and spoken.get("timings", {}).get("stt_final") is not None

        # --- F5: the game's save file holds the position, inventory and the engine's blob
        saved_pos = (g.player.x, g.player.y)
        g.inventory.append("lucky_coin")  # something only the game knows about
        key(pygame.K_F5)
        step_until(app, lambda: g.pending_save is None and (tmp_path / "save.json").exists(), 30, "saving")
        data = json.loads((tmp_path / "save.json").read_text())
        assert data["player"]["x"] == saved_pos[0] and data["inventory"] == ["lucky_coin"]
        assert len(data["engine"]["blob"]) > 20 and data["quest"]["beats"]["bram"] == "bram_waiting"

        # --- the story moves on after the save: the hammer is found (a game event)
        g.send_event("item.picked_up", {"item": "hammer"}, character="bram")
        step_until(app, lambda: g.quest.beats.get("bram") == "bram_hammer_back", 30, "hammer found")
        g.inventory.clear()
    finally:
        app.close()
    # Quitting stops the engine the demo started (SIGINT: it saves and exits cleanly).
    assert app.proc is None and app.engine_exit_code == 0

    # --- a new game: new client, new engine process, same engine data dir
    app2 = make_app(endpoint, tmp_path)
    g2 = app2.game
    try:
        step_until(app2, lambda: app2.state == "playing", ENGINE_START_S, "second engine start-up")
        # The engine kept the later state on disk...
        step_until(app2, lambda: g2.quest.beats.get("bram") == "bram_hammer_back", 60, "quest log after restart")
        assert g2.inventory == []
        # ...and F9 brings back the save: quest, position, inventory.
        key(pygame.K_F9)
        step_until(app2, lambda: g2.pending_load is None and g2.quest.beats.get("bram") == "bram_waiting", 60, "loading")
        assert (g2.player.x, g2.player.y) == saved_pos
        assert g2.inventory == ["lucky_coin"]
        assert g2.quest.flags.get("quest_started") is True
        assert not any(e.get("request_type") == "state.load" for e in g2.errors)
        # Bram remembers talking with Tess (his history came back with the save).
        g2.talk_to("bram")
        step_until(app2, lambda: g2.conv is not None and g2.conv.ready, 60, "reopening Bram")
        assert g2.conv.resumed
    finally:
        app2.close()
