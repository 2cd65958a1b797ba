"""The demo's scenes without an engine: when talking opens a scene, whom the player faces,
who speaks (lips, subtitles and the log follow each message's ``character``), the forge banter
(once per visit, cut off by the player's line), the captain's round and Bram's errand.

The engine is played by the test: ``RecordingNet`` records what the game asks of it, and the
test hands the game the messages the engine would send (``Game.on_net``), on a fake clock.
"""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import pytest

from demo_game import world as W
from demo_game.audio_out import AudioOut
from demo_game.face import Mouth
from demo_game.game import TALK_RANGE, Game, GameOptions
from demo_game.net import Net, NetMsg

HELLO = {"characters": [{"id": "aldric", "name": "Captain Aldric"}, {"id": "bram", "name": "Bram"},
                        {"id": "marta", "name": "Marta"}], "stt": True}


class RecordingNet(Net):
    """A Net with no network: every call the game makes is recorded as (name, args)."""

    def __init__(self) -> None:  # no loop, no thread, no socket
        self.inbox: queue.Queue[NetMsg] = queue.Queue()
        self.scenes: set[str] = set()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]

    def open_session(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("open_session", args))

    def open_scene(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("open_scene", (*args, kw)))

    def scene_update(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("scene_update", args))

    def banter(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("banter", args))

    def close_session(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("close_session", args))

    def say(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("say", args))

    def cancel(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("cancel", args))

    def event(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("event", args))

    def query_beats(self, *args: Any, **kw: Any) -> None:
        self.calls.append(("query_beats", args))


class World:
    """A game on a fake clock, connected to a recorded engine with Oakhollow's three characters."""

    def __init__(self, patrols: bool = False) -> None:
        self.now = 1000.0
        self.net = RecordingNet()
        self.audio = AudioOut(enabled=False, clock=lambda: self.now)
        self.game = Game(self.net, self.audio, GameOptions(microphone=False, patrols=patrols), clock=lambda: self.now)
        self.game.on_connected(HELLO)

    def stand(self, tile: W.Tile, facing: tuple[int, int] = (0, -1)) -> None:
        p = self.game.player
        p.x, p.y = W.tile_center(tile)[0], W.tile_center(tile)[1] + 10
        p.facing = facing

    def frames(self, n: int = 1, dt: float = 1 / 30) -> None:
        for _ in range(n):
            self.now += dt
            self.game.update(dt)

    def engine(self, type_: str, who: str | None, /, **data: Any) -> None:
        """A message from the engine, as Net hands it over (``who``: its speaker)."""
        self.game.on_net(NetMsg(type_, who, {"type": type_, **data}))

    def scene_key(self) -> str:
        conv = self.game.conv
        assert conv is not None and conv.scene
        return conv.key

    def open_tavern_scene(self) -> str:
        """Bram at the Kettle beside Marta, the player in front of both: E."""
        self.game.place("bram", W.SPOTS["kettle"])
        self.stand((31, 19))
        self.game.interact()
        key = self.scene_key()
        self.engine("scene.opened", None, session=key, player=self.game.player_id,
                    characters=[{"character": "marta", "name": "Marta", "beat": "marta_tavern"},
                                {"character": "bram", "name": "Bram", "beat": "bram_waiting"}])
        return key


def voice(seconds: float) -> bytes:
    t = np.arange(int(24_000 * seconds)) / 24_000
    return (0.5 * np.sin(2 * np.pi * 180 * t) * 32767).astype("<i2").tobytes()


# ---------------------------------------------------------------------------- opening a scene


def test_two_in_reach_open_a_scene_one_opens_a_session() -> None:
    w = World()
    g = w.game
    # Bram alone at his forge: a one-to-one conversation, as before scenes.
    w.stand((13, 17), facing=(-1, 0))
    assert g.group_in_reach() == ["bram"]
    g.interact()
    assert w.net.named("open_session") and w.net.named("open_session")[0][0] == "bram"
    assert not w.net.named("open_scene")
    assert g.conv is not None and not g.conv.scene
    g.end_conversation()

    # Marta at the Kettle with Bram beside her, the player in front of both: one scene.
    g.place("bram", W.SPOTS["kettle"])
    w.stand((31, 19), facing=(0, -1))  # looking at the door, at neither of them
    assert {g._dist(g.npcs[c]) <= TALK_RANGE for c in ("marta", "bram")} == {True}
    g.interact()
    (key, characters, player, _vars, kw), = w.net.named("open_scene")
    assert sorted(characters) == ["bram", "marta"] and player == g.player_id
    assert kw["greet"] is True and kw["facing"] is None  # nobody faced: the story's lead may answer
    assert len(w.net.named("open_session")) == 1  # no session for either of them
    conv = g.conv
    assert conv is not None and conv.scene and conv.key == key and set(conv.members) == {"marta", "bram"}

    # E again while it is open: type to the scene; a line goes to the scene, not to a character.
    w.engine("scene.opened", None, session=key, characters=[{"character": "marta", "beat": "marta_tavern"}])
    assert conv.ready and g.quest.beats["marta"] == "marta_tavern"
    g.say("Have you two seen a stranger?")
    assert w.net.named("say")[-1] == (key, "Have you two seen a stranger?")


