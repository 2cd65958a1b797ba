"""``--headless-script FILE``: play the game from a list of commands, without a window.

One command per line (``#`` starts a comment). Each runs in real time, frame by frame,
exactly as if a player did it, and fails the run (exit code 1) if it times out:

    wait_ready [seconds]          until connected to the engine (spawning it if needed)
    walk bram | 13,4 | hammer     walk to a character, a tile, or an item on the ground
    talk [character]              open a conversation (the greeting plays); without a name, E:
                                  everyone in reach, so two or more open a scene
    place aldric forge_yard       put a character on a spot (world.SPOTS) or a tile x,y at once
    wait_at bram kettle [seconds] until a character stands on a spot (world.SPOTS) or a tile x,y
    face bram                     turn the player towards a character (a scene's facing)
    expect_scene bram marta       fail unless the conversation is a scene of exactly these
    wait_banter [seconds]         until the banter that is playing has ended and been heard
    say I can help you find it    type a line and wait for the whole reply to be heard
    say_nowait Hello there        type a line and go on at once
    wait_speaking [who] [seconds] until a voice (or that character's) is playing (screenshots mid-line)
    wav path/to/line.wav          speak a WAV file and wait for the reply
    wait_reply [seconds]          wait until the NPC has finished speaking
    wait SECONDS
    pickup | give                 E on what is at your feet / G to the character
    event item.picked_up {"item": "hammer"}
    save | load                   F5 / F9, waiting for the engine's answer
    leave                         end the conversation
    screenshot docs/screenshots/village.png
    expect_beat bram bram_waiting fail unless the quest log shows that beat
    quit
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pygame

from demo_game import world as W
from demo_game.audio_out import AudioOut
from demo_game.game import Game

log = logging.getLogger(__name__)


class ScriptHost(Protocol):
    """What the script runner needs from the app (``demo_game.app.App`` has all of it).

    The runner drives the app frame by frame through ``step`` and ``tick``, reads the
    game, the voice output and the screen, watches for the error screen, and ends the
    run by clearing ``running``. Depending on this rather than on ``App`` keeps
    ``script`` below ``app`` in the import graph.
    """

    running: bool

    @property
    def game(self) -> Game: ...

    @property
    def audio(self) -> AudioOut: ...

    @property
    def screen(self) -> pygame.Surface: ...

    @property
    def state(self) -> str: ...

    @property
    def error_title(self) -> str: ...

    @property
    def error_lines(self) -> list[str]: ...

    def step(self, dt: float) -> None: ...

    def tick(self) -> float: ...


class ScriptError(Exception):
    pass


@dataclass
class Command:
    line: int
    name: str
    args: list[str]
    raw: str


COMMANDS = {
    "wait_ready", "say_nowait", "wait_speaking", "walk", "talk", "say", "wav", "wait_reply", "wait", "pickup", "give", "event",
    "save", "load", "leave", "screenshot", "expect_beat", "quit", "place", "wait_at", "face", "expect_scene",
    "wait_banter",
}


def load_script(path: Path) -> list[Command]:
    out = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        name, _, rest = text.partition(" ")
        if name not in COMMANDS:
            raise ValueError(f"{path}:{n}: unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
        args = [rest.strip()] if name in ("say", "say_nowait", "event") else shlex.split(rest)
        out.append(Command(n, name, [a for a in args if a], text))
    return out


def until(app: ScriptHost, pred: Callable[[], bool], timeout: float, what: str, fail_on_error: bool = True) -> Iterator[None]:
    """Yield frames until ``pred`` holds; raise ScriptError after ``timeout`` seconds."""
    t0 = time.monotonic()
    while not pred():
        if fail_on_error and app.state == "error":
            raise ScriptError(f"{what}: {app.error_title}: {' '.join(app.error_lines)}")
        if time.monotonic() - t0 > timeout:
            raise ScriptError(f"{what}: gave up after {timeout:.0f} s")
        yield


def reply_heard(app: ScriptHost) -> bool:
    conv = app.game.conv
    if conv is None:
        raise ScriptError("the conversation ended before the reply was heard")
    return conv is not None and conv.ready and conv.turn_done and not conv.thinking and not app.audio.busy()


def run_command(app: ScriptHost, cmd: Command) -> Iterator[None]:
    g = app.game
    a = cmd.args
    if cmd.name == "wait_ready":
        yield from until(app, lambda: app.state == "playing" and bool(g.npcs), float(a[0]) if a else 300, "wait_ready")
    elif cmd.name == "walk":
        target = a[0]
        if target in g.npcs:
            ok = g.walk_to_npc(target)
        elif "," in target:
            x, y = (int(v) for v in target.split(","))
            ok = g.walk_to((x, y))
        else:
            spot = next((i for i in g.world.items_on_ground() if i.item == target), None)
            ok = spot is not None and g.walk_to(spot.tile)
        if not ok:
            raise ScriptError(f"walk: no way to {target}")
        yield from until(app, lambda: not g.player.path, 60, f"walk {target}")
    elif cmd.name == "talk":
        if a:
            g.talk_to(a[0])
        else:
            g.interact()
        yield from until(app, lambda: g.conv is not None and g.conv.ready, 30, "talk")
        yield from until(app, lambda: reply_heard(app), 120, "greeting")
    elif cmd.name == "say":
        g.say(a[0])
        yield from until(app, lambda: reply_heard(app), 180, f"say {a[0]!r}")
    elif cmd.name == "say_nowait":
        g.say(a[0])
        yield
    elif cmd.name == "wait_speaking":
        who = a.pop(0) if a and a[0] in g.npcs else None

        def speaking() -> bool:
            now = app.audio.current()
            return now is not None and (who is None or now[0].character == who)

        yield from until(app, speaking, float(a[0]) if a else 120, "wait_speaking")
    elif cmd.name == "wav":
        g.send_wav(Path(a[0]))
        yield from until(app, lambda: reply_heard(app), 180, f"wav {a[0]}")
    elif cmd.name == "wait_reply":
        yield from until(app, lambda: reply_heard(app), float(a[0]) if a else 180, "wait_reply")
    elif cmd.name == "wait":
        t_end = time.monotonic() + float(a[0])
        yield from until(app, lambda: time.monotonic() >= t_end, float(a[0]) + 5, "wait", fail_on_error=False)
    elif cmd.name == "pickup":
        g.interact()
        yield
    elif cmd.name == "give":
        g.give()
        yield from until(app, lambda: g.pending_gift is None, 30, "give")
    elif cmd.name == "event":
        name, _, data = a[0].partition(" ")
        g.send_event(name, json.loads(data) if data.strip() else {}, character=g.conv.key if g.conv else None)
        n = len(g.story_log)
        yield from until(app, lambda: len(g.story_log) >= n, 10, "event")
    elif cmd.name == "save":
        g.save()
        yield from until(app, lambda: g.pending_save is None, 30, "save")
    elif cmd.name == "load":
        g.load()
        yield from until(app, lambda: g.pending_load is None, 30, "load")
    elif cmd.name == "leave":
        g.end_conversation()
        yield
    elif cmd.name == "screenshot":
        yield  # draw one more frame first
        Path(a[0]).parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(app.screen, a[0])
    elif cmd.name == "expect_beat":
        who, beat = a[0], a[1]
        yield from until(app, lambda: g.quest.beats.get(who) == beat, 10, f"expect_beat {who} {beat}")
    elif cmd.name == "place":
        g.place(a[0], _tile(a[1]))
        yield
    elif cmd.name == "wait_at":
        npc, tile = g.npcs[a[0]], _tile(a[1])
        yield from until(app, lambda: npc.tile == tile and not npc.path, float(a[2]) if len(a) > 2 else 120,
                         f"wait_at {a[0]} {a[1]}")
    elif cmd.name == "face":
        g.face(a[0])
        yield
    elif cmd.name == "expect_scene":
        want = set(a)
        yield from until(app, lambda: g.conv is not None and g.conv.scene and g.conv.ready and set(g.conv.members) == want,
                         30, f"expect_scene {' '.join(a)}")
    elif cmd.name == "wait_banter":
        # banter.end clears the conversation's banter; its last line may still be playing.
        yield from until(app, lambda: (g.conv is None or g.conv.banter is None) and not app.audio.busy(),
                         float(a[0]) if a else 300, "wait_banter")
    elif cmd.name == "quit":
        app.running = False
        yield


def _tile(where: str) -> W.Tile:
    """A spot's name (world.SPOTS) or ``x,y``."""
    if where in W.SPOTS:
        return W.SPOTS[where]
    x, y = (int(v) for v in where.split(","))
    return (x, y)


def run_script(app: ScriptHost, commands: list[Command]) -> int:
    """Run the commands at the app's frame rate; 0 when all succeeded, 1 at the first failure."""
    dt = 0.0
    for cmd in commands:
        log.info("script:%d: %s", cmd.line, cmd.raw)
        steps = run_command(app, cmd)
        try:
            while True:
                app.step(min(dt, 0.1))
                dt = app.tick()
                if not app.running:  # quit mid-command: the window closed, or Ctrl-C
                    break
                next(steps)
        except StopIteration:
            pass
        except ScriptError as exc:
            log.error("script:%d: %s", cmd.line, exc)
            return 1
        if not app.running:
            break
    return 0
