"""Which llama.cpp slot (KV cache) a conversation uses (``SlotTable``): pure bookkeeping, no model."""

from __future__ import annotations

from npc_engine.pipeline.base import ChatMessage
from npc_engine.pipeline.llm_llamacpp import SlotTable, shared_chars

BRAM = [ChatMessage("system", "You are Bram, the blacksmith of Oakhollow. " * 4), ChatMessage("user", "Morning.")]
MARTA = [ChatMessage("system", "You are Marta, who keeps the inn. " * 4), ChatMessage("user", "Morning.")]


def test_shared_chars_counts_whole_messages_then_the_common_start_of_the_first_that_differs() -> None:
    assert shared_chars(BRAM, BRAM) == sum(len(m.content) for m in BRAM)
    assert shared_chars(BRAM, MARTA) == len("You are ")
    named = [ChatMessage("system", BRAM[0].content + "\nYou are talking to Robin.")]
    assert shared_chars(BRAM, named) == len(BRAM[0].content)
    assert shared_chars([], BRAM) == 0
    assert shared_chars([ChatMessage("user", "x")], [ChatMessage("system", "x")]) == 0


def test_a_conversation_keeps_its_slot() -> None:
    table = SlotTable(2)
    a = table.slot_for("a", BRAM, sending=True)
    b = table.slot_for("b", MARTA, sending=True)
    assert a != b
    assert table.slot_for("a", MARTA, sending=True) == a, "whatever it sends"


def test_a_new_conversation_takes_the_primed_persona_of_its_character() -> None:
    table = SlotTable(3)
    primed = {table.claim_empty(BRAM[:1]): "bram", table.claim_empty(MARTA[:1]): "marta"}
    assert None not in primed and len(primed) == 2
    marta = table.slot_for("s1", MARTA)
    assert primed[marta] == "marta"
    bram = table.slot_for("s2", BRAM)
    assert primed[bram] == "bram"
    # Someone else: the empty slot, not a primed persona.
    other = table.slot_for("s3", [ChatMessage("system", "Zzz.")])
    assert other not in primed


def test_a_released_slot_serves_the_next_conversation_that_starts_alike() -> None:
    table = SlotTable(2)
    first = table.slot_for("s1", BRAM, sending=True)
    table.slot_for("s2", MARTA, sending=True)
    table.release("s1")
    # The same character again (another player, or the same one back): its old cache.
    assert table.slot_for("s3", BRAM) == first
    # No free slot: the least recently used conversation's is taken.
    assert table.slot_for("s4", BRAM) != first


def test_priming_never_evicts_a_primed_persona_or_a_live_conversation() -> None:
    table = SlotTable(2)
    assert table.claim_empty(BRAM) is not None
    table.slot_for("s1", MARTA, sending=True)
    assert table.claim_empty(MARTA) is None


def test_a_few_shared_words_do_not_make_a_stranger_take_a_primed_persona() -> None:
    table = SlotTable(2)
    bram = [ChatMessage("system", "You are Bram. " + "He has worked the forge for thirty years. " * 5)]
    primed = table.claim_empty(bram)
    stranger = [ChatMessage("system", "You are Aldric, the captain of the guard.")]
    assert shared_chars(bram, stranger) > 0
    assert table.slot_for("s1", stranger) != primed
    assert table.slot_for("s2", [*bram, ChatMessage("user", "Hello.")]) == primed