def test_whom_the_player_faces_goes_first_and_is_sent_as_it_changes() -> None:
    w = World()
    g = w.game
    g.place("bram", W.SPOTS["kettle"])
    w.stand((31, 18), facing=(1, 0))  # between them, looking at Bram
    assert g.group_in_reach() == ["bram", "marta"]
    g.interact()
    (key, characters, *_rest, kw), = w.net.named("open_scene")
    assert characters == ["bram", "marta"] and kw["facing"] == "bram"
    w.engine("scene.opened", None, session=key, characters=[])
    w.frames(3)
    assert w.net.named("scene_update") == []  # the engine already knows
    g.face("marta")
    w.frames(3)
    assert w.net.named("scene_update") == [(key, "marta")]  # once, on the change
    w.stand((31, 18), facing=(0, -1))  # looking at neither: facing nobody (the story's lead answers)
    w.frames(3)
    g.face("bram")
    w.frames(2)
    assert w.net.named("scene_update") == [(key, "marta"), (key, None), (key, "bram")]


# ---------------------------------------------------------------------------- who speaks


def test_lips_subtitles_and_log_follow_each_messages_character() -> None:
    w = World()
    g = w.game
    key = w.open_tavern_scene()
    g.say("Bram, what brings you here?")
    # Bram answers (turn 1), then Marta adds a reaction (turn 2): one scene, two voices.
    for turn, who, text in ((1, "bram", "A drink, after the day I had."), (2, "marta", "He has had three.")):
        source = "text" if turn == 1 else "reaction"
        w.engine("turn.start", who, session=key, turn=turn, character=who, source=source)
        w.engine("reply.audio", who, session=key, turn=turn, chunk=0, character=who, pcm=voice(0.5), rate=24_000,
                 duration=0.5, text=text)
        w.engine("cue", who, session=key, turn=turn, chunk=0, character=who, kind="visemes",
                 visemes=[{"viseme": "aa", "start": 0.0, "end": 0.25}, {"viseme": "ou", "start": 0.25, "end": 0.5}])
        w.engine("turn.end", who, session=key, turn=turn, character=who, status="ok", text=text)

    w.frames(3)  # Bram's chunk plays first
    sub = g.subtitle()
    assert sub is not None and sub[0] == "bram" and sub[1].startswith("A drink")
    assert g.panel_character(g.conv) == "bram"
    assert g.npcs["bram"].face.mouth != Mouth.CLOSED and g.npcs["marta"].face.mouth == Mouth.CLOSED
    w.frames(18)  # 0.6 s on: Marta's chunk, queued behind Bram's, plays now
    sub = g.subtitle()
    assert sub is not None and sub[0] == "marta" and sub[1] == "He has had three."
    assert g.panel_character(g.conv) == "marta"
    assert g.npcs["bram"].face.mouth == Mouth.CLOSED and g.npcs["marta"].face.mouth != Mouth.CLOSED
    drawn = {s[1] for s in g.mouth_samples}
    assert drawn == {"bram", "marta"}
    assert g.viseme_chunks == 2
    w.frames(20)
    assert [(ln.speaker, ln.text) for ln in g.conv.log[-3:]] == [
        ("player", "Bram, what brings you here?"), ("bram", "A drink, after the day I had."), ("marta", "He has had three."),
    ]


def test_net_tags_each_message_with_its_speaker() -> None:
    net = Net()
    try:
        net.scenes.add("scene-p-1")
        assert net._speaker("scene-p-1", {"type": "reply.audio", "character": "bram"}) == "bram"
        assert net._speaker("scene-p-1", {"type": "banter.end"}) is None  # scene-wide: names nobody
        assert net._speaker("bram", {"type": "reply.audio"}) == "bram"  # a one-to-one session (older engine)
        assert net._speaker("bram", {"type": "reply.audio", "character": "bram"}) == "bram"
    finally:
        net.shutdown()


# ---------------------------------------------------------------------------- the forge banter


