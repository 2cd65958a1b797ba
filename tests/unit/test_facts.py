"""Memory that stays true (npc_engine/facts.py): what a character knows of the player beyond
the history. Extraction of what the player told, the cap and dedupe, the prompt lines, gossip
(an exit's ``tell``) and what each character witnessed, persistence and save blobs; on the
unit layer, with the scripted chat double. The real-model side is ``tests/test_facts.py``."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import msgpack
import pytest

from npc_engine.characters import Character
from npc_engine.engine import Engine
from npc_engine.facts import MAX_FACTS, FactBook, extract_told, fact_lines, learned_from_effects, told_name
from npc_engine.pipeline.prompt import persona_prompt, system_prompt
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.incoming import Event
from npc_engine.server.registry import SessionRegistry
from npc_engine.server.state import StateRequests
from npc_engine.session.session import Session
from npc_engine.store import (
    BLOB_MIN_READER,
    BLOB_VERSION,
    AsyncStore,
    Fact,
    blob_signature,
    merge_facts,
    parse_blob,
)
from npc_engine.story import FactTold, FlagSet, load_story
from npc_engine.world import check_paths, load_world
from tests.doubles import ChatCall, ScriptedChat
from tests.harness import GOSSIP, OFFER, gossip_story
from tests.unit.conftest import DEFAULT_REPLY, NEUTRAL, REPO, unit_config
from tests.unit.support import Sent, end_of

PLAYER = "p-facts"
# --------------------------------------------------------------------------- told: extraction


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("My name is Ana.", "Ana"),
        ("my name is ana and I need a sword", "Ana"),
        ("Hi, I'm Ana.", "Ana"),
        ("Call me Ana Lopez.", "Ana Lopez"),
        ("The name's Bond.", "Bond"),
        ("I am O'Brien, from the coast.", "O'Brien"),
    ],
)
def test_a_name_the_player_gives_is_a_told_fact(line: str, name: str) -> None:
    facts = extract_told(line)
    assert [f.source for f in facts] == ["told"]
    assert told_name(facts) == name


@pytest.mark.parametrize(
    "line",
    [
        "I'm tired.",
        "I'm Tired of this village.",
        "I'm Sorry.",
        "call me later",
        "What is my name?",
        "Is my name Ana?",
        "My name doesn't matter.",
        "My name is not important.",
        "I am Bram's friend.",
        "Nice weather today.",
    ],
)
def test_lines_that_do_not_plainly_give_a_name_teach_nothing(line: str) -> None:
    assert told_name(extract_told(line)) is None


def test_a_promise_is_remembered_in_the_characters_words() -> None:
    assert [f.text for f in extract_told("I'll find your hammer, don't worry.")] == [
        "The player promised to find your hammer."
    ]
    assert [f.text for f in extract_told("I will bring you my sword.")] == [
        "The player promised to bring you their sword."
    ]
    for line in ("I'll never find it.", "I'll help you, ok?", "Don't worry, I can help you find your hammer."):
        assert extract_told(line) == [], line


# --------------------------------------------------------------------------- cap and dedupe


def test_facts_are_deduplicated_capped_oldest_first_and_the_name_is_kept() -> None:
    name = Fact("told", "The player's name is Ana.", "name")
    facts = merge_facts([], [name], cap=3)
    facts = merge_facts(facts, [Fact("heard", "The player paid the toll.")], cap=3)
    again = merge_facts(facts, [Fact("heard", "the player paid the toll")], cap=3)
    assert again == facts, "the same line (any case, any end) is not learned twice"
    for n in range(4):
        facts = merge_facts(facts, [Fact("did", f"step {n}", f"flag:step_{n}")], cap=3)
    assert len(facts) == 3
    assert facts[0] == name, "the player's name outlives the cap"
    assert [f.text for f in facts[1:]] == ["step 2", "step 3"], "the oldest others went first"
    renamed = merge_facts(facts, [Fact("told", "The player's name is Bee.", "name")], cap=3)
    assert told_name(renamed) == "Bee" and sum(f.key == "name" for f in renamed) == 1


# --------------------------------------------------------------------------- the prompt


def test_fact_lines_speak_of_the_player_by_name_and_say_where_gossip_came_from() -> None:
    facts = [
        Fact("did", "quest started", "flag:quest_started"),
        Fact("heard", "The player helped Bram find his hammer."),
        Fact("told", "The player's name is Ana.", "name"),
        Fact("told", "The player promised to bring you the player's ring."),
        Fact("did", "gate open", "flag:gate_open"),
    ]
    assert fact_lines(facts, "Ana") == [
        "They told you their name is Ana.",
        "You heard: Ana helped Bram find his hammer.",
        "Ana promised to bring you Ana's ring.",
        "What happened while Ana was with you: quest started, gate open.",
    ]
    assert fact_lines(facts[1:2], "traveller") == ["You heard: The traveller helped Bram find his hammer."]
    assert fact_lines(facts[1:2], None) == ["You heard: They helped Bram find his hammer."]
    assert fact_lines([], "Ana") == []


def test_facts_go_between_the_persona_and_the_objective(world: tuple[dict[str, Character], object]) -> None:
    bram = world[0]["bram"]
    persona = persona_prompt(bram)
    assert "You know only what is written here" in persona, "the persona says the list is all it knows"
    text = system_prompt(bram, "Ask for help.", (), ["They told you their name is Ana."], player_name="Ana")
    assert text.startswith(persona), "the cached prefix (the persona) is unchanged by facts"
    assert "What you know about them:\n- They told you their name is Ana." in text
    assert text.index("What you know about them") < text.index("Your goal right now")
    assert "What you know about them" not in system_prompt(bram, None, (), [], player_name="Ana")


# --------------------------------------------------------------------------- gossip and witnesses


def test_tell_reaches_its_character_and_flags_only_the_witness(tmp_path: Path) -> None:
    story = load_story(gossip_story(tmp_path / "story"))
    state = story.initial_state({"player_name": "Ana"})
    effects = story.on_player_line(state, "bram", OFFER)
    assert FactTold("marta", GOSSIP) in effects and FlagSet("quest_started", True) in effects
    learned = learned_from_effects(effects, "bram")
    assert learned["marta"] == [Fact("heard", GOSSIP)]
    assert Fact("did", "quest started", "flag:quest_started") in learned["bram"]
    assert "aldric" not in learned
    assert all(f.source == "did" for f in learned["bram"]), "Bram saw it, he was not told"
    nobody = learned_from_effects(effects, None)
    assert set(nobody) == {"marta"}, "an event for no session: nobody witnessed its flags"


def test_check_reports_a_tell_to_an_unknown_character_at_its_line(tmp_path: Path) -> None:
    shutil.copytree(REPO / "characters", tmp_path / "characters")
    path = gossip_story(tmp_path / "story", character="marty") / "oakhollow.yaml"
    report = check_paths([tmp_path / "characters", tmp_path / "story"])
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "tell:" in text)
    errors = [(p.line, p.message) for p in report.errors]
    assert errors == [(line, "tell: unknown character 'marty' (did you mean 'marta'?)")], errors
    clean = check_paths([tmp_path / "characters", gossip_story(tmp_path / "ok")])
    assert clean.errors == [] and clean.story is not None


def test_a_tell_needs_a_short_fact(tmp_path: Path) -> None:
    folder = gossip_story(tmp_path / "story")
    path = folder / "oakhollow.yaml"
    text = path.read_text()
    path.write_text(text.replace(f'fact: "{GOSSIP}"', 'fact: "  "'))
    report = check_paths([REPO / "characters", folder])
    assert any("the fact is empty" in p.message for p in report.errors), report.problems
    path.write_text(text.replace(GOSSIP, "The player " + "walked and " * 15 + "came back."))
    report = check_paths([REPO / "characters", folder])
    assert report.errors == [] and any("keep it to one short sentence" in p.message for p in report.warnings)


# --------------------------------------------------------------------------- sessions


class MakeGossipEngine(Protocol):
    def __call__(self, chat: ScriptedChat, **overrides: Any) -> Engine: ...


@pytest.fixture
async def gossip_engine(tmp_path: Path) -> AsyncIterator[MakeGossipEngine]:
    gossip_story(tmp_path / "story")
    engines: list[Engine] = []

    def make(chat: ScriptedChat, **overrides: Any) -> Engine:
        # Read at each start: a test may change the story first.
        characters, story = load_world(REPO / "characters", tmp_path / "story")
        cfg = unit_config(tmp_path / "data", story=tmp_path / "story", **overrides)
        engines.append(Engine.assemble(cfg, characters, story, chat))
        return engines[-1]

    yield make
    for eng in engines:
        await eng.close()


async def open_session(
    engine: Engine, character: str, sessions: list[Session], tap: Callable[[msg.Outgoing], None] | None = None
) -> tuple[Session, Sent]:
    """An open text session with ``character``; ``tap`` sees each message before it is recorded."""
    sent = Sent()

    def send(message: msg.Outgoing) -> None:
        if tap is not None:
            tap(message)
        sent(message)

    session = Session(engine, f"{character}-{len(sessions)}", engine.characters[character], PLAYER, send, audio=False)
    sessions.append(session)
    await session.open({"player_name": "traveller"})
    return session, sent


def instructions(call: ChatCall) -> str:
    """A call's system messages: the system prompt, and a note before the line when the
    turn's system prompt changed since the cache was filled (``keep_cached_system``)."""
    return "\n".join(m.content for m in call.messages if m.role == "system")


