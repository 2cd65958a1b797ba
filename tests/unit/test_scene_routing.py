"""Who answers in a scene, and who may react: the pure rules of ``npc_engine.scene.routing``,
on the shipped characters (Marta, Bram, Captain Aldric)."""

from __future__ import annotations

import pytest

from npc_engine.characters import Character, load_characters
from npc_engine.scene.routing import addressed, choose_answerer, name_words, reactor
from tests.harness import REPO


@pytest.fixture(scope="module")
def cast() -> dict[str, Character]:
    return load_characters(REPO / "characters")


def test_a_name_a_first_name_or_a_title_addresses_a_character(cast: dict[str, Character]) -> None:
    present = [cast["marta"], cast["bram"], cast["aldric"]]
    assert "aldric" in name_words(cast["aldric"]) and "captain" in name_words(cast["aldric"])
    assert addressed("Captain, open the gate!", present) == "aldric"
    assert addressed("what do you say, bram?", present) == "bram"
    assert addressed("Marta and Bram, listen", present) == "marta", "the earliest mention wins"
    assert addressed("I brambled through the hedge", present) is None, "whole words only"
    assert addressed("Hello there.", present) is None


def test_the_order_of_precedence(cast: dict[str, Character]) -> None:
    present = [cast["bram"], cast["marta"]]
    pick = choose_answerer
    assert pick("Marta, hi", present, forced="bram", facing="marta").character == "bram"
    assert pick("Marta, hi", present, forced="bram").rule == "forced"
    assert pick("Marta, hi", present, facing="bram", lead="bram", last="bram").rule == "name"
    assert pick("hi", present, facing="marta", lead="bram", last="bram").rule == "facing"
    assert pick("hi", present, lead="marta", last="bram").rule == "beat"
    assert pick("hi", present, last="marta").rule == "last"
    assert pick("hi", present) == pick("hi", present, last="aldric")  # absent ids are skipped
    assert pick("hi", present).character == "bram" and pick("hi", present).rule == "first"
    assert pick("Aldric, hi", present, facing="marta").character == "marta", "naming someone absent names nobody"


def test_a_reaction_only_when_the_exchange_concerns_another_character(cast: dict[str, Character]) -> None:
    present = [cast["marta"], cast["bram"], cast["aldric"]]
    assert reactor("Marta, one ale please.", "Coming right up.", "marta", present) is None
    assert reactor("Marta, is Bram honest?", "He is.", "marta", present) == "bram"
    assert reactor("Marta, any news?", "The captain closed the gate.", "marta", present) == "aldric"
    assert reactor("Good evening, everyone!", "Evening.", "marta", present) == "bram"
    assert reactor("Is Marta here?", "I am.", "marta", [cast["marta"]]) is None
