"""ClauseChunker: a short first fragment, then sentences; markup is never spoken."""

from __future__ import annotations

import random
import re

import pytest

from npc_engine.pipeline.chunker import ChunkerConfig, ClauseChunker


def word_deltas(text: str) -> list[str]:
    """Split like an LLM streams: a word with its trailing space per delta."""
    return re.findall(r"\S+\s*|\s+", text)


def random_deltas(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        out.append(text[i:i + n])
        i += n
    return out


def stream(deltas: list[str], chunker: ClauseChunker | None = None) -> tuple[list[tuple[int, str]], list[str]]:
    """Feed deltas; returns (index of the delta that released each chunk, chunk) and the flushed rest."""
    chunker = chunker or ClauseChunker()
    released = [(i, chunk) for i, delta in enumerate(deltas) for chunk in chunker.feed(delta)]
    return released, chunker.flush()


def all_chunks(text: str, deltas: list[str] | None = None) -> list[str]:
    released, rest = stream(deltas if deltas is not None else word_deltas(text))
    return [c for _, c in released] + rest


def n_words(text: str) -> int:
    return len(text.split())


REPLY = "Ah, traveller, welcome to Oakhollow. Mr. Bram forged this blade in 3.5 days! Would you like to buy it?"


def test_first_chunk_is_a_short_clause_cut_at_a_comma() -> None:
    chunks = all_chunks(REPLY)
    assert chunks[0] == "Ah, traveller,"
    assert chunks[1:] == ["welcome to Oakhollow.", "Mr. Bram forged this blade in 3.5 days!",
                          "Would you like to buy it?"]


def test_first_fragment_is_released_before_its_sentence_is_complete() -> None:
    deltas = word_deltas("Well, I suppose you could try the old mill north of the gate.")
    released, _ = stream(deltas)
    first_index, first = released[0]
    assert first == "Well, I suppose you could try"  # a comma after one word is too early to cut
    sentence_end = next(i for i, d in enumerate(deltas) if "." in d)
    assert first_index < sentence_end


def test_first_fragment_without_punctuation_is_cut_by_word_count() -> None:
    config = ChunkerConfig(first_max_words=5)
    text = "I have been waiting here since long before dawn broke over the hills and I am tired"
    released, rest = stream(word_deltas(text), ClauseChunker(config))
    first = released[0][1]
    assert config.first_max_words <= n_words(first) <= config.first_max_words + config.weak_ending_grace
    assert first.split()[-1].lower() not in {"the", "a", "to", "of", "and", "for"}
    assert " ".join([first, *(c for _, c in released[1:]), *rest]) == text


def test_a_first_sentence_shorter_than_the_threshold_is_the_first_chunk() -> None:
    assert all_chunks("Yes. Of course, friend.") == ["Yes.", "Of course, friend."]


def test_a_comma_after_one_word_does_not_cut_the_first_fragment() -> None:
    chunks = all_chunks("Hm, you need a sword? Come back later.")
    assert chunks[0] == "Hm, you need a sword?"


def test_later_chunks_are_whole_sentences_once_enough_has_been_said() -> None:
    text = ("Hello there, friend. The forge is hot today, so mind your fingers. I lost my hammer, "
            "the good one, last night. Have you seen it?")
    chunks = all_chunks(text)
    assert chunks[:2] == ["Hello there,", "friend."]
    # 19 characters said: the next chunk may be 40 long, so the 45-character sentence is cut
    # at its comma; after that the cap (twice what was said) holds whole sentences.
    assert chunks[2:] == ["The forge is hot today,", "so mind your fingers.",
                          "I lost my hammer, the good one, last night.", "Have you seen it?"]


def test_a_long_sentence_after_a_short_start_is_cut_so_it_renders_while_the_start_plays() -> None:
    # The bench's 3 s silence: "Dear!" then a 30-word sentence rendered whole.
    text = ("Dear! I'm going to the other side of the road, but I'll tell you this: there was a little "
            "girl with a very evil spirit in the village, and she had been living on the outskirts.")
    chunks = all_chunks(text)
    assert chunks[0] == "Dear!"
    assert " ".join(chunks) == text
    cfg = ChunkerConfig()
    for i, chunk in enumerate(chunks[1:], start=1):
        said = sum(len(c) for c in chunks[:i])
        assert len(chunk) <= max(cfg.grow_floor, cfg.grow * said), (chunk, said)
    assert chunks[1] == "I'm going to the other side of the road,"


def test_without_growth_later_chunks_are_whole_sentences() -> None:
    text = "Dear! I'm going to the other side of the road, but I'll tell you this: it was raining."
    chunker = ClauseChunker(ChunkerConfig(grow_floor=220))
    released, rest = stream(word_deltas(text), chunker)
    assert [c for _, c in released] + rest == ["Dear!", "I'm going to the other side of the road, but I'll tell you this: it was raining."]


@pytest.mark.parametrize("text", [
    "Dr. Marta said the price is 2.50 silver, e.g. cheap.",
    "The letter was signed J. R. Smith, and nobody knew him.",
])
def test_abbreviations_initials_and_decimals_do_not_end_a_sentence(text: str) -> None:
    chunker = ClauseChunker(ChunkerConfig(grow_floor=220))  # no growth cap: sentence cutting alone
    chunker._first_done = True
    released = [c for d in word_deltas(text) for c in chunker.feed(d)]
    assert released == [] and chunker.flush() == [text]


def test_run_on_sentences_are_capped_at_max_chars_between_words() -> None:
    config = ChunkerConfig(max_chars=80)
    words = [f"word{i}" for i in range(60)]
    text = " ".join(words[:30]) + ", " + " ".join(words[30:]) + "."
    released, rest = stream(word_deltas(text), ClauseChunker(config))
    chunks = [c for _, c in released] + rest
    assert len(chunks) > 3
    assert all(len(c) <= config.max_chars for c in chunks)
    assert " ".join(chunks).replace(",", "").replace(".", "").split() == words, "no word split or lost"


def test_flush_returns_the_rest_and_resets() -> None:
    chunker = ClauseChunker()
    assert chunker.feed("Greetings") == []
    assert chunker.flush() == ["Greetings"]
    assert not chunker.first_emitted
    assert chunker.feed("Hello, my friend, ") == ["Hello, my friend,"]


@pytest.mark.parametrize("seed", range(8))
def test_chunks_do_not_depend_on_how_the_stream_is_split(seed: int) -> None:
    assert all_chunks(REPLY, random_deltas(REPLY, seed)) == all_chunks(REPLY)


# ------------------------------------------------------------------ markup is never spoken

MARKUP_REPLIES = [
    ("*waves* Hello there [smiles] friend. The forge is hot today.", ["waves", "smiles"]),
    ("[emotion:angry] Get out of my forge! [gesture:point] Now.", ["emotion", "angry", "gesture", "point"]),
    ("I *think* the thief went north, <break time='1s'/> toward the mill.", ["think", "break", "time"]),
    ("Well [pause [long]] I cannot say.", ["pause", "long"]),
    ("The gate is shut. *sighs heavily and looks away", ["sighs", "heavily", "looks", "away"]),
    ("Take this [unclosed tag that never ends", ["unclosed", "tag", "never", "ends"]),
]


@pytest.mark.parametrize(("text", "hidden"), MARKUP_REPLIES)
@pytest.mark.parametrize("split", ["words", "chars", "random"])
def test_markup_is_never_spoken(text: str, hidden: list[str], split: str) -> None:
    deltas = {"words": word_deltas(text), "chars": list(text), "random": random_deltas(text, 7)}[split]
    chunks = all_chunks(text, deltas)
    assert chunks, "the words outside markup are still spoken"
    spoken = " ".join(chunks)
    assert not set(spoken) & set("[]*<>")
    for word in hidden:
        assert word not in spoken.lower().split() and word not in spoken.lower()


def test_text_around_markup_keeps_its_words_and_spacing() -> None:
    assert all_chunks("*waves* Hello there [smiles] friend, welcome.") == ["Hello there friend,", "welcome."]
    # (one chunk: "No thing," is too short to be a first fragment, ChunkerConfig.first_min_chars)
    assert all_chunks("No[pause]thing [x], really.") == ["No thing, really."]


def test_chunks_with_nothing_to_say_are_dropped() -> None:
    assert all_chunks("... [nods] ... *shrugs*") == []
    assert all_chunks("— Hm. ...") == ["— Hm."]
