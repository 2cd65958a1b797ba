"""Scripted story lines are pre-rendered in their own speaker's voice: a multi-character
exchange (the shipped ``forge_argument``) alternates Bram's and Aldric's voices."""

from __future__ import annotations

from npc_engine.pipeline.base import Voice
from tests.doubles import ScriptedChat
from tests.unit.conftest import MakeEngine, World


async def test_each_exchange_line_is_prerendered_in_its_speakers_voice(make_engine: MakeEngine, world: World) -> None:
    characters, story = world
    engine = make_engine(ScriptedChat(["Hm."]))
    voices = dict(engine.scripted_lines())  # text -> voice (texts of the exchange are distinct)
    forge = story.beats["forge_argument"]
    assert len(forge.lines) == 4
    heard = []
    for line in forge.lines:
        who = characters[forge.line_speaker(line)]
        assert voices[line.text] == Voice(who.voice.id, who.voice.speed), line.id
        heard.append(who.id)
    assert heard == ["bram", "aldric", "bram", "aldric"]
    assert characters["bram"].voice.id != characters["aldric"].voice.id  # else the test proves nothing
