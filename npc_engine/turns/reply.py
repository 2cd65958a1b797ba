"""The model's reply as a chain of stages over async iterators.

    llm_deltas -> parse_cues -> guard -> clauses (+ reply.text) -> (ahead) -> speak

Each stage is a small async generator that takes the previous stage's iterator and the
turn; none waits for a whole result it does not need. Stopping is the same everywhere: a
cancelled turn (``turn.stop``) makes the model thread stop at its next token, and every
stage stops pulling; a stage that has had enough (the sentence limit) simply returns, and
closing its input (``aclosing``) ripples the stop up to the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from npc_engine.pipeline.base import ChatMessage, ChatModel, GenOptions, ModelError
from npc_engine.pipeline.chunker import ClauseChunker
from npc_engine.pipeline.cues import Cue, CueParser, Parsed
from npc_engine.pipeline.workers import ModelWorker
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.errors import ErrorCode
from npc_engine.turns.handle import TurnHandle
from npc_engine.turns.speech import Speakable

log = logging.getLogger(__name__)
T = TypeVar("T")

# A guard sees the parsed reply before anything of it is sent or spoken, and may drop or
# rewrite pieces of it, or end the reply with a scripted line (``Scripted``); the session's
# guard is ``npc_engine.turns.guard``. ``pass_through`` lets everything through.
Guard = Callable[[AsyncGenerator[Parsed, None]], AsyncGenerator[Parsed, None]]


@dataclass(slots=True)
class Scripted(Parsed):
    """A scripted line (a deflection, a fallback) a guard says instead of the rest of the
    reply: spoken whole, from the line cache; the reply ends with it."""

    line: Speakable = field(default_factory=lambda: Speakable(""))


def pass_through(parsed: AsyncGenerator[Parsed, None]) -> AsyncGenerator[Parsed, None]:
    return parsed


class NoFirstToken(Exception):
    """The model gave no first token within the turn's budget (or ended without a word)."""


@dataclass(frozen=True)
class LlmCall:
    """One generation request: the model, its thread, and the first-token budgets (ms)."""

    chat: ChatModel
    worker: ModelWorker
    messages: Sequence[ChatMessage]
    options: GenOptions
    affinity: str  # the conversation: backends keep its KV cache on one slot
    first_token_budget_ms: float
    first_token_limit_ms: float
    # Awaited before the model is asked (the session's warm-up, if it is evaluating the same
    # prompt right now); the wait counts against the first-token budget like any other.
    ready: Callable[[], Awaitable[None]] | None = None


async def llm_deltas(turn: TurnHandle, call: LlmCall) -> AsyncGenerator[str, None]:
    """Stream the model's text deltas. No first token within the budget, counted from the
    start of the turn (``turn.clock``): the turn is marked degraded and ``NoFirstToken`` is
    raised, so the caller speaks a fallback line then instead of keeping the player waiting."""
    # The call has its own stop: set when the turn stops, and also when the turn gives up on
    # the model, so the model thread is freed (or never taken, if the call was still queued).
    stop = threading.Event()
    turn.on_stop(stop.set)
    usage = turn.delivered.prompt  # the backend fills it in: turn.end's prompt_tokens*
    stream = _after(
        call.ready,
        call.worker.stream(lambda: call.chat.stream(call.messages, call.options, stop, call.affinity, usage=usage), stop),
    )
    spoke = False
    try:
        first = await _first(turn, stream, call)
        if first is None:
            if turn.cancelled:
                return
            turn.clock.degrade("llm", "the model ended without a word; fallback line")
            raise NoFirstToken("the model ended without a word")
        spoke = True
        turn.clock.mark("llm_first_token")
        turn.delivered.tokens += 1
        yield first
        async for delta in stream:
            turn.delivered.tokens += 1
            yield delta
    finally:
        if spoke:  # also when a later stage had enough and closed this one
            turn.clock.mark("llm_done")
        stop.set()
        await stream.aclose()


