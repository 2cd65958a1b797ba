"""The prompt's history is trimmed in blocks, so the prompt prefix stays cached (issue #10).

The window grows to ``history_turns + history_block - 1`` exchanges, then the oldest
``history_block`` go at once: between trims a turn's prompt is the previous one plus the last
reply and the new line. The chat double keeps one "KV cache" per conversation, like llama.cpp's
slots, and reports what each call had to evaluate; ``turn.end`` carries it. A turn whose end
changes the prompt's beginning (a trim, the system prompt) has the next prompt, up to the
player's line, evaluated in the background while its reply plays (``Session._warm_llm``). The
same behaviour on the real model: ``tests/test_prompt_cache.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass

from npc_engine.engine import Engine
from npc_engine.pipeline.base import ChatMessage
from npc_engine.pipeline.prompt import build_messages
from npc_engine.protocol import outgoing as msg
from npc_engine.session.memory import Memory
from npc_engine.session.session import Session
from npc_engine.store import HistoryEntry
from npc_engine.turns.handle import TurnHandle, TurnOutbox
from tests.doubles import GatedWarmChat, ScriptedChat, prompt_tokens
from tests.harness import OFFER, eventually
from tests.unit.conftest import PLAYER, MakeEngine, MakeRig, MakeSession
from tests.unit.support import Sent, end_of

SYSTEM = "You are Bram."


def finished_turn(user: str | None, reply: str) -> TurnHandle:
    """A text turn that delivered ``reply`` (no ``user``: a greeting, a lone assistant entry)."""
    turn = TurnHandle("text" if user else "greeting", TurnOutbox(lambda m: None, "s1", 1), user_text=user)
    turn.delivered.text_sent.append(reply)
    return turn


def exchanges(entries: list[HistoryEntry]) -> int:
    return sum(e.role == "user" for e in entries)


def memory(engine: Engine, window: int, block: int) -> Memory:
    return Memory(engine.store, PLAYER, "bram", window, block)


async def test_the_window_grows_by_a_block_then_drops_the_block_at_once(make_engine: MakeEngine) -> None:
    mem = memory(make_engine(ScriptedChat(["Hm."])), window=3, block=3)
    sizes: list[int] = []
    trims = 0
    for i in range(12):
        before = mem.prompt_history()
        mem.remember(finished_turn(f"line {i}", f"reply {i}"), audio=False)
        after = mem.prompt_history()
        sizes.append(exchanges(after))
        if after[: len(before)] != before:
            trims += 1
            # A trim drops whole exchanges from the front and keeps the newest ``window``.
            assert after == mem.history[-6:], f"exchange {i}: the trim kept {after}"
    # Grows to window + block - 1 = 5 exchanges; the 6th drops a block of 3 at once.
    assert sizes == [1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 3]
    assert trims == 3, "between trims the window only grows at its end"
    assert mem.prompt_turns == 5
    assert len(mem.history) == 24, "memory itself keeps the whole conversation"


async def test_a_block_of_one_is_the_old_sliding_window(make_engine: MakeEngine) -> None:
    mem = memory(make_engine(ScriptedChat(["Hm."])), window=3, block=1)
    for i in range(10):
        mem.remember(finished_turn(f"line {i}", f"reply {i}"), audio=False)
        ours = build_messages(SYSTEM, mem.prompt_history(), "next", mem.prompt_turns)
        sliding = build_messages(SYSTEM, mem.history, "next", 3)
        assert ours == sliding, f"exchange {i}"
        assert len(ours) == 2 + 2 * min(i + 1, 3)


async def test_a_trim_keeps_whole_exchanges(make_engine: MakeEngine) -> None:
    """Lone entries (a greeting has no player line) never leave an answer without its question."""
    mem = memory(make_engine(ScriptedChat(["Hm."])), window=2, block=2)
    for i in range(15):
        mem.remember(finished_turn(None if i % 3 == 0 else f"line {i}", f"reply {i}"), audio=False)
        window = mem.prompt_history()
        assert len(window) <= 2 * mem.prompt_turns
        if len(mem.history) > len(window):  # trimmed: it starts with a player's line
            assert window[0].role == "user", f"turn {i}: the window starts with {window[0]}"
        prompt = build_messages(SYSTEM, window, "next", mem.prompt_turns)
        assert prompt[1].role == "user", f"turn {i}: the prompt's history starts with {prompt[1]}"


async def test_a_resumed_conversation_starts_from_its_window_and_grows_in_blocks(make_engine: MakeEngine) -> None:
    engine = make_engine(ScriptedChat(["Hm."]))
    first = memory(engine, window=3, block=2)
    for i in range(7):
        await first.persist(first.remember(finished_turn(f"line {i}", f"reply {i}"), audio=False))
    again = memory(engine, window=3, block=2)
    await again.load()
    assert [e.content for e in again.prompt_history()] == [e.content for e in first.history[-6:]]
    again.remember(finished_turn("line 7", "reply 7"), audio=False)
    assert exchanges(again.prompt_history()) == 4, "the loaded window grows like any other"
    again.remember(finished_turn("line 8", "reply 8"), audio=False)
    assert exchanges(again.prompt_history()) == 3, "then drops a block"


def new_tokens(previous: list[ChatMessage], current: list[ChatMessage]) -> int:
    """What a turn adds to the previous prompt: the reply remembered and the new line."""
    return len(prompt_tokens(current)) - len(prompt_tokens(previous))


class Conversation:
    """A text conversation's ``turn.end`` messages, the double's calls, and what the session's
    background warm-ups evaluated before each turn (``warmed[i]``: since turn ``i`` - 1 ended;
    ``steps[i]``: the prompts they sent, in order)."""

    def __init__(
        self, ends: list[msg.TurnEnd], chat: ScriptedChat, warmed: list[int], steps: list[list[list[ChatMessage]]]
    ) -> None:
        self.ends, self.chat, self.warmed, self.steps = ends, chat, warmed, steps

    def evaluated(self, i: int) -> int:
        """The prompt tokens turn ``i`` (0-based) cost the model: its own and its warm-up's."""
        own = self.ends[i].prompt_tokens_evaluated
        assert own is not None
        return own + self.warmed[i]

    def added(self, i: int) -> int:
        return new_tokens(self.chat.calls[i - 1].messages, self.chat.calls[i].messages)


