"""The cue parser: markup never reaches speech, allowed cues come out, others are dropped."""

from __future__ import annotations

from npc_engine.pipeline.cues import Cue, CueParser


def run(parser: CueParser, pieces: list[str]) -> tuple[str, list[Cue], list[str]]:
    text, cues, rejected = [], [], []
    for p in [*pieces, None]:
        r = parser.flush() if p is None else parser.feed(p)
        text.append(r.text)
        cues += r.cues
        rejected += r.rejected
    return "".join(text), cues, rejected


def parser() -> CueParser:
    return CueParser(["happy", "angry", "neutral"], ["nod", "shrug"], ["give_item"], speaker_names=["Bram", "bram"])


def test_tags_split_across_tokens_are_removed_and_validated() -> None:
    text, cues, rejected = run(parser(), ["[emo", "tion:hap", "py] Wel", "come! [gesture:nod]", " Here."])
    assert "[" not in text and "]" not in text
    assert text.strip() == "Welcome! Here."
    assert cues == [Cue("emotion", "happy"), Cue("gesture", "nod")]
    assert rejected == []


def test_disallowed_cues_are_dropped_not_spoken() -> None:
    text, cues, rejected = run(parser(), ["I [emotion:ecstatic] see [dance]. [action:give_item]"])
    assert cues == [Cue("action", "give_item")]
    assert rejected == ["emotion:ecstatic", "dance"]
    assert "ecstatic" not in text and "dance" not in text


def test_stage_directions_become_gestures_or_vanish() -> None:
    text, cues, _ = run(parser(), ["*nods slowly* Aye. *wipes ", "the anvil* Done."])
    assert "*" not in text and "nods" not in text and "anvil" not in text
    assert cues == [Cue("gesture", "nod")]


def test_parenthesized_stage_directions_are_not_spoken() -> None:
    text, cues, _ = run(parser(), ["Well now, dear... (smiling ", "wistfully) Ah, sweetheart! (nods) (laughs)"])
    assert "(" not in text and ")" not in text and "smiling" not in text and "laughs" not in text
    assert text.strip() == "Well now, dear... Ah, sweetheart!"
    assert cues == [Cue("gesture", "nod")]


def test_speaker_label_is_stripped_only_at_the_start() -> None:
    text, _, _ = run(parser(), ["Br", "am: Hello there. Bram: is my name."])
    assert text.strip() == "Hello there. Bram: is my name."


def test_plain_text_is_not_held_back() -> None:
    p = parser()
    assert p.feed("Hello").text == "Hello"  # cannot be the start of "bram:"


def test_unclosed_bracket_is_released_eventually() -> None:
    text, cues, _ = run(parser(), ["Price is [ten gold, or was it twenty? I forget which, honestly friend."])
    assert "ten gold" in text and cues == []
