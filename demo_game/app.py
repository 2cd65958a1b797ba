"""``python -m demo_game``: find or start the engine, show its loading progress, then play.

Screens: ``connecting`` (is an engine already answering?), ``loading`` (we started one and
show its start-up log), ``error`` (nothing reachable; R retries), ``playing``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pygame

from demo_game.audio_out import AudioOut
from demo_game.engine_proc import EngineProcess
from demo_game.game import Game, GameOptions, player_id
from demo_game.hud import CONV_H, Hud
from demo_game.net import Net, NetMsg
from demo_game.render import SceneRenderer
from demo_game.script import load_script, run_script
from demo_game.world import TILE
from npc_engine.config import DEFAULT_ENDPOINT

EPILOG = """\
controls: arrows/WASD (or click) walk, E talk or pick up, T/Enter type, V hold to speak, G give,
          F5 save, F9 load, J quest log, F1 help, Esc leave/quit

examples:
  python -m demo_game                              start (and spawn the engine if none is running)
  python -m demo_game --no-spawn --endpoint tcp://127.0.0.1:5555
  python -m demo_game --say tests/fixtures/speech/kokoro_bm_george_00.wav
  python -m demo_game --engine-arg=--tts=espeak    pass options to the spawned `npc_engine serve`
  python -m demo_game --headless-script demo.txt   run a scripted session without a window