async def listened(session: Session) -> None:
    """Until the session's background warm-up is over: a player hearing the reply out."""
    await eventually(lambda: not session.warming, timeout=10.0, what="the warm-up to settle")


async def run_conversation(make_rig: MakeRig, block: int, turns: int = 20) -> Conversation:
    chat = ScriptedChat([f"Reply number {i} from the forge." for i in range(turns)])
    rig = await make_rig(chat, audio=False, guard=False, history_turns=6, history_block=block)
    await listened(rig.session)  # the open's warm-up (the persona) counts for no turn
    ends, counter, marks = [], [], []
    for i in range(turns):
        counter.append(rig.session.warmed.evaluated)
        marks.append(len(chat.warm_ups))
        turn = rig.session.start_turn("text", f"Nice weather today, friend {i}.")
        await turn.wait()
        assert turn.id is not None
        ends.append(end_of(rig.sent, turn.id))
        await listened(rig.session)
    # What was warmed between turn i - 1's end and turn i's start.
    steps = [[]] + [[m for m, _ in chat.warm_ups[a:b]] for a, b in itertools.pairwise(marks)]
    return Conversation(ends, chat, [0] + [b - a for a, b in itertools.pairwise(counter)], steps)


async def test_turn_end_reports_the_prompt_tokens_each_turn_evaluated(make_rig: MakeRig) -> None:
    run = await run_conversation(make_rig, block=4, turns=3)
    ends, chat = run.ends, run.chat
    assert len(chat.calls) == 3
    for end, call in zip(ends, chat.calls, strict=True):
        assert end.prompt_tokens == call.prompt.tokens == len(prompt_tokens(call.messages))
        assert end.prompt_tokens_evaluated == call.prompt.evaluated
    # The session's warm-up evaluated everything before the first line.
    assert ends[0].prompt_tokens_evaluated == len(prompt_tokens(chat.calls[0].messages[-1:]))


async def test_with_blocks_most_turns_evaluate_only_their_new_tokens(make_rig: MakeRig) -> None:
    for block, least, most in ((4, 16, 19), (1, 0, 7)):
        run = await run_conversation(make_rig, block)
        # The warm-ups' work counts: a turn whose history was evaluated again in the background
        # was not served from the cache either.
        cached = [run.evaluated(i) <= run.added(i) for i in range(1, len(run.ends))]
        assert least <= sum(cached) <= most, f"block {block}: turns 2-20 served from the cache: {cached}"
        if block == 4:
            # Six exchanges, growing to nine: the history is evaluated again only right after
            # each trim (turns 11, 15 and 19), when the prompt lost a block at its front.
            assert [i + 2 for i, ok in enumerate(cached) if not ok] == [11, 15, 19]
            assert [i + 1 for i, w in enumerate(run.warmed) if w] == [11, 15, 19], "warmed only after a trim"
        else:
            # Sliding by one from turn 8 on: every turn evaluates the whole history again.
            assert not any(cached[6:]), cached