def test_forge_banter_plays_once_per_visit_and_the_player_cuts_in() -> None:
    w = World()
    g = w.game
    g.place("aldric", W.SPOTS["forge_yard"])
    w.stand((20, 21))  # the square
    w.frames(3)
    assert not w.net.named("open_scene")

    w.stand((13, 19), facing=(-1, 0))  # into the forge yard: Bram and the captain are both there
    w.frames(2)
    (key, characters, _player, _vars, kw), = w.net.named("open_scene")
    assert characters == ["bram", "aldric"] and kw["greet"] is False
    assert g.conv is not None and g.conv.overheard and not g.conv.thinking
    assert not w.net.named("banter")  # asked for once the scene is open
    w.engine("scene.opened", None, session=key, characters=[])
    (banter,) = w.net.named("banter")
    assert banter[0] == key and banter[1] == "forge_argument" and banter[3] == ["bram", "aldric"]
    assert banter[2]  # a topic, if the story has no such beat

    # Two lines arrive: Bram's plays, the captain's waits behind it. The player cuts in.
    for turn, who in ((1, "bram"), (2, "aldric")):
        w.engine("turn.start", who, session=key, turn=turn, character=who, source="banter")
        w.engine("reply.audio", who, session=key, turn=turn, chunk=0, character=who, pcm=voice(1.0), rate=24_000,
                 duration=1.0, text=f"line {turn}")
    w.frames(3)
    assert g.audio.busy("bram") and g.audio.busy("aldric")
    g.say("Enough, both of you!")
    assert not g.audio.busy(), "the banter's voices must stop at the player's line"
    assert ("bram", 1) in g.dropped and ("aldric", 2) in g.dropped
    assert w.net.named("cancel")[-1][:2] == (key, 2)  # the engine's running line
    assert w.net.named("say")[-1] == (key, "Enough, both of you!")
    assert not g.conv.overheard
    # Late messages of the cut lines are dropped, not played.
    w.engine("reply.audio", "aldric", session=key, turn=2, chunk=1, character="aldric", pcm=voice(0.3),
             rate=24_000, duration=0.3, text="late")
    assert not g.audio.busy()
    w.engine("banter.end", None, session=key, lines=2, interrupted=True)
    assert g.banters[-1]["interrupted"] is True and g.conv.banter is None

    # Still in the yard after leaving the conversation: no second banter this visit.
    g.end_conversation()
    w.frames(5)
    assert len(w.net.named("open_scene")) == 1
    # Out to the square and back in: a new visit, a new banter.
    w.stand((20, 21))
    w.frames(2)
    w.stand((13, 19))
    w.frames(2)
    assert len(w.net.named("open_scene")) == 2


def test_no_banter_without_the_captain_or_while_talking() -> None:
    w = World()
    g = w.game
    w.stand((13, 19))  # the captain is at his gate
    w.frames(3)
    assert not w.net.named("open_scene")
    w.stand((13, 17), facing=(-1, 0))
    g.talk_to("bram")  # talking with Bram when the captain arrives: no banter over it
    g.place("aldric", W.SPOTS["forge_yard"])
    w.frames(3)
    assert not w.net.named("open_scene")
    assert g.conv is not None and g.conv.members == ["bram"]


# ---------------------------------------------------------------------------- people walking


def test_the_captain_walks_his_round_to_the_forge() -> None:
    w = World(patrols=True)
    g = w.game
    aldric = g.npcs["aldric"]
    w.frames(3)
    assert not aldric.path  # at the gate for a while
    w.now += W.PATROLS["aldric"][0][1]
    w.frames(1)
    assert aldric.path and aldric.path[-1] == W.SPOTS["forge_yard"]


def test_bram_goes_to_the_kettle_after_the_conversation_in_which_his_beat_moved() -> None:
    w = World()
    g = w.game
    bram = g.npcs["bram"]
    w.stand((13, 17))
    g.talk_to("bram")
    g.apply_effect({"kind": "beat_entered", "character": "bram", "beat_id": "bram_waiting"}, spoken_by_session="bram")
    w.frames(3)
    assert not bram.path  # not while you talk with him
    g.end_conversation()
    w.stand((20, 21))
    w.frames(1)
    assert bram.path and bram.path[-1] == W.SPOTS["kettle"]
    bram.path.clear()
    g.place("bram", W.SPOTS["kettle"])
    bram.posted = True
    g.apply_effect({"kind": "beat_entered", "character": "bram", "beat_id": "bram_hammer_back"}, spoken_by_session=None)
    w.frames(1)
    assert bram.path and bram.path[-1] == W.NPC_HOME["bram"]


def test_a_late_answer_to_the_beats_query_does_not_undo_the_story() -> None:
    """The quest log asks for every beat at connect; on a busy engine the answer can come after
    a turn has moved Bram's beat (seen on a loaded machine): the story's message is newer."""
    w = World()
    g = w.game
    w.now += 5
    g.apply_effect({"kind": "beat_entered", "character": "bram", "beat": "bram_waiting"}, spoken_by_session="bram")
    w.engine("net.beats", None, beats={"bram": "bram_hammer_stolen", "marta": "marta_tavern"})
    assert g.quest.beats == {"bram": "bram_waiting", "marta": "marta_tavern"}
    w.now += 5
    g.on_connected(HELLO)  # a new query (a reconnect): its answer is the newest again
    w.engine("net.beats", None, beats={"bram": "bram_hammer_back"})
    assert g.quest.beats["bram"] == "bram_hammer_back"


@pytest.mark.parametrize("tile", [W.SPOTS["kettle"], W.SPOTS["forge_yard"]])
def test_new_spots_are_free_and_in_their_areas(tile: W.Tile) -> None:
    world = W.World()
    assert not world.solid(*tile)
    area = world.area_at(*tile)
    assert area is not None and area.id == ("inn" if tile == W.SPOTS["kettle"] else "forge")