async def say(session: Session, sent: Sent, text: str) -> msg.TurnEnd:
    turn = session.start_turn("text", text)
    await turn.wait()
    assert turn.id is not None
    return end_of(sent, turn.id)


async def test_a_name_told_reaches_the_next_prompt_and_survives_a_restart(
    gossip_engine: MakeGossipEngine,
) -> None:
    chat = ScriptedChat([DEFAULT_REPLY])
    engine = gossip_engine(chat)
    sessions: list[Session] = []
    bram, sent = await open_session(engine, "bram", sessions)
    assert (await say(bram, sent, "My name is Ana.")).status == "ok"
    assert told_name(engine.facts.known(PLAYER, "bram")) == "Ana", "learned before turn.end went out"
    await say(bram, sent, NEUTRAL)
    system = instructions(chat.calls[-1])
    assert "You are talking to Ana." in system, "the told name wins over the game's default"
    assert "They told you their name is Ana." in system
    assert told_name(engine.facts.known(PLAYER, "marta")) is None
    for s in sessions:
        await s.close()
    assert engine.facts.known(PLAYER, "bram") == [], "a closed session's list leaves memory"
    # A new engine on the same data dir, with no history in the prompt: the fact is still there.
    chat2 = ScriptedChat([DEFAULT_REPLY])
    again = gossip_engine(chat2, history_turns=0, history_block=1)
    bram2, sent2 = await open_session(again, "bram", sessions)
    await say(bram2, sent2, NEUTRAL)
    system = instructions(chat2.calls[-1])
    assert "They told you their name is Ana." in system
    assert not any("My name is Ana" in m.content for m in chat2.calls[-1].messages[1:]), "not from the history"
    for s in sessions:
        await s.close()