async def test_after_a_trim_the_next_prompt_is_warmed_while_the_reply_plays(make_rig: MakeRig) -> None:
    run = await run_conversation(make_rig, block=4)
    for i in range(1, len(run.ends)):
        own = run.ends[i].prompt_tokens_evaluated
        call = run.chat.calls[i]
        if not run.warmed[i]:
            assert own is not None and own <= run.added(i), f"turn {i + 1} evaluated {own} tokens itself"
            assert not run.steps[i], f"turn {i + 1}: no other warm-up"
            continue
        # Right after a trim: the warm-up was this turn's prompt up to the player's line, on
        # its conversation, and the turn itself evaluated only that line.
        steps = run.steps[i]
        assert steps and steps[-1] == call.messages[:-1], f"turn {i + 1}"
        assert {a for _, a in run.chat.warm_ups} == {call.affinity}
        # In steps (a turn that came meanwhile would wait for one): growing prefixes of it,
        # each but the last ending on a player's line.
        assert len(steps) >= 2, f"turn {i + 1}: the history went in one request"
        for shorter, longer in itertools.pairwise(steps):
            assert len(shorter) < len(longer) and longer[: len(shorter)] == shorter
            assert shorter[-1].role == "user"
        assert own == len(prompt_tokens(call.messages[-1:])), f"turn {i + 1}: the player's line only"
        # The warm-up did the work the turn would have done: the history after the persona.
        assert run.warmed[i] > len(prompt_tokens(call.messages[-3:-1])), f"turn {i + 1}"


async def test_a_scripted_turn_reports_no_prompt(make_rig: MakeRig) -> None:
    rig = await make_rig(ScriptedChat(["Hm."]), audio=False)
    turn = rig.session.start_turn("greeting", None)
    await turn.wait()
    assert turn.id is not None
    end = end_of(rig.sent, turn.id)
    assert end.prompt_tokens is None and end.prompt_tokens_evaluated is None
    assert "prompt_tokens" not in msg.as_dict(end), "absent from the wire, not nil"


async def say(session: Session, line: str) -> int:
    turn = session.start_turn("text", line)
    await turn.wait()
    assert turn.id is not None
    return turn.id


