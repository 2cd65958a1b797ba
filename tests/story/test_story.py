"""Story logic: conditions, intents, transitions, once/sticky, templates, state round trips, the full quest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from npc_engine.story import (
    Beat,
    BeatEntered,
    EmitEvent,
    Exit,
    FlagSet,
    IntentMatched,
    SayLine,
    Story,
    StoryState,
    load_story,
)
from npc_engine.story.conditions import ConditionError, parse_condition
from npc_engine.story.intents import Intent, classify, normalise, rank, stem
from npc_engine.story.lines import Line, fill_template

Writer = Callable[[str, str], Path]


# --------------------------------------------------------------------------- conditions


class Env:
    """A plain lookup for evaluating conditions without a story."""

    def __init__(self, values: dict[str, object], visits: dict[str, int] | None = None) -> None:
        self.values = values
        self.visit_counts = visits or {}

    def lookup(self, name: str) -> object:
        return self.values.get(name)

    def visits(self, beat_id: str) -> int:
        return self.visit_counts.get(beat_id, 0)

    def said(self, line_id: str) -> bool:
        return line_id == "bram.greet.1"


@pytest.mark.parametrize(
    ("expr", "values", "expected"),
    [
        ("has_sword and not gate_open", {"has_sword": True, "gate_open": False}, True),
        ("has_sword and not gate_open", {"has_sword": True, "gate_open": True}, False),
        ("gold >= 10", {"gold": 10}, True),
        ("gold >= 10", {"gold": 9.5}, False),
        ("gold >= 10", {}, False),  # unset is not a number: ordering is false, never an error
        ("gold > -1", {"gold": 0}, True),
        ('beat == "found_key"', {"beat": "found_key"}, True),
        ("beat == 'found_key'", {"beat": "forge"}, False),
        ('beat != "found_key"', {"beat": "forge"}, True),
        ("gate_open == false", {}, True),  # unset equals false, 0 and ""
        ("gold == 0", {}, True),
        ('name == ""', {}, True),
        ('gold == "10"', {"gold": 10}, False),  # text never equals a number
        ('gold < "10"', {"gold": 5}, False),
        ('name < "b"', {"name": "a"}, True),
        ("a or b and c", {"a": True, "b": False, "c": False}, True),  # and binds tighter
        ("(a or b) and c", {"a": True, "b": False, "c": False}, False),
        ("not not a", {"a": 1}, True),
        ("true", {}, True),
        ("false or 0", {}, False),
        ('visited("forge")', {}, True),
        ('visited("mill")', {}, False),
        ('visits("forge") >= 2', {}, True),
        ('said("bram.greet.1") and not said("x")', {}, True),
    ],
)
def test_conditions_evaluate(expr: str, values: dict[str, object], expected: bool) -> None:
    assert parse_condition(expr).evaluate(Env(values, {"forge": 2})) is expected


@pytest.mark.parametrize(
    ("expr", "column", "fragment"),
    [
        ("gold >=", 8, "expected a value after '>='"),
        ("a && b", 3, "use 'and' instead of '&&'"),
        ("a || b", 3, "use 'or'"),
        ("!a", 1, "use 'not'"),
        ("gold = 3", 6, "use '=='"),
        ("gold > = 3", 6, "write '>=' without a space"),
        ("visited(forge)", 9, 'like visited("forge")'),
        ('visted("forge")', 1, "unknown function 'visted' (did you mean 'visited'?)"),
        ('__import__("os")', 1, "unknown function '__import__'"),
        ("(a or b", 8, "never closed"),
        ("", 1, "empty"),
        ("a b", 3, "expected 'and', 'or'"),
        ("1 < x < 3", 7, "cannot be chained"),
        ('beat == "x', 9, "never closed"),
        ("a and", 6, "ends too early"),
        ("a.b", 2, "unexpected character '.'"),
    ],
)
def test_condition_syntax_errors_have_a_column(expr: str, column: int, fragment: str) -> None:
    with pytest.raises(ConditionError) as info:
        parse_condition(expr)
    assert info.value.column == column
    assert fragment in str(info.value)


def test_condition_reports_names_and_calls() -> None:
    cond = parse_condition('has_sword and gold >= 10 or visited("forge") and beat == "x"')
    assert cond.names() == {"has_sword", "gold", "beat"}
    assert cond.calls() == [("visited", "forge")]


# --------------------------------------------------------------------------- intents


def test_normalise_and_stem() -> None:
    assert normalise("Where’s   my HAMMER?!") == "wheres my hammer"
    assert [stem(w) for w in ("gates", "opened", "opening", "glass", "us", "needed")] == [
        "gate",
        "open",
        "open",
        "glass",
        "us",
        "need",
    ]


def _intent(name: str, **rules: object) -> Intent:
    return Intent.model_validate({"name": name, **rules})


def test_intent_rules_and_reasons() -> None:
    hammer = _intent(
        "ask_about_hammer",
        examples=["what happened to your hammer"],
        keywords=["thief"],
        patterns=[r"\bstol(e|en)\b"],
    )
    m = hammer.score("What happened to your hammer?")
    assert (m.score, m.reason) == (1.0, "example 'what happened to your hammer'")
    m = hammer.score("the hammer, what about it")
    assert m.score == pytest.approx(0.9 * 2 / 3) and "(2/3 words)" in m.reason
    assert hammer.score("who is the thief").reason == "keyword 'thief'"
    assert hammer.score("my bag was stolen").reason == "pattern '\\\\bstol(e|en)\\\\b'"
    # One shared content word is not enough for an example: it would be a keyword.
    assert hammer.score("what a lovely day").score == 0.0


def test_intent_exclude_vetoes_and_stemming_matches_plurals() -> None:
    help_ = _intent("offer_help", keywords=["help"], exclude=["can't help"])
    assert help_.matches("I'll help")
    assert help_.matches("Helping is what I do")  # helping -> help
    m = help_.score("Sorry, I can't help you")
    assert m.score == 0.0 and m.reason == 'excluded by "can\'t help"'
    gate = _intent("gate", keywords=["gate"])
    assert gate.matches("open the gates")


def test_classify_picks_best_then_coverage_then_order() -> None:
    greet = _intent("greet", keywords=["hello"])
    hammer = _intent("hammer", keywords=["hammer"], examples=["where is the hammer"])
    # Both keywords would score 0.8; the full example scores 1.0.
    assert classify("hello, where is the hammer", [greet, hammer]).intent == "hammer"  # type: ignore[union-attr]
    # Equal score and coverage: the first listed wins (exit order).
    a, b = _intent("a", keywords=["x"]), _intent("b", keywords=["x"])
    assert classify("x", [a, b]).intent == "a"  # type: ignore[union-attr]
    assert classify("x", [b, a]).intent == "b"  # type: ignore[union-attr]
    assert classify("nothing relevant", [a, b]) is None
    strict = _intent("strict", examples=["open the north gate now"], min_score=0.9)
    assert strict.score("north gate").score == pytest.approx(0.9 * 2 / 4)
    assert classify("north gate", [strict]) is None
    assert [m.intent for m in rank("hello", [hammer, greet])] == ["greet", "hammer"]


def test_bad_regex_is_a_validation_error() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        _intent("x", patterns=["(unclosed"])


# --------------------------------------------------------------------------- templates


def test_templates_fill_known_names_and_leave_other_braces() -> None:
    assert fill_template("Hello, {player_name}!", {"player_name": "Wren"}) == "Hello, Wren!"
    assert fill_template("Hello, {nobody}.", {}) == "Hello, ."
    assert fill_template("A {b c} and {{x}}", {"x": 1}) == "A {b c} and {1}"
    assert Line(id="a.1", text="Hi {player_name}, {gold} gold").template_vars == ["player_name", "gold"]


# --------------------------------------------------------------------------- transitions

SMALL_STORY = """\
start: [intro, guard_post]
vars:
  player_name: traveller
  gold: 0
  has_key: false
