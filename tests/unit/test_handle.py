"""``TurnOutbox``, ``TurnHandle`` and ``Delivered`` on their own."""

from __future__ import annotations

import pytest

from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.outgoing import Outgoing
from npc_engine.turns.handle import Delivered, TurnHandle, TurnOutbox


def outbox(turn_id: int | None) -> tuple[TurnOutbox, list[Outgoing]]:
    sent: list[Outgoing] = []
    return TurnOutbox(sent.append, "s1", turn_id), sent


def handle(turn_id: int | None = None) -> tuple[TurnHandle, list[Outgoing]]:
    box, sent = outbox(turn_id)
    return TurnHandle("text", box, user_text="hello"), sent


def stamps(sent: list[Outgoing]) -> list[tuple[str, str | None, int | None, int | None]]:
    return [(m.TYPE, getattr(m, "session", None), getattr(m, "turn", None), getattr(m, "seq", None)) for m in sent]


# --------------------------------------------------------------------------- TurnOutbox


def test_outbox_of_a_numbered_turn_stamps_and_sends_at_once() -> None:
    box, sent = outbox(3)
    box.emit(msg.TurnStart(source="text"))
    assert stamps(sent) == [("turn.start", "s1", 3, 0)]
    box.emit(msg.ReplyText(delta="Hm."))
    assert stamps(sent)[-1] == ("reply.text", "s1", 3, 1)


def test_outbox_holds_a_speculative_turns_messages_until_opened_and_numbers_them_then() -> None:
    box, sent = outbox(None)
    box.emit(msg.TurnStart(source="text"))
    box.emit(msg.ReplyText(delta="Hm."))
    assert sent == []
    box.open(5)
    assert stamps(sent) == [("turn.start", "s1", 5, 0), ("reply.text", "s1", 5, 1)]
    box.emit(msg.ReplyText(delta=" Yes."))
    assert stamps(sent)[-1] == ("reply.text", "s1", 5, 2), "later messages follow in order"


def test_outbox_discard_throws_the_held_messages_away() -> None:
    box, sent = outbox(None)
    box.emit(msg.TurnStart(source="text"))
    box.emit(msg.ReplyText(delta="Hm."))
    assert box.discard() == 2
    box.emit(msg.ReplyText(delta="late"))
    assert sent == [] and box.discard() == 1, "a discarded outbox never sends"


# --------------------------------------------------------------------------- TurnHandle


def test_cancel_is_idempotent_and_marks_the_turn_interrupted() -> None:
    turn, _ = handle(1)
    assert not turn.cancelled and not turn.interrupted and turn.heard is None
    turn.cancel()
    assert turn.cancelled and turn.interrupted and turn.stop.is_set()
    turn.cancel()
    assert turn.cancelled and turn.interrupted


def test_cancel_with_heard_records_it_even_after_the_turn_was_cancelled() -> None:
    turn, _ = handle(1)
    turn.cancel(heard=2.0)
    assert (turn.cancelled, turn.interrupted, turn.heard) == (True, True, 2.0)
    turn.cancel(heard=1.5)
    assert turn.heard == 1.5, "a later cancel refines what was heard"
    turn.cancel()
    assert turn.heard == 1.5, "a cancel without heard keeps it"


def test_the_first_cancel_decides_interrupted() -> None:
    turn, _ = handle(1)
    turn.cancel(interrupted=False)
    turn.cancel()
    assert turn.cancelled and not turn.interrupted


def test_a_numbered_turn_is_committed_from_the_start() -> None:
    turn, _ = handle(1)
    assert turn.id == 1 and not turn.speculative and not turn.dropped
    with pytest.raises(RuntimeError, match="already committed"):
        turn.commit(2)
    with pytest.raises(RuntimeError, match="already committed"):
        turn.drop()


async def test_commit_numbers_the_turn_and_sends_what_it_held() -> None:
    turn, sent = handle(None)
    assert turn.speculative and turn.id is None
    turn.emit(msg.TurnStart(source="text"))
    assert sent == []
    turn.commit(4)
    assert turn.id == 4 and not turn.speculative
    assert stamps(sent) == [("turn.start", "s1", 4, 0)]
    assert await turn.decided() is True
    with pytest.raises(RuntimeError, match="already committed"):
        turn.commit(5)
    with pytest.raises(RuntimeError, match="already committed"):
        turn.drop()
    assert turn.id == 4


async def test_drop_stops_the_turn_and_nothing_of_it_is_ever_sent() -> None:
    turn, sent = handle(None)
    turn.emit(msg.TurnStart(source="text"))
    turn.drop()
    assert turn.dropped and turn.cancelled and not turn.speculative and turn.id is None
    turn.emit(msg.ReplyText(delta="late"))
    assert sent == []
    assert await turn.decided() is False
    with pytest.raises(RuntimeError, match="already dropped"):
        turn.commit(1)
    with pytest.raises(RuntimeError, match="already dropped"):
        turn.drop()


async def test_a_handle_without_a_task_is_not_done_and_waits_for_nothing() -> None:
    turn, _ = handle(1)
    assert not turn.done
    await turn.wait()


# --------------------------------------------------------------------------- Delivered


def delivered() -> Delivered:
    got = Delivered(audio_text=["Hm, the forge", "is cold."], text_sent=["Hm, the forge", " is cold. Go"])
    got.heard_marks = [(0.0, "Hm,"), (0.2, "the"), (0.4, "forge"), (0.6, "is"), (0.8, "cold.")]
    got.audio_seconds = 1.0
    return got


def test_delivered_heard_text_is_the_words_that_started_before_the_cut() -> None:
    got = delivered()
    assert got.heard_text(0.0) == ""
    assert got.heard_text(0.5) == "Hm, the forge"
    assert got.heard_text(0.6) == "Hm, the forge", "a word starting exactly at the cut was not heard"
    assert got.heard_text(5.0) == "Hm, the forge is cold."


def test_delivered_spoken_is_what_was_heard_or_read() -> None:
    got = delivered()
    assert got.spoken(audio=True, heard=None) == "Hm, the forge is cold."
    assert got.spoken(audio=True, heard=0.3) == "Hm, the"
    assert got.spoken(audio=True, heard=1.0) == "Hm, the forge is cold.", "heard it all"
    assert got.spoken(audio=False, heard=None) == "Hm, the forge is cold. Go"
    assert Delivered().spoken(audio=True, heard=0.5) == ""