With no microphone (or no PortAudio library) the game says so once and you type instead.
"""

log = logging.getLogger("demo_game")
SIZE = (960, 640)


def default_save_path(player: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "npc-engine-demo" / f"oakhollow-{player_id(player)}.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m demo_game",
        description="Oakhollow: a small village whose people talk back, played through the npc-engine sidecar.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"the engine's ZeroMQ endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--no-spawn", action="store_true", help="never start an engine; only connect to a running one")
    p.add_argument("--engine-data-dir", type=Path, help="--data-dir for a spawned engine (its SQLite state and audio cache)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for a spawned `npc_engine serve` (repeatable), e.g. --engine-arg=--tts=espeak")
    p.add_argument("--player", default="Traveller", help="your name; NPCs use it and it keys your save (default Traveller)")
    p.add_argument("--save", type=Path, help="save file for F5/F9 (default ~/.local/share/npc-engine-demo/oakhollow-<player>.json)")
    p.add_argument("--say", type=Path, metavar="FILE.wav", help="a recorded line to speak on the first conversation instead of the mic")
    p.add_argument("--text-only", action="store_true", help="no voice: subtitles only (the engine skips speech synthesis)")
    p.add_argument("--no-mic", action="store_true", help="do not use the microphone")
    p.add_argument("--no-patrols", action="store_true",
                   help="everyone stays at their post (no rounds: the captain never calls at the forge)")
    p.add_argument("--headless-script", type=Path, metavar="FILE",
                   help="run the commands in FILE without a window (see demo_game/script.py), then exit")
    p.add_argument("--fps", type=int, default=60, help="frame rate cap (default 60)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


class App:
    def __init__(self, args: argparse.Namespace, clock: Callable[[], float] = time.monotonic) -> None:
        self.args = args
        self.clock = clock
        pygame.mixer.pre_init(frequency=24_000, size=-16, channels=1, buffer=1024)
        pygame.init()
        pygame.display.set_caption("Oakhollow — npc-engine demo")
        self.screen = pygame.display.set_mode(SIZE)
        pygame.key.stop_text_input()  # on only while the text box is open
        pygame.key.set_repeat(350, 35)
        self.net = Net()
        self.audio = AudioOut(enabled=not args.text_only, clock=clock)
        opts = GameOptions(
            player_name=args.player,
            text_only=args.text_only,
            say_wav=args.say,
            save_path=args.save or default_save_path(args.player),
            microphone=not args.no_mic,
            patrols=not args.no_patrols,
        )
        self.game = Game(self.net, self.audio, opts, clock=clock)
        self.scene = SceneRenderer(SIZE)
        self.hud = Hud(SIZE)
        self.pygame_clock = pygame.time.Clock()
        self.state = "connecting"
        self.status = "Looking for the npc-engine ..."
        self.error_title = ""
        self.error_lines: list[str] = []
        self.proc: EngineProcess | None = None  # set once we started our own engine
        self.connect_sent = False
        self.running = True
        self.closing = False
        self.quit_armed_until = 0.0
        self.frames = 0
        self.engine_exit_code: int | None = None  # of the engine we started, once stopped
        self._connect(timeout=1.5)

    # ------------------------------------------------------------------ connection

    def _connect(self, timeout: float) -> None:
        self.connect_sent = True
        self.net.connect(self.args.endpoint, timeout=timeout)

    def _spawn(self) -> None:
        proc = EngineProcess(self.args.endpoint, self.args.engine_data_dir, list(self.args.engine_arg))
        log.info("starting the engine: %s", " ".join(proc.command()))
        try:
            proc.start()
        except OSError as exc:
            self._fail("Could not start the engine", [f"{' '.join(proc.command()[:4])} failed: {exc}."])
            return
        self.proc = proc
        log.info("engine pid %s", proc.pid)
        self.connect_sent = False
        self.state = "loading"
        self.status = "Starting the npc-engine sidecar ..."

    def _fail(self, title: str, lines: list[str]) -> None:
        self.state = "error"
        self.error_title = title
        self.error_lines = lines

    def retry(self) -> None:
        # The old connection's sessions are gone with it; start the conversation afresh.
        self.game.conv = None
        self.audio.stop()
        proc = self.proc
        if proc is not None and proc.exit_code is not None:
            proc.stop()
            self.proc = None
        self.state = "connecting"
        self.status = "Looking for the npc-engine ..."
        self._connect(timeout=1.5)

    def on_msg(self, msg: NetMsg) -> None:
        if msg.type == "net.connected":
            self.state = "playing"
            self.game.on_connected(msg.data)
            log.info("connected: %s", msg.data.get("engine"))
        elif msg.type == "net.unavailable":
            proc = self.proc
            if proc is None and not self.args.no_spawn and self.state == "connecting":
                self._spawn()
            elif proc is not None and proc.exit_code is None:
                self._fail("The engine does not answer", [
                    f"The engine we started says it is ready, but nothing answers at {self.args.endpoint}.",
                    proc.failure(),
                ])
            else:
                self._fail("No npc-engine to talk to", [
                    f"Nothing answered at {self.args.endpoint}.",
                    "Start one in another terminal with `npc-engine serve` (or `make serve`), then press R."
                    if self.args.no_spawn else "Starting one failed; see the message above the game's log.",
                ])
        elif msg.type == "net.lost":
            proc = self.proc
            lines = [f"The engine at {self.args.endpoint} stopped answering ({msg.data.get('reason')})."]
            if proc is not None and proc.exit_code is not None:
                lines.append(f"It exited with code {proc.exit_code}: {proc.failure()}")
            self._fail("Lost the engine", [*lines, "Press R to reconnect (your last F5 save is safe)."])
        else:
            self.game.on_net(msg)

    def _poll_engine(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for line in proc.poll():
            log.debug("engine: %s", line)
        if proc.exit_code is not None and self.state in ("loading", "playing"):
            self._fail("The engine stopped", [
                f"`python -m npc_engine serve` exited with code {proc.exit_code}.",
                proc.failure(),
                "Press R to start it again.",
            ])
        elif self.state == "loading" and proc.ready and not self.connect_sent:
            self.status = "Connecting ..."
            self._connect(timeout=10.0)

    # ------------------------------------------------------------------ frame

    def handle(self, ev: pygame.event.Event) -> None:
        if ev.type == pygame.QUIT:
            self.running = False
            return
        if self.state == "error" and ev.type == pygame.KEYDOWN:
            if ev.key == pygame.K_r:
                self.retry()
            elif ev.key in (pygame.K_ESCAPE, pygame.K_q):
                self.running = False
            return
        if self.state != "playing":
            if ev.type == pygame.KEYDOWN and ev.key == pygame.K_ESCAPE:
                self.running = False
            return
        if self.game.handle_event(ev):
            return
        if ev.type == pygame.KEYDOWN and ev.key == pygame.K_ESCAPE:
            now = self.clock()
            if now < self.quit_armed_until:
                self.running = False
            else:
                self.quit_armed_until = now + 2.5
                self.game.toast("Press Esc again to quit.")
        elif ev.type == pygame.MOUSEBUTTONDOWN and ev.button == 1:
            # Click to walk there (screen -> world through the camera).
            cam = self.scene.camera
            tile = (int((ev.pos[0] + cam.x) // TILE), int((ev.pos[1] + cam.y) // TILE))
            if not self.game.walk_to(tile):
                self.game.toast("You can't get there from here.")
        elif ev.type == pygame.KEYDOWN and ev.key == pygame.K_F12:
            path = Path(f"oakhollow-{int(time.time())}.png")
            pygame.image.save(self.screen, str(path))
            self.game.toast(f"Screenshot saved to {path}")

    def step(self, dt: float) -> None:
        for ev in pygame.event.get():
            self.handle(ev)
        for msg in self.net.drain():
            self.on_msg(msg)
        self._poll_engine()
        now = self.clock()
        if self.state == "playing":
            self.game.read_movement(pygame.key.get_pressed())
            self.game.update(dt)
        self.draw(now, dt)
        self.frames += 1

    def draw(self, now: float, dt: float) -> None:
        shift = CONV_H / 2 if self.game.conv is not None else 0.0
        self.scene.draw(self.screen, self.game, now, dt, view_shift=shift)
        if self.state == "playing":
            self.hud.draw(self.screen, self.game, now, self.pygame_clock.get_fps())
        elif self.state == "error":
            self.hud.error(self.screen, self.error_title, self.error_lines, "R  retry        Esc  quit")
        else:
            self.hud.loading(self.screen, self.proc, self.status, now)
        pygame.display.flip()

    def tick(self) -> float:
        return self.pygame_clock.tick(self.args.fps) / 1000.0

    def run(self) -> int:
        dt = 0.0
        while self.running:
            self.step(min(dt, 0.1))
            dt = self.tick()
        return 0

    def close(self) -> None:
        """Leave politely: close sessions, stop the engine we started, shut pygame.

        A Ctrl-C in here (KeyboardInterrupt out of a wait) still stops the engine."""
        self.closing = True
        try:
            self.net.shutdown()
        finally:
            try:
                self._stop_engine()
            finally:
                pygame.quit()

    def _stop_engine(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        log.info("stopping the engine we started")
        try:  # the engine finishes its current model call first: say why the window waits
            self.hud.error(self.screen, "Goodbye", ["Stopping the engine we started (it saves and unloads) ..."], "")
            pygame.display.flip()
        except pygame.error:
            pass
        self.engine_exit_code = proc.stop()
        log.info("engine exited with code %s", self.engine_exit_code)


class QuitOnSignal:
    """Ctrl-C (SIGINT) and SIGTERM end the game as Esc does: the loop (or the script) stops at
    the next frame, then ``App.close`` stops the engine we started. Another signal while that
    is under way raises KeyboardInterrupt out of whatever waits, and the game leaves at once
    (the engine has its SIGINT by then, and its parent watch sees us go).

    Installed over SDL's own handlers (SDL turns SIGTERM into a QUIT event, which a headless
    script never reads) and over an inherited "ignore" (a game launched in the background by a
    script ignores SIGINT unless it says otherwise, and then nothing could stop it cleanly)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, app: App) -> None:
        self.app = app
        self.received: int | None = None
        self._before: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def __enter__(self) -> QuitOnSignal:
        for sig in self.SIGNALS:
            self._before[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None or self.app.closing:
            raise KeyboardInterrupt
        self.received = signum
        log.info("%s: quitting", signal.Signals(signum).name)
        self.app.running = False

    def exit_code(self, code: int) -> int:
        """128 + the signal's number (130 for Ctrl-C) when one ended the game, else ``code``."""
        return 128 + self.received if self.received is not None else code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.say is not None and not args.say.is_file():
        print(f"python -m demo_game: --say {args.say}: no such WAV file", file=sys.stderr)
        return 2
    if args.headless_script is not None:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        try:
            commands = load_script(args.headless_script)
        except (OSError, ValueError) as exc:
            print(f"python -m demo_game: --headless-script: {exc}", file=sys.stderr)
            return 2
    app = App(args)
    with QuitOnSignal(app) as quit_on_signal:
        try:
            code = run_script(app, commands) if args.headless_script is not None else app.run()
        except KeyboardInterrupt:  # a second signal, out of a wait
            code = 130
        try:
            app.close()
        except KeyboardInterrupt:
            code = 130
    return quit_on_signal.exit_code(code)
