"""Game state and rules: the player, the characters, conversations, the quest, save/load.

Everything the engine sends arrives here through :meth:`Game.on_net` (already off the
network thread); everything the player does becomes a call on :class:`~demo_game.net.Net`.
No drawing here (``render.py``) and no waiting: every method returns within a frame.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pygame

from demo_game import world as W
from demo_game.audio_in import Microphone, MicUnavailable, frames_of, load_wav_16k, probe_microphone
from demo_game.audio_out import AudioOut, PlayChunk
from demo_game.face import (
    FaceState,
    Look,
    Mouth,
    VisemeTrack,
    look_for,
    shape_for,
    shape_for_level,
    viseme_at,
)
from demo_game.net import Net, NetMsg

log = logging.getLogger(__name__)

PLAYER_SPEED = 120.0  # px/s
NPC_SPEED = 70.0
TALK_RANGE = 1.9 * W.TILE
LEAVE_RANGE = 4.0 * W.TILE
OVERHEAR_RANGE = 8.0 * W.TILE  # a banter you only listen to: walking on past it ends it
FACING_COS = 0.75  # the player faces someone within about 40 degrees of where they look
PICK_RANGE = 1.3 * W.TILE
SAVE_VERSION = 1


@dataclass
class Actor:
    id: str
    name: str
    x: float
    y: float  # feet position, pixels
    look: Look
    face: FaceState = field(default_factory=FaceState)
    path: list[W.Tile] = field(default_factory=list)
    facing: tuple[int, int] = (0, 1)
    walk: float = 0.0  # walk-cycle phase; advances only while moving
    moving: bool = False
    bubble: str | None = None  # a line shown over the head (a distant or silent NPC)
    bubble_until: float = 0.0
    icon: str | None = None  # emotion/gesture/action icon over the head
    icon_until: float = 0.0
    gift: str | None = None  # an item rising over the head (item.give)
    gift_at: float = -1e9
    talk_until: float = 0.0  # text-only mode: flap the mouth until then
    pending_path: list[W.Tile] = field(default_factory=list)  # a walk that waits until they finish talking
    errand: W.Tile | None = None  # a spot to walk to once the player is not talking with them
    posted: bool = False  # away from home for a story beat (world.BEAT_POSTS)

    @property
    def tile(self) -> W.Tile:
        return W.tile_of(self.x, self.y - 4)


@dataclass
class LogLine:
    speaker: str  # a character id, or "player"
    text: str
    note: str = ""


@dataclass
class Conversation:
    """One conversation of the player: with one character (a session) or several (a scene).

    ``character`` is whom the panel shows: the session's character, or in a scene whoever
    spoke last (else the first listed). ``key`` names the conversation to :class:`Net`.
    """

    character: str
    members: list[str] = field(default_factory=list)  # everyone in it; [character] one-to-one
    key: str = ""  # Net's key: the character, or the scene's session id
    speaker: str | None = None  # who speaks in the current turn
    live: dict[int, str] = field(default_factory=dict)  # turns started and not ended -> speaker
    facing: str | None = None  # a scene: whom the engine was last told the player faces
    banter: W.Banter | None = None  # a banter to play (asked for once the scene is open)
    overheard: bool = False  # the player only listens (a banter) and has not spoken yet
    ready: bool = False  # session.opened arrived
    resumed: bool = False  # the engine remembers earlier conversations with this player
    turn: int | None = None  # the NPC turn in progress
    turn_done: bool = True
    greeted: bool = False
    thinking: bool = False  # waiting for the first word of a reply
    texts: dict[int, str] = field(default_factory=dict)  # reply.text per turn (text-only subtitles)
    log: list[LogLine] = field(default_factory=list)
    partial: str = ""  # what the recognizer has heard so far
    typing: bool = False
    draft: str = ""
    listening: bool = False
    last_timings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.members = self.members or [self.character]
        self.key = self.key or self.character

    @property
    def scene(self) -> bool:
        return self.key not in self.members


@dataclass
class Quest:
    title: str = ""
    started: list[str] = field(default_factory=list)
    beats: dict[str, str] = field(default_factory=dict)  # character -> beat id
    flags: dict[str, Any] = field(default_factory=dict)
    journal: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if not self.journal or self.journal[-1] != text:
            self.journal.append(text)
            del self.journal[:-40]


@dataclass
class Toast:
    text: str
    until: float
    kind: str = "info"  # info, good, warn, error


@dataclass
class Patrol:
    """Where a character is in its round (world.PATROLS)."""

    stops: tuple[tuple[str, float], ...]
    stop: int = 0
    until: float = 0.0  # stays at the current stop until then
    walking: bool = False


@dataclass
class GameOptions:
    player_name: str = "Traveller"
    text_only: bool = False
    say_wav: Path | None = None
    save_path: Path = Path("oakhollow-save.json")
    microphone: bool = True
    patrols: bool = True  # characters walk their rounds (world.PATROLS); off: all stay at their posts


def pretty(ident: str, drop_prefix: str | None = None) -> str:
    """``bram_hammer_stolen`` -> ``Hammer stolen`` (a story id made readable)."""
    if drop_prefix and ident.startswith(drop_prefix + "_"):
        ident = ident[len(drop_prefix) + 1 :]
    words = re.sub(r"[_.]+", " ", ident).strip()
    return words[:1].upper() + words[1:]


def player_id(name: str) -> str:
    slug = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return slug[:64] or "player"


class Game:
    def __init__(self, net: Net, audio: AudioOut, opts: GameOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.net = net
        self.audio = audio
        self.opts = opts
        self.clock = clock
        self.world = W.World()
        sx, sy = W.tile_center(W.PLAYER_START)
        self.player = Actor("player", opts.player_name, sx, sy + 10, look_for("player"))
        self.player_id = player_id(opts.player_name)
        self.npcs: dict[str, Actor] = {}
        self.inventory: list[str] = []
        self.gold = 0
        self.quest = Quest()
        self.conv: Conversation | None = None
        self.toasts: list[Toast] = []
        self.notices: dict[str, str] = {}  # shown once as a toast, then kept on the status line
        self.area: W.Area | None = None
        self.area_at = -1e9
        self.stt = True
        self.hello: dict[str, Any] = {}
        self.dropped: set[tuple[str, int]] = set()  # (character, turn) we cancelled
        self.door_opened_at: dict[str, float] = {}
        self.music: str | None = None
        self.move = (0.0, 0.0)  # input direction this frame
        self.mic = Microphone()
        self.mic_problem: str | None = probe_microphone() if opts.microphone else "microphone disabled"
        self.say_wav_pending: Path | None = opts.say_wav
        self.pending_save: dict[str, Any] | None = None
        self.pending_load: dict[str, Any] | None = None
        self.pending_gift: tuple[str, str] | None = None  # (item, character) until event.ok says
        self.swallow_text: str | None = None  # the T that opened the text box is not part of the line
        self.show_help = False
        self.show_quest = True
        self.show_debug = False
        # For tests and the debug overlay: what happened, in order.
        self.events_sent: list[tuple[str, dict[str, Any]]] = []
        self.turn_ends: list[dict[str, Any]] = []  # with the character who spoke and the turn's source
        self.turn_sources: dict[tuple[str, int], str] = {}  # turns under way: (speaker, turn) -> source
        self.story_log: list[dict[str, Any]] = []
        self.mouth_samples: deque[tuple[float, str, Mouth, tuple[str, int, int]]] = deque(maxlen=4000)
        self.errors: list[dict[str, Any]] = []
        self.viseme_chunks = 0  # audio chunks that came with viseme cues
        # An NPC line joins the conversation log once it has been heard, not when the engine
        # has finished sending it (it sends faster than it is spoken).
        self.unheard: list[tuple[str, int, LogLine]] = []
        self.heard: dict[tuple[str, int], list[str]] = {}  # chunk texts that have started playing
        self.patrols: dict[str, Patrol] = {}
        self.banter_played: set[str] = set()  # areas whose banter played during this visit
        self.banters: list[dict[str, Any]] = []  # banter.end messages, for tests and the overlay
        self.beats_asked_at = -math.inf  # when the quest log last asked the engine for every beat
        self.beats_missing = False  # the last ask failed: opening the quest log asks again
        self.beat_moved_at: dict[str, float] = {}  # character -> when a story message moved its beat

    # ------------------------------------------------------------------ set-up

    def on_connected(self, hello: dict[str, Any]) -> None:
        self.hello = hello
        self.stt = bool(hello.get("stt"))
        spare = iter(W.SPARE_SPOTS)
        for c in hello.get("characters", []):
            cid, name = c["id"], c.get("name", c["id"])
            if cid in self.npcs:
                self.npcs[cid].name = name
                continue
            home = W.NPC_HOME.get(cid) or next(spare, W.PLAYER_START)
            x, y = W.tile_center(home)
            actor = Actor(cid, name, x, y + 10, look_for(cid))
            actor.face.blink_seed = sum(map(ord, cid))
            self.npcs[cid] = actor
            if self.opts.patrols and cid in W.PATROLS:
                stops = W.PATROLS[cid]
                self.patrols[cid] = Patrol(stops, until=self.clock() + stops[0][1])
        if not self.stt:
            self.notice("stt", "This engine runs without speech recognition (stt off): type your lines with T.")
        elif self.mic_problem and not self.opts.text_only:
            extra = " --say is set: V sends that file instead." if self.say_wav_pending else ""
            self.notice("mic", self.mic_problem[:1].upper() + self.mic_problem[1:] + "." + extra)
        if self.audio.problem:
            self.notice("sound", self.audio.problem[:1].upper() + self.audio.problem[1:] + ".")
        self.ask_beats()

    def ask_beats(self) -> None:
        """Ask the engine for every character's beat, for the quest log (``net.beats``)."""
        self.beats_asked_at = self.clock()
        self.beats_missing = False
        self.net.query_beats(self.player_id)

    def session_vars(self) -> dict[str, Any]:
        return {"player_name": self.opts.player_name}

    # ------------------------------------------------------------------ messages

    def toast(self, text: str, kind: str = "info", seconds: float = 4.0) -> None:
        self.toasts.append(Toast(text, self.clock() + seconds, kind))
        del self.toasts[:-5]

    def notice(self, key: str, text: str) -> None:
        """Say something once (a missing microphone), then keep it quietly on the status line."""
        if key not in self.notices:
            self.notices[key] = text
            self.toast(text, "warn", 7.0)

    # ------------------------------------------------------------------ input

    def handle_event(self, ev: pygame.event.Event) -> bool:
        """One pygame event; returns True if the game used it."""
        conv = self.conv
        if ev.type == pygame.TEXTINPUT and conv is not None and conv.typing:
            if self.swallow_text is not None and ev.text.lower() == self.swallow_text:
                self.swallow_text = None
                return True
            if not conv.draft:
                self.interrupt()  # typing over the NPC cuts it off, like speaking does
            conv.draft = (conv.draft + ev.text)[:300]
            return True
        if ev.type == pygame.KEYDOWN:
            if conv is not None and conv.typing:
                if ev.key in (pygame.K_RETURN, pygame.K_KP_ENTER):
                    self.submit_typing()
                elif ev.key == pygame.K_ESCAPE:
                    self.cancel_typing()
                elif ev.key == pygame.K_BACKSPACE:
                    conv.draft = conv.draft[:-1]
                return True
            key = ev.key
            if key in (pygame.K_e, pygame.K_RETURN, pygame.K_KP_ENTER):
                if conv is not None and conv.ready and key != pygame.K_e:
                    self.open_typing()
                else:
                    self.interact()
            elif key == pygame.K_t:
                self.open_typing()
                self.swallow_text = "t"
            elif key == pygame.K_v:
                self.ptt_down()
            elif key == pygame.K_g:
                self.give()
            elif key == pygame.K_ESCAPE:
                if self.show_help:
                    self.show_help = False
                elif conv is not None:
                    self.end_conversation()
                else:
                    return False  # the app decides (quit prompt)
            elif key in (pygame.K_F1, pygame.K_h):
                self.show_help = not self.show_help
            elif key in (pygame.K_j, pygame.K_TAB):
                if self.beats_missing:  # the last ask failed (a busy or restarted engine): again
                    self.show_quest = True
                    self.ask_beats()
                else:
                    self.show_quest = not self.show_quest
            elif key == pygame.K_F3:
                self.show_debug = not self.show_debug
            elif key == pygame.K_F5:
                self.save()
            elif key == pygame.K_F9:
                self.load()
            else:
                return False
            return True
        if ev.type == pygame.KEYUP and ev.key == pygame.K_v:
            self.ptt_up()
            return True
        return False

    def read_movement(self, pressed: Any) -> None:
        if self.conv is not None and self.conv.typing:
            self.move = (0.0, 0.0)
            return
        dx = (pressed[pygame.K_RIGHT] or pressed[pygame.K_d]) - (pressed[pygame.K_LEFT] or pressed[pygame.K_a])
        dy = (pressed[pygame.K_DOWN] or pressed[pygame.K_s]) - (pressed[pygame.K_UP] or pressed[pygame.K_w])
        self.move = (float(dx), float(dy))
        if dx or dy:
            self.player.path.clear()  # keys take over from click/auto walking

    # ------------------------------------------------------------------ actions

    def nearest_npc(self, within: float = TALK_RANGE) -> Actor | None:
        best = min(self.npcs.values(), key=self._dist, default=None)
        return best if best is not None and self._dist(best) <= within else None

    def group_in_reach(self) -> list[str]:
        """Everyone within talking range, whom the player faces first, then nearest first.
        Two or more make a scene: you talk to the group, not to one of them."""
        near = sorted((n for n in self.npcs.values() if self._dist(n) <= TALK_RANGE), key=self._dist)
        ids = [n.id for n in near]
        faced = self.faced(ids)
        return ([faced] + [i for i in ids if i != faced]) if faced is not None else ids

    def faced(self, ids: list[str]) -> str | None:
        """Which of these characters the player looks at (within ~40 degrees), if any."""
        fx, fy = self.player.facing
        norm = math.hypot(fx, fy)
        best, best_cos = None, FACING_COS
        for cid in ids:
            npc = self.npcs[cid]
            dx, dy = npc.x - self.player.x, npc.y - self.player.y
            dist = math.hypot(dx, dy)
            if norm == 0 or dist == 0:
                continue
            cos = (dx * fx + dy * fy) / (dist * norm)
            if cos > best_cos:
                best, best_cos = cid, cos
        return best

    def nearest_item(self) -> W.ItemSpot | None:
        px, py = self.player.x, self.player.y
        for spot in self.world.items_on_ground():
            x, y = W.tile_center(spot.tile)
            if math.hypot(px - x, py - y) <= PICK_RANGE:
                return spot
        return None

    def _dist(self, a: Actor) -> float:
        return math.hypot(a.x - self.player.x, a.y - self.player.y)

    def interact(self) -> None:
        """E: pick up what is at your feet, else talk to whoever is in reach."""
        item = self.nearest_item()
        if item is not None:
            self.pick_up(item)
            return
        npc = self.nearest_npc()
        if npc is None:
            self.toast("Nobody is in reach. Walk up to someone and press E.")
            return
        if self.conv is not None and npc.id in self.conv.members:
            self.open_typing()
            return
        self.talk_to_group(self.group_in_reach())

    def talk_to_group(self, characters: list[str]) -> None:
        """A one-to-one conversation, or a scene when several are in reach."""
        if len(characters) >= 2:
            self.open_scene(characters)
        elif characters:
            self.talk_to(characters[0])

    def talk_to(self, character: str) -> None:
        if self.conv is not None:
            self.end_conversation()
        self.conv = Conversation(character)
        self.conv.thinking = True
        npc = self.npcs[character]
        npc.facing = _facing(npc, self.player)
        self.net.open_session(character, self.player_id, self.session_vars(), audio=not self.opts.text_only)

    def open_scene(self, characters: list[str], banter: W.Banter | None = None) -> None:
        """One conversation with several characters: the first listed greets (unless this is a
        banter the player walks in on) and answers a line that names nobody, until someone else
        has spoken or the player faces another."""
        if self.conv is not None:
            self.end_conversation()
        key = f"scene-{self.player_id}-{uuid.uuid4().hex[:8]}"
        faced = self.faced(characters)
        conv = Conversation(characters[0], members=list(characters), key=key, facing=faced, banter=banter)
        conv.overheard = banter is not None
        conv.thinking = banter is None  # the greeting is on its way
        self.conv = conv
        for cid in characters:
            self.npcs[cid].facing = _facing(self.npcs[cid], self.player)
        self.net.open_scene(key, list(characters), self.player_id, self.session_vars(), audio=not self.opts.text_only,
                            greet=banter is None, facing=faced)

    def end_conversation(self) -> None:
        conv, self.conv = self.conv, None
        if conv is None:
            return
        if conv.listening:
            self.ptt_up()
        self.interrupt_turn(conv)
        self.net.close_session(conv.key)

    def open_typing(self) -> None:
        conv = self.conv
        if conv is None:
            npc = self.nearest_npc()
            if npc is None:
                self.toast("Walk up to someone first (E talks).")
                return
            self.talk_to(npc.id)
            conv = self.conv
            assert conv is not None
        conv.typing = True
        conv.draft = ""
        pygame.key.start_text_input()

    def cancel_typing(self) -> None:
        if self.conv is not None:
            self.conv.typing = False
            self.conv.draft = ""
        pygame.key.stop_text_input()

    def submit_typing(self) -> None:
        conv = self.conv
        if conv is None:
            return
        text = conv.draft.strip()
        self.cancel_typing()
        if text:
            self.say(text)

    def say(self, text: str) -> None:
        """Send a typed line to the character we are talking to."""
        conv = self.conv
        if conv is None or not conv.ready:
            self.toast("The conversation is still opening; try again in a moment.")
            return
        self.interrupt()
        conv.log.append(LogLine("player", text))
        conv.thinking = True
        conv.turn_done = False
        conv.overheard = False
        self.net.say(conv.key, text)

    def interrupt(self) -> None:
        if self.conv is not None:
            self.interrupt_turn(self.conv)

    def interrupt_turn(self, conv: Conversation) -> None:
        """Barge-in: cancel the NPC's turn and stop its voice now (in a scene, everyone's: a
        banter has the next line queued behind the one playing)."""
        cut: dict[int, str] = dict(conv.live)
        for who in conv.members:
            for turn in self.audio.turns(who):
                cut.setdefault(turn, who)
        if conv.turn is not None and conv.speaker is not None and not conv.turn_done:
            cut.setdefault(conv.turn, conv.speaker)
        for turn, c in sorted(cut.items()):
            self.dropped.add((c, turn))
            # Tell the engine how much was heard: it usually sent the whole reply already.
            if turn == max(cut):  # the engine has one turn running; earlier ones are over there
                self.net.cancel(conv.key, turn, None if self.opts.text_only else self.audio.heard(c, turn))
            # The log keeps what the player heard before cutting in, in its place.
            heard = conv.texts.get(turn, "") if self.opts.text_only else " ".join(self.heard.get((c, turn), []))
            if heard.strip():
                conv.log.append(LogLine(c, heard.strip() + " …", "interrupted"))
            self.unheard = [u for u in self.unheard if (u[0], u[1]) != (c, turn)]
        conv.live.clear()
        for c in conv.members:
            self.audio.stop(c)
            npc = self.npcs.get(c)
            if npc is not None:
                npc.face.set_mouth(Mouth.CLOSED, 0.0)
                npc.talk_until = 0.0
        self._log_heard_lines()
        conv.turn_done = True

    def ptt_down(self) -> None:
        conv = self.conv
        if conv is None:
            self.toast("Walk up to someone and press E to talk first.")
            return
        if not conv.ready:
            return
        if not self.stt:
            self.notice("stt", "This engine runs without speech recognition (stt off): type your lines with T.")
            self.toast(self.notices["stt"], "warn")
            return
        if self.mic_problem is not None:
            if self.opts.say_wav is not None:
                self.send_wav(self.opts.say_wav)
                return
            self.notice("mic", self.mic_problem[:1].upper() + self.mic_problem[1:] + ".")
            return
        try:
            self.mic.start()
        except MicUnavailable as exc:
            self.mic_problem = str(exc)
            self.notice("mic", self.mic_problem)
            return
        self.interrupt()
        conv.listening = True
        conv.partial = ""

    def ptt_up(self) -> None:
        conv = self.conv
        if conv is None or not conv.listening:
            return
        conv.listening = False
        frames = self.mic.stop()
        if frames:
            self.net.audio_frames(conv.key, frames)
        self.net.audio_end(conv.key)
        conv.thinking = True
        conv.turn_done = False
        conv.overheard = False

    def send_wav(self, path: Path) -> None:
        """Speak a WAV file to the current character, at real-time pace (as the mic would)."""
        conv = self.conv
        if conv is None or not conv.ready:
            self.toast("Talk to someone first (E), then send the recording.")
            return
        if not self.stt:
            self.notice("stt", "This engine runs without speech recognition (stt off): type your lines with T.")
            return
        try:
            pcm = load_wav_16k(path)
        except ValueError as exc:
            self.toast(str(exc), "error")
            return
        self.interrupt()
        conv.partial = ""
        conv.log.append(LogLine("player", f"(speaking {Path(path).name} ...)", note="speaking"))
        conv.thinking = True
        conv.turn_done = False
        conv.overheard = False
        self.net.send_wav(conv.key, frames_of(pcm))

    def pick_up(self, spot: W.ItemSpot) -> None:
        self.world.picked.add(spot.item)
        self.inventory.append(spot.item)
        self.toast(f"Picked up: {W.ITEM_NAMES.get(spot.item, pretty(spot.item))}", "good")
        self.quest.note(f"Found {W.ITEM_NAMES.get(spot.item, pretty(spot.item))}.")
        self.send_event("item.picked_up", {"item": spot.item})

    def give(self) -> None:
        """G: hand your first item to the character you are talking to."""
        conv = self.conv
        if conv is None:
            self.toast("Talk to someone first, then press G to give them something.")
            return
        giftable = [i for i in self.inventory if i != "sword"] or self.inventory
        if not giftable:
            self.toast("You have nothing to give.")
            return
        item = giftable[0]
        self.inventory.remove(item)
        self.pending_gift = (item, conv.character)
        self.toast(f"You hand over {W.ITEM_NAMES.get(item, pretty(item))}.")
        self.send_event("item.given", {"item": item, "to": conv.character}, character=conv.key)

    def send_event(self, name: str, data: dict[str, Any], character: str | None = None) -> None:
        self.events_sent.append((name, data))
        self.net.event(name, data, self.player_id, character)

    def walk_to_npc(self, character: str) -> bool:
        """Auto-walk to stand in front of a character (scripts, tests)."""
        npc = self.npcs[character]
        tx, ty = npc.tile
        # Side by side reads best on screen; in front will do.
        spots = [(tx + 1, ty), (tx - 1, ty), (tx, ty + 1), (tx, ty - 1)]
        avoid = self._people()
        paths = [p for s in spots if (p := self.world.path(self.player.tile, s, avoid)) is not None]
        if not paths:
            return False
        best = min(paths, key=lambda p: len(p) + (4 if p[-1][1] != ty else 0))
        self.player.path = best[1:]
        return True

    def place(self, character: str, tile: W.Tile) -> None:
        """Put a character on a tile at once, off their round (scripts, tests, screenshots)."""
        npc = self.npcs[character]
        npc.x, npc.y = W.tile_center(tile)[0], W.tile_center(tile)[1] + 10
        npc.path.clear()
        npc.pending_path.clear()
        npc.errand = None
        self.patrols.pop(character, None)

    def face(self, character: str) -> None:
        """Turn the player towards a character (as a step towards them would)."""
        self.player.facing = _facing(self.player, self.npcs[character])

    def walk_to(self, target: W.Tile) -> bool:
        """Auto-walk (click-to-move, scripts and tests); False if there is no way there."""
        path = self.world.path(self.player.tile, target, self._people())
        if path is None:
            return False
        self.player.path = path[1:]
        return True

    def _people(self) -> frozenset[W.Tile]:
        return frozenset(n.tile for n in self.npcs.values())

    # ------------------------------------------------------------------ save / load

    def save(self) -> None:
        self.pending_save = self.snapshot()
        self.toast("Saving ...")
        self.net.save(self.player_id)

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SAVE_VERSION,
            "player": {"name": self.opts.player_name, "id": self.player_id, "x": self.player.x, "y": self.player.y},
            "inventory": list(self.inventory),
            "gold": self.gold,
            "world": {
                "open_doors": sorted(self.world.open_doors),
                "picked": sorted(self.world.picked),
                "npcs": {n.id: [n.x, n.y] for n in self.npcs.values()},
                "music": self.music,
            },
            "quest": {
                "title": self.quest.title, "started": self.quest.started, "beats": self.quest.beats,
                "flags": self.quest.flags, "journal": self.quest.journal,
            },
        }

    def load(self) -> None:
        path = self.opts.save_path
        try:
            data = json.loads(path.read_text())
            if data.get("version") != SAVE_VERSION:
                raise ValueError(f"save version {data.get('version')!r}, this game reads {SAVE_VERSION}")
            blob = base64.b64decode(data["engine"]["blob"], validate=True)
        except FileNotFoundError:
            self.toast(f"No saved game at {path} yet (F5 saves).", "warn")
            return
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            self.toast(f"The save file {path} is damaged ({exc}).", "error")
            return
        if data["player"].get("id") != self.player_id:
            self.toast(f"That save belongs to {data['player'].get('name')}; start with --player to load it.", "error")
            return
        if self.conv is not None:
            self.end_conversation()
        self.audio.stop()
        self.pending_load = data
        self.toast("Loading ...")
        self.net.load(self.player_id, blob)

    def _write_save(self, blob: bytes) -> None:
        data = self.pending_save or self.snapshot()
        self.pending_save = None
        data["engine"] = {"blob": base64.b64encode(blob).decode("ascii"), "endpoint": self.hello.get("engine")}
        data["saved_at"] = datetime.now().isoformat(timespec="seconds")
        path = self.opts.save_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(path)
        except OSError as exc:
            self.toast(f"Could not write the save file {path}: {exc.strerror}.", "error")
            return
        self.toasts = [t for t in self.toasts if t.text != "Saving ..."]
        self.toast(f"Game saved to {path}", "good")

    def _restore(self, data: dict[str, Any], beats: dict[str, Any]) -> None:
        p = data["player"]
        self.player.x, self.player.y = float(p["x"]), float(p["y"])
        self.player.path.clear()
        self.inventory = list(data.get("inventory", []))
        self.gold = int(data.get("gold", 0))
        w = data.get("world", {})
        self.world.open_doors = set(w.get("open_doors", []))
        self.world.picked = set(w.get("picked", []))
        for cid, (x, y) in w.get("npcs", {}).items():
            if cid in self.npcs:
                npc = self.npcs[cid]
                npc.x, npc.y = float(x), float(y)
                npc.path.clear()
                npc.errand, npc.posted = None, (cid in W.NPC_HOME and npc.tile != W.NPC_HOME[cid])
        self.music = w.get("music")
        q = data.get("quest", {})
        self.quest = Quest(q.get("title", ""), list(q.get("started", [])), dict(q.get("beats", {})), dict(q.get("flags", {})), list(q.get("journal", [])))
        # The engine is the truth for the story; the file only fills what it cannot say.
        self.quest.beats.update({c: b for c, b in beats.items() if b})
        self.area = self.world.area_at(*self.player.tile)

    # ------------------------------------------------------------------ engine messages

    def on_net(self, msg: NetMsg) -> None:
        c, d = msg.character, msg.data
        t = msg.type
        if c is not None and d.get("turn") is not None and (c, d["turn"]) in self.dropped and t not in ("turn.end", "error"):
            return  # a chunk of a turn we cut off
        handler = getattr(self, "_on_" + t.replace(".", "_"), None)
        if handler is not None:
            handler(c, d)
        else:
            log.debug("unhandled %s from %s", t, c)

    def _conv_for(self, c: str | None, d: dict[str, Any] | None = None) -> Conversation | None:
        """The open conversation a message belongs to: ``c`` (who speaks) is one of its
        characters, or (a scene-wide message, which names nobody) ``session`` is the scene's."""
        conv = self.conv
        if conv is None:
            return None
        if c is not None and c in conv.members:
            return conv
        if c is None and d is not None and conv.scene and d.get("session") == conv.key:
            return conv
        return None

    def _on_session_opened(self, c: str, d: dict[str, Any]) -> None:
        conv = self.conv if self.conv is not None and self.conv.key == c else None
        if conv is None:
            self.net.close_session(c)  # we walked away while it opened
            return
        conv.ready = True
        conv.resumed = bool(d.get("resumed"))
        if d.get("beat"):
            self.quest.beats[c] = d["beat"]

    def _on_session_failed(self, c: str | None, d: dict[str, Any]) -> None:
        conv = self._conv_for(c, d)
        if conv is not None:
            self.conv = None
        who = ", ".join(self.npcs[m].name if m in self.npcs else m for m in conv.members) if conv else (c or "them")
        self.toast(f"Could not talk to {who}: {d.get('message')}", "error", 6)

    def _on_session_closed(self, c: str | None, d: dict[str, Any]) -> None:
        pass

    def _on_scene_opened(self, c: str | None, d: dict[str, Any]) -> None:
        conv = self._conv_for(None, d)
        if conv is None:
            if d.get("session"):
                self.net.close_session(str(d["session"]))  # we walked away while it opened
            return
        conv.ready = True
        conv.resumed = bool(d.get("resumed"))
        for entry in d.get("characters") or []:
            if entry.get("beat"):
                self.quest.beats[str(entry["character"])] = str(entry["beat"])
        banter = conv.banter
        if banter is not None:
            self.net.banter(conv.key, banter.beat, banter.topic, list(banter.characters))

    def _on_scene_updated(self, c: str | None, d: dict[str, Any]) -> None:
        pass  # the game decides whom the player faces; the engine's answer only confirms it

    def _on_banter_started(self, c: str | None, d: dict[str, Any]) -> None:
        pass

    def _on_banter_end(self, c: str | None, d: dict[str, Any]) -> None:
        self.banters.append(dict(d))
        conv = self._conv_for(None, d)
        if conv is not None:
            conv.banter = None

    def _on_turn_start(self, c: str, d: dict[str, Any]) -> None:
        self.turn_sources[(c, int(d["turn"]))] = str(d.get("source", ""))
        conv = self._conv_for(c)
        if conv is None:
            return
        conv.turn, conv.turn_done = d["turn"], False
        conv.speaker = conv.character = c  # the panel shows whoever speaks
        conv.live[int(d["turn"])] = c
        conv.thinking = d.get("source") in ("text", "voice")
        if d.get("source") == "voice" and d.get("input"):
            self._heard(conv, str(d["input"]))

    def _heard(self, conv: Conversation, text: str) -> None:
        """The recognizer's final words for the player's spoken line."""
        conv.partial = ""
        last = conv.log[-1] if conv.log else None
        if last is not None and last.speaker == "player" and last.note in ("speaking", "sent"):
            last.text, last.note = text, "spoken"
        elif not (last is not None and last.speaker == "player" and last.text == text):
            conv.log.append(LogLine("player", text, "spoken"))

    def _on_transcript(self, c: str | None, d: dict[str, Any]) -> None:
        conv = self._conv_for(c, d)
        if conv is None:
            return
        text = str(d.get("text", ""))
        if d.get("final") or d.get("is_final") or d.get("kind") == "final":
            self._heard(conv, text)
        else:
            conv.partial = text

    def _on_reply_text(self, c: str, d: dict[str, Any]) -> None:
        conv = self._conv_for(c)
        npc = self.npcs.get(c)
        turn = d.get("turn", -1)
        delta = str(d.get("delta", ""))
        if conv is not None:
            conv.thinking = False
            conv.texts[turn] = conv.texts.get(turn, "") + delta
        if npc is not None and (self.opts.text_only or conv is None):
            # No voice to follow: move the lips for about as long as the words take to read.
            npc.talk_until = max(npc.talk_until, self.clock()) + 0.055 * len(delta)
            if conv is None:
                npc.bubble = ((npc.bubble or "") + delta)[-140:] if npc.bubble_until > self.clock() else delta
                npc.bubble_until = self.clock() + 4 + 0.05 * len(npc.bubble or "")

    def _on_reply_audio(self, c: str, d: dict[str, Any]) -> None:
        conv = self._conv_for(c)
        if conv is not None:
            conv.thinking = False
        npc = self.npcs.get(c)
        volume = 1.0
        if conv is None and npc is not None:
            volume = max(0.15, 1.0 - self._dist(npc) / (12 * W.TILE))
        chunk = PlayChunk(
            character=c, turn=int(d["turn"]), index=int(d.get("chunk", 0)), pcm=bytes(d["pcm"]),
            rate=int(d.get("rate", 24_000)), duration=float(d.get("duration", 0.0)), text=str(d.get("text", "")),
            volume=volume,
        )
        if chunk.duration <= 0:
            chunk.duration = len(chunk.pcm) / 2 / chunk.rate
        self.audio.push(chunk)

    def _on_cue(self, c: str, d: dict[str, Any]) -> None:
        kind = d.get("kind")
        chunk = None
        if d.get("chunk") is not None and d.get("turn") is not None:
            chunk = self.audio.find(c, int(d["turn"]), int(d["chunk"]))
        if kind == "visemes":
            if chunk is not None:
                chunk.visemes = VisemeTrack.from_cue(d.get("visemes", []))
                self.viseme_chunks += 1
        elif kind == "words":
            if chunk is not None:
                chunk.words = list(d.get("words", []))
        elif chunk is not None and chunk.started_at is None:
            chunk.cues.append(d)  # shown when its chunk starts playing
        else:
            self._fire_cue(c, d)

    def _fire_cue(self, c: str, d: dict[str, Any]) -> None:
        npc = self.npcs.get(c)
        if npc is None:
            return
        now = self.clock()
        name = str(d.get("name", ""))
        kind = d.get("kind")
        if kind == "emotion":
            npc.face.set_emotion(name, now)
            if name != "neutral":
                npc.icon, npc.icon_until = f"emotion:{name}", now + 2.5
        elif kind == "gesture":
            npc.face.set_gesture(name, now)
            npc.icon, npc.icon_until = f"gesture:{name}", now + 2.0
        elif kind == "action":
            npc.face.set_action(name, now)
            npc.icon, npc.icon_until = f"action:{name}", now + 2.5

    def _on_story(self, c: str | None, d: dict[str, Any]) -> None:
        self.apply_effect(d, spoken_by_session=c)

    def _on_turn_end(self, c: str, d: dict[str, Any]) -> None:
        source = self.turn_sources.pop((c, int(d.get("turn", -1))), None)  # turn.end does not repeat it
        self.turn_ends.append({"character": c, "source": source, **{k: v for k, v in d.items() if k != "pcm"}})
        conv = self._conv_for(c)
        if conv is None:
            return
        turn: int | None = d.get("turn")
        if turn is not None:
            conv.live.pop(int(turn), None)
        if conv.turn == turn:
            conv.turn_done = True
            conv.thinking = False
        if d.get("source") == "greeting" or not conv.greeted:
            conv.greeted = True
        conv.last_timings = dict(d.get("timings") or {})
        text = str(d.get("text") or (conv.texts.get(turn, "") if turn is not None else "")).strip()
        if (c, turn) in self.dropped:
            return  # logged when we cut it off, with what had been heard
        if text and turn is not None:
            note = "interrupted" if d.get("interrupted") or (c, turn) in self.dropped else ""
            if d.get("status") == "degraded":
                note = note or "degraded"
            self.unheard.append((c, int(turn), LogLine(c, text, note)))
            self._log_heard_lines()

    def _log_heard_lines(self) -> None:
        keep = []
        for who, turn, line in self.unheard:
            if self.audio.has_turn(who, turn):
                keep.append((who, turn, line))
            elif (conv := self._conv_for(who)) is not None:
                conv.log.append(line)
                del conv.log[:-30]
        self.unheard = keep

    def _on_error(self, c: str | None, d: dict[str, Any]) -> None:
        self.errors.append(d)
        conv = self._conv_for(c, d)
        if conv is not None and d.get("request_type") in ("text", "audio", "audio.end"):
            conv.thinking = False
            conv.turn_done = True
        message = str(d.get("message") or d.get("code"))
        self.toasts = [t for t in self.toasts if t.text not in ("Saving ...", "Loading ...")]
        if d.get("request_type") == "state.load":
            self.pending_load = None
            message = f"Loading failed: {message}"
        elif d.get("request_type") == "state.save":
            self.pending_save = None
            message = f"Saving failed: {message}"
        elif d.get("request_type") == "state.get":
            self.beats_missing = True
            message = f"Could not read the quest log: {message} (J to try again)"
        self.toast(message[:1].upper() + message[1:], "error", 6)

    def _on_event_ok(self, c: str | None, d: dict[str, Any]) -> None:
        effects = list(d.get("effects", []))
        gift = self.pending_gift
        if d.get("name") == "item.given" and gift is not None:
            self.pending_gift = None
            if not effects:
                self.inventory.append(gift[0])  # nobody wanted it: it comes back
                who = self.npcs[gift[1]].name if gift[1] in self.npcs else gift[1]
                self.toast(f"{who} hands it back.")
        for eff in effects:
            self.apply_effect(eff, spoken_by_session=None)

    def _on_state_saved(self, c: str | None, d: dict[str, Any]) -> None:
        self._write_save(bytes(d["blob"]))

    def _on_state_loaded(self, c: str | None, d: dict[str, Any]) -> None:
        data, self.pending_load = self.pending_load, None
        if data is None:
            return
        self._restore(data, dict(d.get("beats") or {}))
        self.toasts = [t for t in self.toasts if t.text != "Loading ..."]
        when = str(data.get("saved_at", "")).replace("T", " ")
        self.toast(f"Game loaded: the save from {when}." if when else "Game loaded.", "good")

    def _on_net_beats(self, c: str | None, d: dict[str, Any]) -> None:
        self.beats_missing = False
        for cid, beat in (d.get("beats") or {}).items():
            # The answer can arrive after the story has moved on (a busy engine takes its time
            # to close the silent session it asked through): a beat_entered since is newer.
            if beat and self.beat_moved_at.get(cid, -math.inf) < self.beats_asked_at:
                self.quest.beats[cid] = beat

    def _on_net_wav_sent(self, c: str, d: dict[str, Any]) -> None:
        conv = self.conv if self.conv is not None and self.conv.key == c else None
        if conv is not None and conv.log and conv.log[-1].note == "speaking":
            conv.log[-1].note = "sent"

    # ------------------------------------------------------------------ story effects

    def apply_effect(self, eff: dict[str, Any], spoken_by_session: str | None) -> None:
        """A story effect (from a ``story`` message or an ``event.ok``): the world reacts."""
        self.story_log.append(eff)
        kind = eff.get("kind")
        if kind == "beat_entered":
            beat = str(eff.get("beat_id") or eff.get("beat") or "")
            who = str(eff.get("character", ""))
            if beat and who:
                self.quest.beats[who] = beat
                self.beat_moved_at[who] = self.clock()
                name = self.npcs[who].name if who in self.npcs else pretty(who)
                self.quest.note(f"{name}: {pretty(beat, who)}")
                self._post_for_beat(who, beat)
        elif kind == "flag_set":
            name, value = str(eff.get("name")), eff.get("value")
            self.quest.flags[name] = value
        elif kind == "emit_event":
            self.game_event(str(eff.get("name")), dict(eff.get("data") or {}))
        elif kind == "say_line":
            who = str(eff.get("character", ""))
            npc = self.npcs.get(who)
            has_session = spoken_by_session == who or self._conv_for(who) is not None
            if npc is not None and not has_session:
                # Nobody has this character's session open: show the line silently over its head.
                npc.bubble, npc.bubble_until = str(eff.get("text", "")), self.clock() + 6.0
                npc.talk_until = self.clock() + 0.05 * len(npc.bubble)
        elif kind == "intent_matched":
            who = str(eff.get("character", ""))
            name = self.npcs[who].name if who in self.npcs else who
            self.toast(f"{name} understood: {pretty(str(eff.get('intent', '')))}", "info", 3.0)

    def _post_for_beat(self, who: str, beat: str) -> None:
        """A beat with a post (world.BEAT_POSTS) sends its character there; the next beat
        without one sends them home. They go once the player is not talking with them."""
        npc = self.npcs.get(who)
        if npc is None:
            return
        spot = W.SPOTS.get(W.BEAT_POSTS.get(beat, ""))
        if spot is not None:
            npc.errand, npc.posted = spot, True
        elif npc.posted and who in W.NPC_HOME:
            npc.errand, npc.posted = W.NPC_HOME[who], False

    def game_event(self, name: str, data: dict[str, Any]) -> None:
        """An event the story emits for the game (Yarn's <<commands>>)."""
        now = self.clock()
        if name == "door.open":
            door = str(data.get("door", "north_gate"))
            self.world.open_doors.add(door)
            self.door_opened_at[door] = now
            self.toast(f"The {pretty(door).lower()} creaks open.", "good")
            self.quest.note(f"The {pretty(door).lower()} is open.")
        elif name == "door.close":
            self.world.open_doors.discard(str(data.get("door", "north_gate")))
        elif name == "item.give":
            item = str(data.get("item"))
            self.inventory.append(item)
            giver = self.conv.character if self.conv is not None else None
            src = self.npcs.get(str(data.get("from") or giver or ""))
            if src is not None:
                src.gift, src.gift_at = item, now
            self.toast(f"Received: {W.ITEM_NAMES.get(item, pretty(item))}", "good", 5)
            self.quest.note(f"Received {W.ITEM_NAMES.get(item, pretty(item))}.")
        elif name == "item.take":
            item = str(data.get("item"))
            if item in self.inventory:
                self.inventory.remove(item)
                self.toast(f"Handed over: {W.ITEM_NAMES.get(item, pretty(item))}")
        elif name in ("gold.take", "gold.give"):
            amount = int(data.get("amount", 0))
            self.gold = max(0, self.gold + (amount if name == "gold.give" else -amount))
            self.toast(f"{'+' if name == 'gold.give' else '-'}{amount} gold")
        elif name == "npc.move":
            who = str(data.get("character") or data.get("npc") or "")
            spot = W.SPOTS.get(str(data.get("to") or data.get("spot") or ""))
            npc = self.npcs.get(who)
            if npc is not None and spot is not None:
                self.patrols.pop(who, None)  # the story sends them somewhere: their round is over
                path = self.world.path(npc.tile, spot, frozenset({self.player.tile}))
                # Someone in mid-sentence finishes it before walking off.
                npc.pending_path = path[1:] if path else []
        elif name == "quest.started":
            quest = str(data.get("quest", "quest"))
            title = W.QUEST_TITLES.get(quest, pretty(quest))
            self.quest.started.append(quest)
            self.quest.title = self.quest.title or title
            self.toast(f"New quest: {title}", "good", 5)
            self.quest.note(f"Quest started: {title}.")
        elif name in ("quest.completed", "quest.done"):
            self.toast(f"Quest complete: {pretty(str(data.get('quest', self.quest.title)))}", "good", 6)
        elif name == "music.play":
            self.music = str(data.get("track", ""))
            self.audio.ambience(self.music)
            self.toast(f"♪ {pretty(self.music)}", "info", 4)
        else:
            self.toast(f"Story event {name} {json.dumps(data) if data else ''}".strip())

    # ------------------------------------------------------------------ the frame

    def update(self, dt: float) -> None:
        now = self.clock()
        self._move_player(dt)
        for npc in self.npcs.values():
            self._move_npc(npc, dt)
        self._check_area()
        self._check_conversation_range()
        self._walk_rounds(now)
        self._check_banter()
        for chunk in self.audio.update():
            self.heard.setdefault((chunk.character, chunk.turn), []).append(chunk.text)
            for cue in chunk.cues:
                self._fire_cue(chunk.character, cue)
        if self.unheard:
            self._log_heard_lines()
        self._update_faces(dt, now)
        if self.conv is not None and self.conv.listening:
            frames = self.mic.frames()
            if frames:
                self.net.audio_frames(self.conv.key, frames)
        conv = self.conv
        if (
            self.say_wav_pending is not None and conv is not None and conv.ready and conv.greeted
            and conv.turn_done and not any(self.audio.busy(m) for m in conv.members)
        ):
            path, self.say_wav_pending = self.say_wav_pending, None
            self.send_wav(path)
        self.toasts = [t for t in self.toasts if t.until > now]
        self.swallow_text = None

    def _move_player(self, dt: float) -> None:
        p = self.player
        dx, dy = self.move
        if not (dx or dy) and p.path:
            dx, dy = _towards(p, p.path)
        if (dx or dy) and dt > 0:
            n = math.hypot(dx, dy)
            vx, vy = dx / n * PLAYER_SPEED * dt, dy / n * PLAYER_SPEED * dt
            moved = self._try_move(p, vx, 0) | self._try_move(p, 0, vy)
            p.moving = moved
            p.facing = (round(dx / n), round(dy / n))
            if moved:
                p.walk += dt * 9
            elif p.path:
                p.path.clear()  # blocked (an NPC in the way): give up rather than push forever
        else:
            p.moving = False
        if p.path and math.hypot(p.x - W.tile_center(p.path[0])[0], p.y - 10 - W.tile_center(p.path[0])[1]) < 3:
            p.path.pop(0)

    def _try_move(self, a: Actor, vx: float, vy: float) -> bool:
        if not (vx or vy):
            return False
        nx, ny = a.x + vx, a.y + vy
        # Feet box: 16 x 8 px around (x, y).
        for fx, fy in ((nx - 8, ny - 6), (nx + 7, ny - 6), (nx - 8, ny + 1), (nx + 7, ny + 1)):
            if self.world.solid(*W.tile_of(fx, fy)):
                return False
        if a is self.player:
            for npc in self.npcs.values():
                before = math.hypot(a.x - npc.x, a.y - npc.y)
                after = math.hypot(nx - npc.x, ny - npc.y)
                if after < 18 and after < before:
                    return False
        a.x, a.y = nx, ny
        return True

    def _move_npc(self, npc: Actor, dt: float) -> None:
        if npc.pending_path and not self._talking(npc.id):
            npc.path, npc.pending_path = npc.pending_path, []
        if not npc.path:
            npc.moving = False
            return
        tx, ty = W.tile_center(npc.path[0])
        ty += 10
        dx, dy = tx - npc.x, ty - npc.y
        dist = math.hypot(dx, dy)
        step = NPC_SPEED * dt
        if dist <= step:
            npc.x, npc.y = tx, ty
            npc.path.pop(0)
        else:
            npc.x += dx / dist * step
            npc.y += dy / dist * step
            npc.facing = (round(dx / dist), round(dy / dist))
        npc.moving = True
        npc.walk += dt * 8

    def _talking(self, character: str) -> bool:
        conv = self._conv_for(character)
        if conv is not None and conv.scene:  # only the one who has the floor is talking
            return self.audio.busy(character) or (conv.speaker == character and not conv.turn_done)
        return self.audio.busy(character) or (conv is not None and (not conv.turn_done or conv.thinking))

    def _check_area(self) -> None:
        area = self.world.area_at(*self.player.tile)
        if area is not None and (self.area is None or area.id != self.area.id):
            self.area_at = self.clock()
            self.send_event("area.entered", {"area": area.id})
        if area is None or self.area is None or area.id != self.area.id:
            self.banter_played &= {area.id} if area is not None else set()  # a new visit elsewhere
        self.area = area

    def _check_conversation_range(self) -> None:
        conv = self.conv
        if conv is None:
            return
        people = [self.npcs[m] for m in conv.members if m in self.npcs]
        reach = OVERHEAR_RANGE if conv.overheard else LEAVE_RANGE
        if people and min(self._dist(n) for n in people) > reach:
            self.toast(f"You walk away from {' and '.join(n.name for n in people)}.")
            self.end_conversation()
            return
        for npc in people:
            if not npc.moving:
                npc.facing = _facing(npc, self.player)
        if conv.scene and conv.ready:
            # Whom the player turns to answers a line that names nobody: tell the engine as it changes.
            faced = self.faced(conv.members)  # None: looking at none of them (the story's lead answers)
            if faced != conv.facing:
                conv.facing = faced
                self.net.scene_update(conv.key, faced)

    def _walk_rounds(self, now: float) -> None:
        """Rounds (world.PATROLS) and errands (a story beat's post): people walk when free."""
        conv = self.conv
        for cid, npc in self.npcs.items():
            busy = (conv is not None and cid in conv.members) or self._talking(cid) or bool(npc.path or npc.pending_path)
            # Someone the player is walking up to (or talking with) waits for them.
            if busy or self._dist(npc) <= TALK_RANGE * 1.5:
                continue
            if npc.errand is not None:
                self._send_walking(npc, npc.errand)
                npc.errand = None
                continue
            patrol = self.patrols.get(cid)
            if patrol is None:
                continue
            if patrol.walking:  # arrived
                patrol.walking = False
                patrol.until = now + patrol.stops[patrol.stop][1]
            elif now >= patrol.until:
                patrol.stop = (patrol.stop + 1) % len(patrol.stops)
                patrol.walking = self._send_walking(npc, W.SPOTS[patrol.stops[patrol.stop][0]])
                if not patrol.walking:  # no way there now (someone in the way, or already there)
                    patrol.until = now + patrol.stops[patrol.stop][1]

    def _send_walking(self, npc: Actor, spot: W.Tile) -> bool:
        others = frozenset(n.tile for n in self.npcs.values() if n is not npc) | {self.player.tile}
        path = self.world.path(npc.tile, spot, others)
        npc.path = path[1:] if path else []
        return bool(npc.path)

    def _check_banter(self) -> None:
        """Walk into an area where its banter's characters all stand: they talk among themselves
        (once per visit). It is a scene: a line from the player cuts in and goes to them."""
        area = self.area
        if self.conv is not None or area is None or area.id in self.banter_played:
            return
        for banter in W.BANTERS:
            if banter.area != area.id:
                continue
            people = [self.npcs.get(cid) for cid in banter.characters]
            if all(n is not None and area.contains(*n.tile) and not n.moving and not n.path for n in people):
                self.banter_played.add(area.id)
                self.open_scene(list(banter.characters), banter=banter)
                return

    def _update_faces(self, dt: float, now: float) -> None:
        playing = self.audio.current()
        for npc in self.npcs.values():
            face = npc.face
            if playing is not None and playing[0].character == npc.id:
                chunk, t = playing
                if chunk.visemes:
                    shape, jaw = shape_for(viseme_at(chunk.visemes, t))
                else:
                    shape, jaw = shape_for_level(chunk.level_at(t))
                face.set_mouth(shape, jaw)
                self.mouth_samples.append((now, npc.id, shape, chunk.key))
            elif npc.talk_until > now:
                # Text only: a simple open/close cycle while the words are on screen.
                phase = int(now * 9) % 4
                face.set_mouth((Mouth.OPEN, Mouth.NARROW, Mouth.ROUND, Mouth.CLOSED)[phase], (0.7, 0.4, 0.5, 0.0)[phase])
            else:
                face.set_mouth(Mouth.CLOSED, 0.0)
            face.ease(dt)

    # ------------------------------------------------------------------ for the HUD

    def subtitle(self) -> tuple[str, str, float] | None:
        """(speaker id, text, progress 0..1 through the chunk) for the line being spoken now."""
        playing = self.audio.current()
        if playing is not None:
            chunk, t = playing
            return chunk.character, chunk.text, t / chunk.duration if chunk.duration else 1.0
        conv = self.conv
        if conv is not None and self.opts.text_only and conv.turn is not None and conv.turn in conv.texts:
            who = conv.speaker or conv.character
            npc = self.npcs.get(who)
            if npc is not None and npc.talk_until > self.clock() - 2.5:
                return who, conv.texts[conv.turn], 1.0
        return None

    def panel_character(self, conv: Conversation) -> str:
        """Whom the conversation panel shows: in a scene, whoever's voice is playing (a banter
        queues the next line while one plays), else whoever spoke last."""
        playing = self.audio.current()
        if playing is not None and playing[0].character in conv.members:
            return playing[0].character
        return conv.character

    def hint(self) -> str | None:
        if "hammer" in self.inventory:
            return W.HINTS.get("bram_hammer_back")
        beats = set(self.quest.beats.values())
        return next((W.HINTS[b] for b in W.HINT_ORDER if b in beats), None)

    def prompt(self) -> str | None:
        """What E would do right now, for the on-screen prompt."""
        if self.conv is not None:
            return None
        if (item := self.nearest_item()) is not None:
            return f"E  pick up {W.ITEM_NAMES.get(item.item, pretty(item.item))}"
        if (npc := self.nearest_npc()) is not None:
            return f"E  talk to {npc.name}"
        return None


def _towards(a: Actor, path: list[W.Tile]) -> tuple[float, float]:
    tx, ty = W.tile_center(path[0])
    dx, dy = tx - a.x, ty + 10 - a.y
    if abs(dx) < 2:
        dx = 0.0
    if abs(dy) < 2:
        dy = 0.0
    return dx, dy


def _facing(a: Actor, b: Actor) -> tuple[int, int]:
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) > abs(dy):
        return (1 if dx > 0 else -1, 0)
    return (0, 1 if dy > 0 else -1)