async def _after(ready: Callable[[], Awaitable[None]] | None, items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    async with aclosing(items):  # never started if ``ready`` is given up on: no model work queued
        if ready is not None:
            await ready()
        async for item in items:
            yield item


async def _first(turn: TurnHandle, stream: AsyncGenerator[str, None], call: LlmCall) -> str | None:
    """The first delta, if it comes within the budget of the turn's clock (the end-of-turn
    decision): waiting for a warm-up, for a free model thread or slot, and for the prompt to
    be evaluated all count. ``llm_timeout_ms`` caps a budget set above it."""
    budget = min(call.first_token_budget_ms, call.first_token_limit_ms)
    nxt: asyncio.Future[str] = asyncio.ensure_future(anext(stream))
    try:
        if not await _within(turn, nxt, budget):
            turn.clock.degrade("llm", f"no first token within the {budget:.0f} ms budget; fallback line")
            raise NoFirstToken(f"no first token within {budget:.0f} ms of the turn's start")
        return nxt.result()
    except StopAsyncIteration:
        return None
    finally:
        if not nxt.done():
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await nxt  # the stream can only be closed once this anext has let go


async def _within(turn: TurnHandle, fut: asyncio.Future[str], ms: float) -> bool:
    """Whether ``fut`` is done by ``ms`` on the turn's clock. The clock may be restarted later
    while this waits (a speculative turn learns its end-of-turn decision), so the deadline is
    read again after each wait."""
    while (left := ms - turn.clock.now_ms()) > 0 or turn.speculative:
        # Undecided, a speculative turn has no budget running yet (its clock restarts at the
        # decision): it waits for its token, looking again now and then for the decision.
        done, _ = await asyncio.wait({fut}, timeout=max(left, 50.0) / 1000)
        if done:
            return True
    return fut.done()


_NOT_LETTERS = re.compile(r"[\W_]+")


def _letters(text: str) -> str:
    return _NOT_LETTERS.sub("", text.lower())


async def after_ack(deltas: AsyncGenerator[str, None], ack: str) -> AsyncGenerator[str, None]:
    """The model's deltas when its reply was started with an acknowledgement (``ack``, put in
    the prompt as the start of its answer and already said): the leading space goes (the
    ack's ``reply.text`` ends with one), and so does the ack if the model says it again
    ("Aye." then "Aye, the forge..."). Text is held only while it could still be that repeat."""
    target = _letters(ack)
    words = [w for w in _NOT_LETTERS.split(ack) if w]
    repeat = re.compile(r"\s*" + r"[\W_]*".join(re.escape(w) for w in words) + r"\b[\W_]*", re.IGNORECASE)
    held: str | None = ""
    async with aclosing(deltas):
        async for delta in deltas:
            if held is None:
                yield delta
                continue
            held += delta
            text = held.lstrip()
            got = _letters(text)
            if not got or (target and target.startswith(got)):
                continue  # nothing yet, or the ack again so far: wait for what follows
            if target and got.startswith(target) and (m := repeat.match(text)) is not None:
                text = text[m.end():]
                if ack.rstrip().endswith((".", "!", "?")):  # "Aye." then "the forge": a new sentence
                    text = text[:1].upper() + text[1:]
            held = None
            if text:
                yield text
    if held is not None and _letters(held) != target and held.strip():
        yield held.lstrip()  # the stream ended while the text could still have been the repeat


async def parse_cues(
    turn: TurnHandle, deltas: AsyncGenerator[str, None], parser: CueParser, on_rejected: Callable[[str], None]
) -> AsyncGenerator[Parsed, None]:
    """Take ``[emotion:happy]``-style cues and stage directions out of the text."""
    async with aclosing(deltas):
        async for delta in deltas:
            parsed = parser.feed(delta)
            for bad in parsed.rejected:
                on_rejected(bad)
            yield parsed
    if not turn.cancelled:
        yield parser.flush()  # the stream ended on its own: release what was held back


async def clauses(
    turn: TurnHandle, parsed: AsyncGenerator[Parsed, None], chunker: ClauseChunker, max_sentences: int
) -> AsyncGenerator[Speakable, None]:
    """Send the clean text as ``reply.text`` as soon as it is known (ahead of the audio), and
    cut it into speakable clauses (a short first one, then sentences), each carrying the cues
    that came before it.

    Stops the model once the reply has its sentences: small models ramble past the asked
    length. The chunker sees that a sentence ended only when the next word arrives, so that
    word is held back here rather than sent: a reply cut at its limit drops it everywhere."""
    pending: list[Cue] = []
    sentences = 0
    async with aclosing(parsed):
        async for piece in parsed:
            if isinstance(piece, Scripted):
                for clause in chunker.flush():
                    turn.clock.mark("first_clause")
                    yield Speakable(clause, pending.copy())
                    pending.clear()
                if turn.cancelled or not piece.line.text:
                    return
                sent = turn.delivered.text_sent
                _send_text(turn, piece.line.text if not sent or sent[-1][-1:].isspace() else " " + piece.line.text)
                turn.clock.mark("first_clause")
                line = piece.line
                yield Speakable(line.text, [*pending, *line.cues], prerendered=line.prerendered)
                return
            ready = chunker.feed(piece.text) if piece.text else []
            cut = next((i for i, c in enumerate(ready, 1) if sentences + _sentences_in(ready[:i]) >= max_sentences), None)
            text = piece.text
            if cut is not None:
                ready = ready[:cut]
                unsaid = chunker.pending
                text = text[: len(text) - len(unsaid)] if unsaid and text.endswith(unsaid) else text if not unsaid else ""
            _send_text(turn, text)
            for clause in ready:
                turn.clock.mark("first_clause")
                yield Speakable(clause, pending.copy())
                pending.clear()
            if cut is not None:
                return
            sentences += _sentences_in(ready)
            # The piece's text may close the clause before its cues (the chunker sees a
            # sentence end only when the next word comes): cues go with the clause after.
            pending.extend(piece.cues)
    if turn.cancelled:
        return
    for clause in chunker.flush():
        turn.clock.mark("first_clause")
        yield Speakable(clause, pending.copy())
        pending.clear()


def _sentences_in(clauses: list[str]) -> int:
    return sum(c.rstrip().endswith((".", "!", "?")) for c in clauses)


def _send_text(turn: TurnHandle, text: str) -> None:
    if text and not turn.cancelled:
        turn.delivered.text_sent.append(text)
        turn.emit(msg.ReplyText(delta=text))


async def model_reply(
    turn: TurnHandle,
    call: LlmCall,
    parser: CueParser,
    max_sentences: int,
    fallback: Callable[[], Speakable | None],
    guard: Guard = pass_through,
    *,
    reply_start: str = "",
) -> AsyncGenerator[Speakable, None]:
    """The model's reply as speakables; a model that fails or stays silent gives way to a
    scripted fallback line, and a failure is reported in the turn (``error``, ``degraded``).
    ``reply_start``: an acknowledgement the call's prompt starts the answer with (``after_ack``)."""

    def rejected(tag: str) -> None:
        log.info("turn %s: dropped cue [%s] the character is not allowed", turn.id, tag)

    deltas = llm_deltas(turn, call)
    if reply_start.strip():
        deltas = after_ack(deltas, reply_start)
    chain = clauses(turn, guard(parse_cues(turn, deltas, parser, rejected)), ClauseChunker(), max_sentences)
    said = False
    try:
        async with aclosing(chain):
            async for item in chain:
                said = True
                yield item
        if said or turn.cancelled:
            return
        # Words came, but none to say ("(nods)", "...", or a guard's cut left nothing): the
        # player, who may have heard an ack already, must not be left with silence.
        turn.clock.degrade("llm", "the reply had no words to say; fallback line")
    except NoFirstToken:
        pass
    except ModelError as exc:
        log.error("turn %s: %s", turn.id, exc)
        turn.clock.degrade("llm", str(exc))
        code = ErrorCode.MODEL_UNAVAILABLE if exc.code == "model_unavailable" else ErrorCode.MODEL_ERROR
        turn.emit(msg.Error.in_turn(code, str(exc)))
    if not turn.cancelled and (line := fallback()) is not None:
        sent = turn.delivered.text_sent
        delta = line.text if not sent or sent[-1][-1:].isspace() else " " + line.text  # after a cut-off word
        sent.append(delta)
        turn.emit(msg.ReplyText(delta=delta))
        yield line


@dataclass(frozen=True, slots=True)
class _Failed:
    exc: Exception


class _End:
    pass


async def ahead(items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """Run ``items``' producer in its own task so it keeps going while the consumer works
    (the model writes the next clause while this one is synthesized). The task is held and
    always awaited or cancelled; a producer's exception reaches the consumer in order."""
    queue: asyncio.Queue[T | _Failed | _End] = asyncio.Queue()

    async def pump() -> None:
        try:
            async with aclosing(items):
                async for item in items:
                    queue.put_nowait(item)
        except Exception as exc:
            queue.put_nowait(_Failed(exc))
            return
        queue.put_nowait(_End())

    task = asyncio.get_running_loop().create_task(pump(), name="turn-ahead")
    try:
        while not isinstance(got := await queue.get(), _End):
            if isinstance(got, _Failed):
                raise got.exc
            yield got
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