async def test_a_turn_cancels_a_warm_up_still_queued_and_never_waits_for_it(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    chat = GatedWarmChat([f"Reply number {i} from the forge." for i in range(8)], gated={"s2"})
    # Two exchanges, growing to three: the end of the 4th turn trims the window.
    engine = make_engine(chat, guard=False, history_turns=2, history_block=2)
    sent = Sent()
    a = await make_session(engine, sent, audio=False)
    await listened(a)
    for i in range(3):
        await say(a, f"Nice weather today, friend {i}.")
        await listened(a)
    assert a.warm_ups == 1, "only the open's warm-up so far"
    opened = len(chat.warm_ups)  # its steps
    # Another session's warm-up holds the model's background lane (one warm-up at a time).
    b = await make_session(engine, sent, audio=False)
    await eventually(chat.entered.is_set, timeout=10.0, what="the other session's warm-up on the model")
    await say(a, "Nice weather today, friend 3.")
    assert a.warming, "the trim queued a warm-up behind the other one"
    turn = await say(a, "Nice weather today, friend 4.")
    # The turn came, gave up the queued warm-up, did the work itself and ended, while the
    # other warm-up was still on the model: it waited for no warm-up.
    assert b.warming and not a.warming
    assert a.warm_ups == 1 and ("warm-up done", "s1") not in chat.order[2:]
    own = end_of(sent, turn).prompt_tokens_evaluated
    assert own is not None and own > len(prompt_tokens(chat.calls[-1].messages[-1:])), "it evaluated its history"
    chat.let_go.set()
    await listened(b)
    assert [a for _, a in chat.warm_ups].count("s1") == opened, "the cancelled warm-up never reached the model"


async def test_a_turn_waits_for_a_warm_up_on_the_model_and_reuses_it(make_engine: MakeEngine, make_session: MakeSession) -> None:
    chat = GatedWarmChat([f"Reply number {i} from the forge." for i in range(8)], gated=set())
    engine = make_engine(chat, guard=False, history_turns=2, history_block=2)
    sent = Sent()
    a = await make_session(engine, sent, audio=False)
    await listened(a)
    for i in range(3):
        await say(a, f"Nice weather today, friend {i}.")
        await listened(a)
    chat.gated.add("s1")  # the next warm-up stays on the model until released
    await say(a, "Nice weather today, friend 3.")
    await eventually(chat.entered.is_set, timeout=10.0, what="the warm-up on the model")
    turn = a.start_turn("text", "Nice weather today, friend 4.")
    chat.let_go.set()
    await turn.wait()
    assert turn.id is not None
    # The turn asked the model only once the warm-up was done (the slot was busy with it),
    # and then evaluated only the player's line.
    assert chat.order[-2:] == [("warm-up done", "s1"), ("call", "s1")]
    assert end_of(sent, turn.id).prompt_tokens_evaluated == len(prompt_tokens(chat.calls[-1].messages[-1:]))
    assert a.warm_ups == 2


async def test_a_changed_system_prompt_is_warmed_too(make_rig: MakeRig) -> None:
    chat = ScriptedChat([f"Reply number {i} from the forge." for i in range(4)])
    rig = await make_rig(chat, audio=False, guard=False)
    session = rig.session
    await listened(session)
    await say(session, "Nice weather today, friend.")
    await listened(session)
    assert session.warm_ups == 1, "nothing changed the prompt's beginning"
    await say(session, "My name is Tomas.")  # a fact the character learns: in its system prompt
    await listened(session)
    assert session.warm_ups == 2
    system = chat.warm_ups[-1][0][0]
    assert system.role == "system" and "Tomas" in system.content
    turn = await say(session, "What do you forge today?")
    assert chat.calls[-1].messages[:-1] == chat.warm_ups[-1][0]
    assert end_of(rig.sent, turn).prompt_tokens_evaluated == len(prompt_tokens(chat.calls[-1].messages[-1:]))


@dataclass
class Trimmed:
    """A conversation whose 10th turn just trimmed its history; the warm-up of the trimmed
    prompt goes in steps, and its first step is held on the model until ``chat.let_go``."""

    chat: GatedWarmChat
    engine: Engine
    sent: Sent
    session: Session
    mark: int  # the warm-ups before the trim's: ``chat.warm_ups[mark:]`` are its steps


async def trimmed_and_warming(make_engine: MakeEngine, make_session: MakeSession) -> Trimmed:
    chat = GatedWarmChat(
        [f"Reply number {i} from the forge, where the iron is hot and the bellows never rest." for i in range(12)],
        gated=set(),
    )
    # Six exchanges, growing to nine: the end of the 10th turn drops a block of four.
    engine = make_engine(chat, guard=False, history_turns=6, history_block=4)
    sent = Sent()
    a = await make_session(engine, sent, audio=False)
    await listened(a)
    for i in range(9):
        await say(a, f"Nice weather today for the harvest, friend {i}.")
        await listened(a)
    chat.gated.add("s1")  # the trim's warm-up: its first step stays on the model until let go
    mark = len(chat.warm_ups)
    await say(a, "Nice weather today for the harvest, friend 9.")
    await eventually(chat.entered.is_set, timeout=10.0, what="the warm-up's first step on the model")
    return Trimmed(chat, engine, sent, a, mark)


async def test_a_turn_waits_for_one_step_of_a_long_warm_up_and_evaluates_the_rest_itself(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    """After a trim the whole history is evaluated again. llama.cpp cannot stop a request
    midway, so a turn that comes meanwhile waits for the one on the model: the warm-up goes in
    steps, and a turn waits for the step on the model, never for the steps after it."""
    t = await trimmed_and_warming(make_engine, make_session)
    chat, sent, a, mark = t.chat, t.sent, t.session, t.mark
    calls = len(chat.calls)
    turn = a.start_turn("text", "And tomorrow?")
    # The turn is before the model, waiting: it closed the warm-up's gate and did not cancel it.
    await eventually(lambda: a._warm_gate.closed, what="the turn to close the warm-up's gate")
    assert a.warming and len(chat.calls) == calls
    chat.let_go.set()
    await turn.wait()
    assert turn.id is not None
    call = chat.calls[-1]
    steps = [m for m, _ in chat.warm_ups[mark:]]
    # One step reached the model, a beginning of the turn's prompt ending on a player's line;
    # then the turn's own call, which evaluated everything after it.
    assert len(steps) == 1 and chat.order[-2:] == [("warm-up done", "s1"), ("call", "s1")], chat.order[-4:]
    step = steps[0]
    assert len(step) < len(call.messages) - 2 and call.messages[: len(step)] == step and step[-1].role == "user"
    own = end_of(sent, turn.id).prompt_tokens_evaluated
    assert own == len(prompt_tokens(call.messages)) - len(prompt_tokens(step))
    assert own > len(prompt_tokens(call.messages[-3:])), "the turn evaluated the history after the step"
    assert a.warm_ups == 2 and not a.warming


async def test_a_newer_prompt_asked_for_during_a_warm_up_is_taken_up_after_its_step(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    """The player starts speaking while a trimmed history is being warmed in steps: after the
    step on the model, the warm-up goes on to the prompt with the words heard so far, which
    begins with what it had left to do; it is not dropped, nor run after the other steps."""
    t = await trimmed_and_warming(make_engine, make_session)
    chat, sent, a, mark = t.chat, t.sent, t.session, t.mark
    a.prepare_line("Where did the thief")
    a.prepare_line("Where did the thief go")  # only the latest words count
    chat.let_go.set()
    await listened(a)
    assert a.warm_ups == 2, "the open's, then one warm-up, retargeted"
    prompts = [m for m, _ in chat.warm_ups[mark:]]
    # Steps each going on from the one before, to the line's prompt; the trimmed history's own
    # last step (up to the reply before the line) never ran.
    assert prompts[-1][-1] == ChatMessage("user", "Where did the thief go")
    assert all(p[-1].role == "user" for p in prompts), [(len(p), p[-1]) for p in prompts]
    for shorter, longer in itertools.pairwise(prompts):
        assert longer[: len(shorter)] == shorter, "each step goes on from the one before"
    turn = await say(a, "Where did the thief go")
    assert end_of(sent, turn).prompt_tokens_evaluated == 0, "the turn found its whole prompt evaluated"


async def test_a_story_move_keeps_the_cached_system_message_for_its_turn_and_warms_the_new_one_after(
    make_rig: MakeRig,
) -> None:
    """The player's line moves the story before the model answers (Bram's offer_help: a new
    objective). The system message comes before the examples and the history: rebuilt, the
    whole prompt would be evaluated again (5.5 s at a 10th turn on two cores). The turn keeps
    the cached one and says what changed in a system note before the line; the new system
    message is warmed after the turn, and the next turn uses it."""
    chat = ScriptedChat([f"Reply number {i} from the forge." for i in range(6)])
    rig = await make_rig(chat, audio=False, guard=False)
    session = rig.session
    await listened(session)
    for i in range(3):
        await say(session, f"Nice weather today, friend {i}.")
        await listened(session)
    before = chat.calls[-1].messages[0]
    turn = await say(session, OFFER)
    call = chat.calls[-1]
    assert call.messages[0] == before, "the cached system message"
    note = call.messages[-2]
    assert note.role == "system" and "Grumble that the hammer is still missing" in note.content
    own = end_of(rig.sent, turn).prompt_tokens_evaluated
    # The last reply (new to the cache), the note and the line: not the examples and history.
    assert call.messages[-3].role == "assistant"
    assert own == len(prompt_tokens(call.messages[-3:])), "the history was evaluated again"
    await listened(session)
    new_system = chat.warm_ups[-1][0][0]
    assert "Grumble" in new_system.content and new_system != before, "the new system message, warmed"
    turn = await say(session, "Any news from the mill?")
    call = chat.calls[-1]
    assert call.messages[0] == new_system and all(m.role != "system" for m in call.messages[1:])
    assert end_of(rig.sent, turn).prompt_tokens_evaluated == len(prompt_tokens(call.messages[-1:]))


async def test_a_turn_waiting_for_a_step_does_not_wait_behind_other_background_work(
    make_engine: MakeEngine, make_session: MakeSession
) -> None:
    """After the step the turn waited for, the warm-up ends at once: its next step would queue
    in the background lane, behind other sessions' warm-ups (or the personas' priming)."""
    t = await trimmed_and_warming(make_engine, make_session)
    chat, engine, sent, a = t.chat, t.engine, t.sent, t.session
    # Other background work queues behind that step and holds the lane until the test ends.
    hold = threading.Event()
    other = asyncio.ensure_future(engine.llm_worker.run_background(hold.wait, 30.0))
    try:
        turn = a.start_turn("text", "And tomorrow?")
        await eventually(lambda: a._warm_gate.closed, what="the turn to close the warm-up's gate")
        chat.let_go.set()
        await asyncio.wait_for(turn.wait(), 10.0)
        assert not other.done(), "the turn ended while the other background work still held the lane"
    finally:
        hold.set()
        await other
    assert turn.id is not None and end_of(sent, turn.id).status == "ok"