async def test_gossip_reaches_the_told_character_only_and_the_witness_keeps_its_flags(
    gossip_engine: MakeGossipEngine,
) -> None:
    chat = ScriptedChat([DEFAULT_REPLY])
    engine = gossip_engine(chat)
    sessions: list[Session] = []
    on_disk_at_end: list[list[tuple[str, str]]] = []

    def read_at_turn_end(message: msg.Outgoing) -> None:
        if isinstance(message, msg.TurnEnd):  # what a kill right after turn.end would leave
            with contextlib.closing(sqlite3.connect(engine.cfg.db_path)) as db:
                on_disk_at_end.append(db.execute("SELECT character, text FROM facts WHERE player=?", (PLAYER,)).fetchall())

    bram, bram_sent = await open_session(engine, "bram", sessions, tap=read_at_turn_end)
    marta, marta_sent = await open_session(engine, "marta", sessions)
    await say(bram, bram_sent, OFFER)
    assert on_disk_at_end and {("marta", GOSSIP), ("bram", "quest started")} <= set(on_disk_at_end[-1]), (
        "the facts a turn taught are committed before its turn.end"
    )
    assert Fact("heard", GOSSIP) in engine.facts.known(PLAYER, "marta"), "an open session learns at once"
    assert Fact("did", "quest started", "flag:quest_started") in engine.facts.known(PLAYER, "bram")
    assert not any(f.source == "did" for f in engine.facts.known(PLAYER, "marta")), "Marta was not there"
    assert await engine.store.load_facts(PLAYER, "aldric") == []
    await say(marta, marta_sent, NEUTRAL)
    system = instructions(chat.calls[-1])
    assert "You heard: The traveller offered to find Bram's hammer." in system
    # Aldric had no session open: he learns nothing; Marta's fact is on disk for her next session.
    aldric, aldric_sent = await open_session(engine, "aldric", sessions)
    await say(aldric, aldric_sent, NEUTRAL)
    assert "offered to find" not in instructions(chat.calls[-1])
    for s in sessions:
        await s.close()


