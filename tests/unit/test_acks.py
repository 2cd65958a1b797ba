"""Instant acknowledgements ("Hm.", "Aye."): chosen by the kind of the player's line, said as the
turn's first reply.audio (``ack: true``, with visemes and words) when the reply's audio is not
ready, and written into the prompt so the model goes on after them; a missed first-token budget
still ends in audio (the ack at once, the fallback line at the budget)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import msgpack
import pytest

from npc_engine.characters import Ack, read_character
from npc_engine.engine import Engine
from npc_engine.pipeline.base import ChatMessage, Voice
from npc_engine.pipeline.line_cache import LineCache
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.incoming import SessionOpen, decode
from npc_engine.session.session import Session
from npc_engine.turns.acks import AckPicker, classify
from npc_engine.turns.reply import after_ack
from tests.doubles import ScriptedChat, ScriptedReply, SilenceSynth
from tests.unit.conftest import DEFAULT_REPLY, NEUTRAL, PLAYER, MakeEngine, World
from tests.unit.support import Sent, end_of, eventually

# A reply slow to start: its first token comes long after the ack (generous: a loaded machine
# still sends the ack, which needs no model and no synthesis, well before it). A turn that is
# already real says its ack whatever the model's pace: its reply cannot be voiced yet.
SLOW_START = ScriptedReply(DEFAULT_REPLY, ttft_s=2.0)
FAST = ScriptedReply(DEFAULT_REPLY, ttft_s=0.01)
QUESTION = "Where did the thief go?"


# --------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize(("line", "kind"), [
    ("Where did the thief go?", "question"),
    ("is the gate open", "question"),  # speech recognition drops the question mark
    ("You said the mill?", "question"),
    ("Hello there!", "greeting"),
    ("Good morning, captain.", "greeting"),
    ("Nice to meet you, Marta.", "greeting"),
    ("Thanks for the help.", "thanks"),
    ("Thank you kindly, but why?", "thanks"),
    ("Much obliged.", "thanks"),
    ("You useless old fool.", "insult"),
    ("Shut up and listen!", "insult"),
    ("Why are you such an idiot?", "insult"),
    ("Nice weather today.", "any"),
    ("Say hi to Marta for me.", "any"),  # a greeting only opens a line
    ("I need a sword.", "any"),
    ("   ", "any"),
])
def test_the_kind_of_a_line(line: str, kind: str) -> None:
    assert classify(line) == kind


def acks(*specs: tuple[str, list[str]]) -> list[Ack]:
    return [Ack.model_validate({"text": text, "kinds": kinds}) for text, kinds in specs]


def test_an_ack_of_the_lines_kind_else_of_kind_any() -> None:
    picker = AckPicker(acks(("Aye.", ["any"]), ("Mm.", ["any"]), ("Let's see.", ["question"]), ("Watch it.", ["insult"])))
    assert picker.pick("Where is the mill?") is not None and picker.last == "Let's see."
    assert picker.pick("You fool.") is not None and picker.last == "Watch it."
    assert picker.pick("Thanks!") is not None and picker.last in ("Aye.", "Mm."), "no thanks ack: one of kind any"


def test_never_the_same_ack_twice_in_a_row() -> None:
    picker = AckPicker(acks(("Aye.", ["any"]), ("Mm.", ["any"]), ("Let's see.", ["question"])))
    said = [picker.last for _ in range(12) if picker.pick("Where is the mill?") is not None]
    assert len(said) == 12, "a question always gets an ack: its own, or one of kind any in between"
    assert all(a != b for a, b in itertools.pairwise(said)), said
    assert "Let's see." in said

    lonely = AckPicker(acks(("Hm.", ["any"])))
    picks = [lonely.pick(NEUTRAL) for _ in range(4)]
    assert [p.text if p else None for p in picks] == ["Hm.", None, "Hm.", None], "rather none than the same twice"
    assert AckPicker([]).pick(NEUTRAL) is None


# --------------------------------------------------------------------------- authoring


def write_character(tmp_path: Path, acks_yaml: str) -> Path:
    path = tmp_path / "smith.yaml"
    path.write_text(
        "name: Smith\nvoice: bm_george\npersona: A smith.\n"
        "greetings:\n  - id: smith.greet.1\n    text: Hm.\n"
        "fallbacks:\n  - id: smith.fallback.1\n    text: Again?\n" + acks_yaml,
        encoding="utf-8",
    )
    return path


def test_acks_load_from_strings_or_text_with_kinds(tmp_path: Path) -> None:
    ch, problems = read_character(write_character(tmp_path, "acks:\n  - Aye.\n  - text: Let's see.\n    kinds: question\n"))
    assert ch is not None and not problems, problems
    assert [(a.text, a.kinds) for a in ch.acks] == [("Aye.", ["any"]), ("Let's see.", ["question"])]


def test_bad_acks_are_reported_with_their_line(tmp_path: Path) -> None:
    path = write_character(tmp_path, (
        "acks:\n"                      # line 10
        "  - text: Well.\n"            # 11
        "    kinds: [question, questions]\n"  # 12
    ))
    ch, problems = read_character(path)
    assert ch is None
    assert [(p.line, p.is_error) for p in problems] == [(12, True)], problems
    assert "'question'" in problems[0].message and "questions" in problems[0].message

    path = write_character(tmp_path, (
        "acks:\n"                                        # 10
        "  - text: Hello, {player_name}.\n"              # 11
        "    kinds: greeting\n"
        "  - text: Well now, let me have a think.\n"     # 13
        "    kinds: question\n"
        "  - text: Well now, let me have a think.\n"     # 15
        "    kinds: question\n"
    ))
    ch, problems = read_character(path)
    assert ch is None
    found = {(p.line, p.severity, p.message.split(":")[0].split(" (")[0]) for p in problems}
    assert (11, "error", "an ack cannot use {templates}") in found, problems
    assert (13, "warning", "this ack has 7 words") in found, problems
    assert any(p.line == 15 and "listed twice" in p.message for p in problems), problems
    assert any(p.line == 10 and "no ack of kind 'any'" in p.message for p in problems), problems


def test_the_shipped_characters_have_acks_of_every_kind(world: World) -> None:
    for ch in world[0].values():
        kinds = {k for a in ch.acks for k in a.kinds}
        assert {"any", "question", "greeting", "thanks", "insult"} <= kinds, (ch.id, kinds)


# --------------------------------------------------------------------------- pinned audio


def test_a_pinned_line_is_in_memory_and_a_stored_one_is_pinned_without_synthesis(tmp_path: Path) -> None:
    synth = SilenceSynth()
    voice = Voice("bm_george")
    cache = LineCache(tmp_path / "lines", synth)
    assert cache.pin_stored("Aye.", voice) is None and cache.pinned("Aye.", voice) is None, "never rendered"
    assert synth.texts == [], "pin_stored never synthesizes"
    pinned = cache.pin("Aye.", voice)
    assert cache.pinned("Aye.", voice) is pinned and synth.texts == ["Aye."]

    again = LineCache(tmp_path / "lines", synth)  # a restarted engine: the line is on disk
    stored = again.pin_stored("Aye.", voice)
    assert stored is not None and again.pinned("Aye.", voice) is stored
    assert synth.texts == ["Aye."] and again.renders == 0, "read back, not rendered again"
    assert [v.label for v in stored.visemes] == [v.label for v in pinned.visemes], "with its visemes"


# --------------------------------------------------------------------------- after the ack


async def deltas_of(pieces: Sequence[str]) -> AsyncGenerator[str, None]:
    for p in pieces:
        yield p


async def continuation(pieces: Sequence[str], ack: str) -> str:
    return "".join([d async for d in after_ack(deltas_of(pieces), ack)])


async def test_the_model_goes_on_after_the_ack_without_saying_it_again() -> None:
    assert await continuation([" The", " forge", " is", " cold."], "Aye.") == "The forge is cold."
    assert await continuation(["Aye", ",", " the", " forge."], "Aye.") == "The forge.", "a new sentence after 'Aye.'"
    assert await continuation([" aye.", " The", " forge."], "Aye.") == "The forge."
    assert await continuation([" Well", " now", ", dear,", " the", " inn."], "Well now,") == "dear, the inn."
    assert await continuation([" Ayes", " and", " noes."], "Aye.") == "Ayes and noes.", "a longer word is not the ack"
    assert await continuation([" A", "ye", " right."], "Aye.") == "Right."
    assert await continuation([" Aye."], "Aye.") == "", "only the ack again: nothing new to say"


# --------------------------------------------------------------------------- in a session


@pytest.fixture
def voices() -> list[SilenceSynth]:
    return [SilenceSynth("silence-a"), SilenceSynth("silence-b")]


async def open_session(
    engine: Engine, sent: Sent, *, character: str = "bram", acks: bool = True, audio: bool = True, sid: str = "s1"
) -> Session:
    session = Session(engine, sid, engine.characters[character], PLAYER, sent, audio=audio, acks=acks)
    await session.open({})
    cache = engine.line_cache
    if session.acks and cache is not None:
        voice = session.voice_out.voice
        await eventually(lambda: all(cache.pinned(a.text, voice) for a in session.character.acks), what="acks pinned")
    return session


@pytest.fixture
async def ack_engine(make_engine: MakeEngine, voices: list[SilenceSynth], tmp_path: Path) -> AsyncGenerator[Engine, None]:
    """An engine of doubles with a line cache (acks are pre-rendered lines)."""
    engine = make_engine(ScriptedChat([FAST]), voices)
    engine.line_cache = LineCache(tmp_path / "lines", voices[0])
    yield engine


@pytest.fixture
async def sessions() -> AsyncGenerator[list[Session], None]:
    opened: list[Session] = []
    yield opened
    for s in opened:
        if not s.closed:
            await s.close()


def audio_of(sent: Sent, turn: int) -> list[msg.ReplyAudio]:
    return sent.of(msg.ReplyAudio, turn)


def bram_acks(engine: Engine, kind: str) -> set[str]:
    return {a.text for a in engine.characters["bram"].acks if kind in a.kinds}


async def test_an_ack_goes_out_first_with_ack_true_and_its_visemes(ack_engine: Engine, sessions: list[Session]) -> None:
    sent = Sent()
    sessions.append(session := await open_session(ack_engine, sent))
    chat = ack_engine.chat
    assert isinstance(chat, ScriptedChat)
    chat.replies = [SLOW_START]
    turn = session.start_turn("text", QUESTION)
    first = await sent.first(msg.ReplyAudio, turn=1)
    assert first.ack is True and first.chunk == 0 and first.start == 0.0
    assert first.text in bram_acks(ack_engine, "question"), "a question gets a question's ack"
    assert not chat.calls or chat.calls[0].tokens == 0, "said before the model's first word"
    await turn.wait()

    msgs = sent.turn(1)
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    audio = audio_of(sent, 1)
    assert [a.chunk for a in audio] == list(range(len(audio))) and len(audio) >= 2
    assert [a.ack for a in audio] == [True] + [False] * (len(audio) - 1)
    assert audio[1].start == pytest.approx(first.duration, abs=1e-3), "the reply's audio follows the ack's"
    # The ack's own lip and word tracks, right after it, before anything of the reply.
    i = msgs.index(first)
    tracks = [m for m in msgs[i + 1:i + 3] if isinstance(m, msg.Cue)]
    assert [(c.kind, c.chunk) for c in tracks] == [("visemes", 0), ("words", 0)]
    assert tracks[0].visemes and tracks[1].words
    texts = sent.of(msg.ReplyText, 1)
    assert msgs.index(texts[0]) < i and texts[0].delta == first.text + " ", "its text goes ahead of its audio"

    # The model was told what was already said, and went on after it.
    assert chat.calls[0].messages[-2:] == [ChatMessage("user", QUESTION), ChatMessage("assistant", first.text)]
    end = end_of(sent, 1)
    heard = f"{first.text} {DEFAULT_REPLY}"
    assert (end.status, end.text) == ("ok", heard)
    assert "".join(t.delta for t in texts) == heard
    assert [e.content for e in session.memory.history] == [QUESTION, heard], "memory keeps the ack and the reply"
    assert end.timings["ack_sent"] <= end.timings["llm_first_token"] <= end.timings["first_audio_sent"]


async def test_acks_off_is_the_reply_alone(ack_engine: Engine, sessions: list[Session]) -> None:
    sent = Sent()
    sessions.append(session := await open_session(ack_engine, sent, acks=False))
    await session.start_turn("text", QUESTION).wait()
    audio = audio_of(sent, 1)
    assert audio and not any(a.ack for a in audio)
    assert end_of(sent, 1).text == DEFAULT_REPLY and "ack_sent" not in end_of(sent, 1).timings
    chat = ack_engine.chat
    assert isinstance(chat, ScriptedChat) and chat.calls[0].messages[-1] == ChatMessage("user", QUESTION)


async def test_the_engines_acks_setting_overrides_the_session(
    make_engine: MakeEngine, voices: list[SilenceSynth], tmp_path: Path, sessions: list[Session]
) -> None:
    engine = make_engine(ScriptedChat([FAST]), voices, acks=False)  # the --baseline preset
    engine.line_cache = LineCache(tmp_path / "lines", voices[0])
    sent = Sent()
    sessions.append(session := await open_session(engine, sent, acks=True))
    assert not session.acks
    await session.start_turn("text", QUESTION).wait()
    assert not any(a.ack for a in audio_of(sent, 1)) and end_of(sent, 1).text == DEFAULT_REPLY


def test_session_open_asks_for_acks_unless_told_not_to() -> None:
    opened = decode(msgpack.packb({"v": 1, "type": "session.open", "character": "bram"}))
    assert isinstance(opened, SessionOpen) and opened.acks is True
    off = decode(msgpack.packb({"v": 1, "type": "session.open", "character": "bram", "acks": False}))
    assert isinstance(off, SessionOpen) and off.acks is False
    wire = msg.encode(msg.ReplyAudio(chunk=0, pcm=b"", rate=24000, start=0.0, duration=0.0, text="x"))
    assert msgpack.unpackb(wire)["ack"] is False, "ack is always on the wire"


async def test_no_ack_twice_in_a_row_across_turns(ack_engine: Engine, sessions: list[Session]) -> None:
    sent = Sent()
    sessions.append(session := await open_session(ack_engine, sent))
    said = []
    for n in range(1, 5):
        await session.start_turn("text", NEUTRAL).wait()
        said.append(audio_of(sent, n)[0].text)
        assert audio_of(sent, n)[0].ack
    assert all(a != b for a, b in itertools.pairwise(said)), said
    assert set(said) <= bram_acks(ack_engine, "any")


async def test_no_ack_in_a_text_only_session_or_before_a_scripted_line(ack_engine: Engine, sessions: list[Session]) -> None:
    sent = Sent()
    sessions.append(text_only := await open_session(ack_engine, sent, audio=False, sid="s-text"))
    assert not text_only.acks
    await text_only.start_turn("text", QUESTION).wait()
    assert end_of(sent, 1).text == DEFAULT_REPLY

    sent2 = Sent()
    sessions.append(aldric := await open_session(ack_engine, sent2, character="aldric", sid="s-aldric"))
    # Aldric's story answers this with his scripted refusal (pre-rendered, no wait): no ack.
    await aldric.start_turn("text", "Please open the gate and let me through.").wait()
    assert sent2.of(msg.StoryMessage, 1), "the story answered"
    audio = audio_of(sent2, 1)
    assert audio and not any(a.ack for a in audio)
    chat = ack_engine.chat
    assert isinstance(chat, ScriptedChat) and len(chat.calls) == 1, "no model call for the scripted line"


# --------------------------------------------------------------------------- a missed budget


@pytest.mark.parametrize("acks_on", [True, False])
async def test_a_missed_budget_produces_audio(
    make_engine: MakeEngine, voices: list[SilenceSynth], tmp_path: Path, sessions: list[Session], acks_on: bool
) -> None:
    engine = make_engine(ScriptedChat([DEFAULT_REPLY], never_first_token=True), voices, budget_llm_first_token_ms=300)
    engine.line_cache = LineCache(tmp_path / "lines", voices[0])
    sent = Sent()
    sessions.append(session := await open_session(engine, sent, acks=acks_on))
    await session.start_turn("text", QUESTION).wait()
    end = end_of(sent, 1)
    assert end.status == "degraded" and any(d["stage"] == "llm" for d in end.degraded or [])
    audio = audio_of(sent, 1)
    fallbacks = {f.text for f in engine.characters["bram"].fallbacks}
    if acks_on:
        assert [a.ack for a in audio] == [True, False], "the ack at once, the fallback line at the budget"
        assert audio[0].text in bram_acks(engine, "question") and audio[1].text in fallbacks
        assert end.timings["ack_sent"] <= end.timings["first_audio_sent"]
        assert end.text == f"{audio[0].text} {audio[1].text}"
    else:
        assert [(a.ack, a.text in fallbacks) for a in audio] == [(False, True)], "the fallback line, as audio"
    assert end.timings["first_audio_sent"] >= 300, "the fallback is said at the budget, not before"
    sent_visemes = [c for c in sent.of(msg.Cue, 1) if c.kind == "visemes"]
    assert [c.chunk for c in sent_visemes] == [a.chunk for a in audio], "every chunk has its visemes"


# --------------------------------------------------------------------------- speculative turns


async def test_a_speculative_turn_says_its_ack_at_commit_when_no_reply_audio_is_held(
    ack_engine: Engine, sessions: list[Session]
) -> None:
    sent = Sent()
    sessions.append(session := await open_session(ack_engine, sent))
    chat = ack_engine.chat
    assert isinstance(chat, ScriptedChat)
    chat.replies = [SLOW_START]
    spec = session.start_turn("text", QUESTION, speculative=True)
    await eventually(lambda: bool(chat.calls), what="the model asked")
    assert sent.messages == [] and spec.delivered.chunks == 0, "held, and nothing said yet"
    await session.commit_turn(spec)
    first = await sent.first(msg.ReplyAudio, turn=1)
    assert first.ack and first.chunk == 0
    await spec.wait()
    audio = audio_of(sent, 1)
    assert [a.ack for a in audio] == [True] + [False] * (len(audio) - 1)
    assert end_of(sent, 1).text == f"{first.text} {DEFAULT_REPLY}"


async def test_at_commit_the_ack_goes_ahead_of_the_reply_text_held(
    ack_engine: Engine, voices: list[SilenceSynth], sessions: list[Session]
) -> None:
    sent = Sent()
    sessions.append(session := await open_session(ack_engine, sent))
    voices[0].delay_s = 0.5  # the reply's text is written long before its first chunk is voiced
    spec = session.start_turn("text", QUESTION, speculative=True)
    await eventually(lambda: bool(spec.delivered.text_sent), what="the reply's text held")
    assert spec.delivered.chunks == 0
    await session.commit_turn(spec)
    await spec.wait()
    msgs = sent.turn(1)
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    kinds = [type(m).__name__ for m in msgs[:3]]
    assert kinds == ["TurnStart", "ReplyText", "ReplyAudio"], kinds
    ack_audio = msgs[2]
    assert isinstance(ack_audio, msg.ReplyAudio) and ack_audio.ack
    assert "".join(t.delta for t in sent.of(msg.ReplyText, 1)) == f"{ack_audio.text} {DEFAULT_REPLY}"
    assert end_of(sent, 1).text == f"{ack_audio.text} {DEFAULT_REPLY}"


async def test_no_ack_at_commit_when_the_reply_audio_is_ready(ack_engine: Engine, sessions: list[Session]) -> None:
    sent = Sent()
    sessions.append(session := await open_session(ack_engine, sent))
    spec = session.start_turn("text", QUESTION, speculative=True)
    await eventually(lambda: " ".join(spec.delivered.audio_text) == DEFAULT_REPLY, what="the reply voiced, held")
    await session.commit_turn(spec)
    await spec.wait()
    audio = audio_of(sent, 1)
    assert [a.chunk for a in audio] == [0, 1, 2] and not any(a.ack for a in audio)
    assert end_of(sent, 1).text == DEFAULT_REPLY
    assert [e.content for e in session.memory.history] == [QUESTION, DEFAULT_REPLY], "memory has what was heard"