intents:
  greet:
    keywords: [hello]
  ask_key:
    keywords: [key]
  bribe:
    keywords: [gold, coin]
triggers:
  - on_event: item.picked_up
    data: {item: [key, spare_key]}
    set: {has_key: true}
beats:
  intro:
    character: smith
    lines:
      - id: smith.intro.1
        text: Welcome, {player_name}.
    exits:
      - on_intent: greet
        set: {greeted: true}
      - on_intent: ask_key
        goto: key_lost
        emit: [quest.started]
  key_lost:
    character: smith
    once: true
    lines:
      - id: smith.key.1
        text: Lost it near the mill.
    objective: Ask the player to find the key.
    exits:
      - on_event: area.entered
        data: {area: mill}
        goto: at_mill
      - when: has_key
        goto: key_back
  at_mill:
    character: smith
    objective: Hope the player finds the key soon.
    exits:
      - when: has_key
        goto: key_back
  key_back:
    character: smith
    lines:
      - id: smith.back.1
        text: My key!
  guard_post:
    character: guard
    objective: Guard the gate.
    exits:
      - on_intent: bribe
        when: gold >= 10
        goto: guard_open
        emit:
          - name: door.open
            data: {door: gate}
      - on_intent: bribe
        goto: guard_refuses
  guard_refuses:
    character: guard
    lines:
      - id: guard.no.1
        text: Not for that little.
    exits:
      - goto: guard_post
  guard_open:
    character: guard
    once: true
    lines:
      - id: guard.open.1
        text: Go on then.
    exits:
      - on_intent: greet
        goto: guard_open