async def test_a_character_without_a_session_learns_gossip_from_an_event(
    gossip_engine: MakeGossipEngine, tmp_path: Path
) -> None:
    chat = ScriptedChat([DEFAULT_REPLY])
    # A trigger that only tells, sent for Bram's session: Bram witnesses its flag, Marta hears.
    path = tmp_path / "story" / "oakhollow.yaml"
    path.write_text(path.read_text().replace(
        "triggers:\n",
        "triggers:\n  - on_event: rumour.spread\n    set: {rumour_spread: true}\n"
        '    tell: {character: marta, fact: "The player chased a thief."}\n',
    ))
    engine = gossip_engine(chat)
    sessions: list[Session] = []
    bram, _ = await open_session(engine, "bram", sessions)
    registry = SessionRegistry()
    registry.add(bram, b"game")
    replies: list[msg.Outgoing] = []
    await StateRequests(engine, registry).event(
        b"game", Event(type="event", id=1, name="rumour.spread", session=bram.id), replies.append
    )
    ok = replies[0]
    assert isinstance(ok, msg.EventOk)
    assert {"kind": "fact_told", "character": "marta", "fact": "The player chased a thief."} in ok.effects
    assert await engine.store.load_facts(PLAYER, "marta") == [Fact("heard", "The player chased a thief.")]
    assert Fact("did", "rumour spread", "flag:rumour_spread") in engine.facts.known(PLAYER, "bram")
    marta, marta_sent = await open_session(engine, "marta", sessions)
    await say(marta, marta_sent, NEUTRAL)
    assert "You heard: The traveller chased a thief." in instructions(chat.calls[-1])
    for s in sessions:
        await s.close()


# --------------------------------------------------------------------------- saves


async def test_facts_travel_in_save_blobs_and_a_load_replaces_them(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path / "db.sqlite")
    book = FactBook(store)
    try:
        await book.hold(PLAYER, "bram")
        await book.learn(PLAYER, {"bram": [Fact("told", "The player's name is Ana.", "name")]})
        blob = await store.export_blob(PLAYER)
        save = parse_blob(blob, store.save_key)
        assert save.version == BLOB_VERSION and save.facts == {"bram": [Fact("told", "The player's name is Ana.", "name")]}
        await book.learn(PLAYER, {"bram": [Fact("told", "The player's name is Bee.", "name")]})
        assert told_name(book.known(PLAYER, "bram")) == "Bee"
        await store.replace_player(PLAYER, save.story, save.history, save.facts)
        await book.reload(PLAYER)
        assert told_name(book.known(PLAYER, "bram")) == "Ana", "the loaded save's facts, in memory too"
        # A format-2 save (from before facts) loads, with no facts.
        body = msgpack.packb({"player": PLAYER, "story": None, "history": {}}, use_bin_type=True)
        old = msgpack.packb({
            "magic": "npc-engine-state", "version": 2, "min_version": BLOB_MIN_READER,
            "hmac": blob_signature(store.save_key, 2, BLOB_MIN_READER, body), "body": body,
        }, use_bin_type=True)
        assert parse_blob(old, store.save_key).facts == {}
        book.release(PLAYER, "bram")
    finally:
        await store.close()


def test_the_cap_is_small() -> None:
    assert 4 <= MAX_FACTS <= 20, "a small model reads a short list; the prompt prefix stays short"