"""


@pytest.fixture
def small_story(write: Writer, tmp_path: Path) -> Story:
    write("story/small.yaml", SMALL_STORY)
    return load_story(tmp_path / "story")


def test_initial_state_enters_start_beats_silently(small_story: Story) -> None:
    state = small_story.initial_state({"player_name": "Wren", "vip": True})
    assert small_story.active_beat(state, "smith").id == "intro"  # type: ignore[union-attr]
    assert small_story.active_beat(state, "guard").id == "guard_post"  # type: ignore[union-attr]
    assert small_story.active_beat(state, "nobody") is None
    assert state.vars == {"player_name": "Wren", "gold": 0}
    assert state.flags == {"has_key": False, "vip": True}  # true/false values are flags
    assert state.said_lines == set()


def test_game_vars_must_be_saveable_values(small_story: Story) -> None:
    with pytest.raises(ValueError, match="'player_name' must be true/false, a number or text, not NoneType"):
        small_story.initial_state({"player_name": None})  # type: ignore[dict-item]


def test_start_beat_lines_are_spoken_at_the_first_player_line(small_story: Story) -> None:
    state = small_story.initial_state({"player_name": "Wren"})
    effects = small_story.on_player_line(state, "smith", "nice weather")
    assert effects == [SayLine("smith", "smith.intro.1", "Welcome, Wren.")]
    # intro is sticky and has no objective: its lines answer anything without an exit...
    assert small_story.on_player_line(state, "smith", "nice weather") == effects


def test_intent_exit_fires_once_per_line_with_effects_in_order(small_story: Story) -> None:
    state = small_story.initial_state()
    effects = small_story.on_player_line(state, "smith", "Hello! Have you lost a key?")
    # greet and ask_key both match (keyword 0.8, one word each): the first exit listed wins.
    assert effects[0] == IntentMatched("smith", "greet", 0.8, "keyword 'hello'")
    assert effects[1:] == [FlagSet("greeted", True)]
    assert small_story.active_beat(state, "smith").id == "intro"  # type: ignore[union-attr]

    effects = small_story.on_player_line(state, "smith", "what about the key")
    assert [type(e) for e in effects] == [IntentMatched, EmitEvent, BeatEntered, SayLine]
    assert effects[1] == EmitEvent("quest.started", {})
    assert effects[2] == BeatEntered("key_lost", "smith")
    assert effects[3] == SayLine("smith", "smith.key.1", "Lost it near the mill.")
    # key_lost has an objective: once its lines are said the model talks, the story stays quiet.
    assert small_story.on_player_line(state, "smith", "hmm") == []
    assert small_story.objective(state, "smith") == "Ask the player to find the key."


def test_event_exit_needs_matching_data(small_story: Story) -> None:
    state = small_story.initial_state()
    small_story.on_player_line(state, "smith", "key?")
    assert small_story.on_event(state, "area.entered", {"area": "forge"}) == []
    assert small_story.on_event(state, "area.left", {"area": "mill"}) == []
    effects = small_story.on_event(state, "area.entered", {"area": "mill", "time": "night"})
    assert effects == [BeatEntered("at_mill", "smith")]


def test_trigger_fires_in_any_beat_and_auto_exit_follows(small_story: Story) -> None:
    state = small_story.initial_state()
    small_story.on_player_line(state, "smith", "key?")
    small_story.on_event(state, "area.entered", {"area": "mill"})
    effects = small_story.on_event(state, "item.picked_up", {"item": "spare_key"})  # list = any of
    assert effects == [
        FlagSet("has_key", True),
        BeatEntered("key_back", "smith"),
        SayLine("smith", "smith.back.1", "My key!"),
    ]
    assert small_story.on_event(state, "item.picked_up", {"item": "rock"}) == []


def test_exit_when_and_fallthrough_to_a_sticky_verbatim_beat(small_story: Story) -> None:
    state = small_story.initial_state()
    effects = small_story.on_player_line(state, "guard", "here is a coin")
    # gold < 10: the first bribe exit is not ready; the second refuses and bounces straight back.
    assert [e for e in effects if not isinstance(e, IntentMatched)] == [
        BeatEntered("guard_refuses", "guard"),
        SayLine("guard", "guard.no.1", "Not for that little."),
        BeatEntered("guard_post", "guard"),
    ]
    again = small_story.on_player_line(state, "guard", "some gold?")
    assert SayLine("guard", "guard.no.1", "Not for that little.") in again  # sticky: said each time
    assert state.visits["guard_refuses"] == 2

    state.assign("gold", 12)
    effects = small_story.on_player_line(state, "guard", "take this gold")
    assert EmitEvent("door.open", {"door": "gate"}) in effects
    assert small_story.active_beat(state, "guard").id == "guard_open"  # type: ignore[union-attr]


def test_once_beat_is_never_re_entered(small_story: Story) -> None:
    state = small_story.initial_state({"gold": 10})
    small_story.on_player_line(state, "guard", "gold")
    assert state.visits["guard_open"] == 1
    # guard_open's greet exit goes to itself, but a once beat cannot be entered twice: nothing fires.
    assert small_story.on_player_line(state, "guard", "hello") == []
    assert state.visits["guard_open"] == 1
    # Its lines were said on entry and are not repeated.
    assert "guard.open.1" in state.said_lines


def test_condition_true_sees_the_characters_beat(small_story: Story) -> None:
    state = small_story.initial_state()
    assert small_story.condition_true('beat == "guard_post"', state, "guard")
    assert not small_story.condition_true('beat == "guard_post"', state, "smith")
    assert small_story.condition_true('visited("intro") and not visited("key_lost")', state)
    with pytest.raises(ConditionError):
        small_story.condition_true("gold >", state)


def test_state_round_trips_through_json(small_story: Story) -> None:
    state = small_story.initial_state({"player_name": "Wren", "gold": 3.5})
    small_story.on_player_line(state, "smith", "key?")
    small_story.on_player_line(state, "smith", "hello")
    data = json.loads(json.dumps(state.to_dict()))
    assert data["version"] == 1
    restored = StoryState.from_dict(data)
    assert restored == state
    # The restored state keeps playing the same way as the original.
    a = small_story.on_event(state, "area.entered", {"area": "mill"})
    b = small_story.on_event(restored, "area.entered", {"area": "mill"})
    assert a == b and restored == state


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"version": 2}, "version 2 is not supported"),
        ([], "must be a mapping"),
        ({"version": 1, "flags": {"a": "yes"}}, "'flags' must map names to true/false"),
        ({"version": 1, "said_lines": "x"}, "'said_lines' must be a list"),
        ({"version": 1, "current": {"bram": 3}}, "'current' must map names to beat ids"),
    ],
)
def test_state_from_dict_rejects_what_to_dict_never_writes(data: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        StoryState.from_dict(data)  # type: ignore[arg-type]


def test_saved_state_naming_a_removed_beat_has_no_active_beat(small_story: Story) -> None:
    state = StoryState.from_dict({"version": 1, "current": {"smith": "deleted_beat"}})
    assert small_story.active_beat(state, "smith") is None
    assert small_story.on_player_line(state, "smith", "hello") == []


# --------------------------------------------------------------------------- built in code


def _beat(id: str, character: str | list[str], **kw: object) -> Beat:
    return Beat.model_validate({"id": id, "character": character, **kw})


def test_unconditional_automatic_loop_terminates() -> None:
    story = Story(
        [
            _beat("a", "x", objective="A.", exits=[{"goto": "b"}]),
            _beat("b", "x", objective="B.", exits=[{"goto": "a"}]),
        ],
        start=["a"],
    )
    state = story.initial_state()
    # a -> b -> a would bounce forever; each automatic exit fires at most once per call.
    assert story.active_beat(state, "x").id in {"a", "b"}  # type: ignore[union-attr]
    assert sum(state.visits.values()) <= 3


def test_shared_beat_moves_every_character_and_late_start_beats() -> None:
    story = Story(
        [
            _beat("duet", ["bram", "marta"], lines=[{"id": "duet.1", "text": "Together!"}]),
            _beat("solo", "bram", objective="Alone.", exits=[{"on_event": "bell", "goto": "duet"}]),
            _beat("late", "aldric", objective="Arrive.", when="bell_rung"),
        ],
        triggers=[Exit.model_validate({"on_event": "bell", "set": {"bell_rung": True}})],
        start=["solo", "late"],
    )
    state = story.initial_state()
    assert "aldric" not in state.current  # his start beat's `when` is false
    effects = story.on_event(state, "bell")
    assert BeatEntered("duet", "bram") in effects and BeatEntered("duet", "marta") in effects
    assert SayLine("bram", "duet.1", "Together!") in effects  # the first character listed speaks
    assert BeatEntered("late", "aldric") in effects  # entered as soon as its `when` holds
    assert story.active_beat(state, "marta").id == "duet"  # type: ignore[union-attr]


def test_story_rejects_broken_references_built_in_code() -> None:
    with pytest.raises(ValueError, match="unknown beat 'nowhere'"):
        Story([_beat("a", "x", objective="A.", exits=[{"on_event": "e", "goto": "nowhere"}])], start=["a"])
    with pytest.raises(ValueError, match="unknown intent 'greet'"):
        Story([_beat("a", "x", objective="A.", exits=[{"on_intent": "greet", "set": {"f": 1}}])], start=["a"])


def test_effects_serialise_with_their_kind() -> None:
    assert SayLine("bram", "b.1", "Hi").to_dict() == {
        "kind": "say_line",
        "character": "bram",
        "line_id": "b.1",
        "text": "Hi",
        "emotion": None,
        "gesture": None,
    }
    assert EmitEvent("door.open", {"door": "gate"}).to_dict()["kind"] == "emit_event"
    assert BeatEntered("a", "x").to_dict() == {"kind": "beat_entered", "beat": "a", "character": "x"}
    assert FlagSet("f", True).to_dict()["kind"] == "flag_set"


# --------------------------------------------------------------------------- the shipped quest


def test_full_oakhollow_quest(repo: Path) -> None:
    story = load_story(repo / "story")
    state = story.initial_state({"player_name": "Wren"})
    beat = lambda who: story.active_beat(state, who).id  # type: ignore[union-attr]  # noqa: E731
    assert (beat("bram"), beat("marta"), beat("aldric")) == (
        "bram_hammer_stolen",
        "marta_tavern",
        "aldric_gate",
    )

    def say(who: str, text: str) -> list[object]:
        return list(story.on_player_line(state, who, text))

    # Marta will not gossip before the quest starts; Aldric will not open the gate.
    assert not any(isinstance(e, BeatEntered) for e in say("marta", "seen any strangers?"))
    refused = say("aldric", "please open the gate")
    assert [e.line_id for e in refused if isinstance(e, SayLine)] == ["aldric.refuses.1"]
    assert beat("aldric") == "aldric_gate" and not state.flags["gate_open"]

    # Bram: the player offers help.
    effects = say("bram", "I'll help you find it")
    assert FlagSet("quest_started", True) in effects
    assert EmitEvent("quest.started", {"quest": "stolen_hammer"}) in effects
    assert beat("bram") == "bram_waiting"

    # Marta gossips (verbatim, templated), once.
    effects = say("marta", "Have you seen any strangers around?")
    spoken = [e for e in effects if isinstance(e, SayLine)]
    assert [e.line_id for e in spoken] == ["marta.gossip.1", "marta.gossip.2"]
    assert spoken[0].text.startswith("Oh, Wren, a stranger")
    assert state.flags["knows_about_mill"]
    assert not any(isinstance(e, SayLine) for e in say("marta", "tell me more"))

    # Aldric opens the gate now that the player knows why.
    effects = say("aldric", "I need to get to the mill, open the gate")
    assert EmitEvent("door.open", {"door": "north_gate"}) in effects
    assert beat("aldric") == "aldric_opens" and state.flags["gate_open"]
    assert story.condition_true(story_secret(repo, "aldric"), state, "aldric")

    # The game reports the mill and the pickup; Bram reacts on his own.
    story.on_event(state, "area.entered", {"area": "mill"})
    effects = story.on_event(state, "item.picked_up", {"item": "hammer"})
    assert BeatEntered("bram_hammer_back", "bram") in effects
    assert any(isinstance(e, SayLine) and e.text.endswith("Hand it here, Wren.") for e in effects)

    # Returning it: Bram takes the hammer and hands over a sword.
    effects = say("bram", "here is your hammer")
    assert EmitEvent("item.give", {"item": "sword", "to": "player"}) in effects
    assert beat("bram") == "bram_thanks" and state.flags["quest_done"]
    assert StoryState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_quest_with_toll_and_item_given_event(repo: Path) -> None:
    story = load_story(repo / "story")
    state = story.initial_state({"player_name": "Wren", "gold": 10})
    effects = story.on_player_line(state, "aldric", "I will pay the toll")
    assert EmitEvent("gold.take", {"amount": 10}) in effects
    assert state.flags["gate_open"]
    # Found before Bram even asked: the automatic exit still takes him to the return beat.
    story.on_event(state, "item.picked_up", {"item": "hammer"})
    assert story.active_beat(state, "bram").id == "bram_hammer_back"  # type: ignore[union-attr]
    effects = story.on_event(state, "item.given", {"item": "hammer", "to": "bram"})
    assert BeatEntered("bram_thanks", "bram") in effects and state.flags["quest_done"]


def story_secret(repo: Path, who: str) -> str:
    from npc_engine.characters import load_characters

    cond = load_characters(repo / "characters")[who].secrets[0].reveal_when
    assert cond is not None
    return cond


@pytest.mark.parametrize(
    ("character", "text", "intent"),
    [
        ("bram", "sure, I can help", "offer_help"),
        ("bram", "don't worry, I'll find it", "offer_help"),
        ("bram", "sorry, I can't help you", None),  # excluded, not a yes
        ("bram", "what happened here?", None),  # not an exit here: the model answers
        ("marta", "have you seen anyone strange lately", "ask_about_stranger"),
        ("marta", "who stole the smith's hammer", "ask_about_hammer"),
        ("aldric", "can you let me through", "ask_open_gate"),
        ("aldric", "fine, I will pay the toll", "pay_toll"),
    ],
)
def test_shipped_intents_understand_common_phrasings(
    repo: Path, character: str, text: str, intent: str | None
) -> None:
    story = load_story(repo / "story")
    state = story.initial_state({"gold": 10})
    state.assign("quest_started", True)
    effects = story.on_player_line(state, character, text)
    matched = [e.intent for e in effects if isinstance(e, IntentMatched)]
    assert matched == ([intent] if intent else [])
