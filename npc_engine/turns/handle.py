"""A turn as a value: one NPC utterance, its messages, its one cancel path, and what it delivered.

A ``TurnHandle`` is what the rest of the engine holds on to (LiveKit Agents' ``SpeechHandle``):
``cancel(heard=...)`` is the only way to stop a turn, whoever asks (a ``cancel`` message, a
new line from the player, barge-in, ``state.load``, closing the session, a vanished game).
It sets one ``threading.Event`` that the model threads poll between tokens and chunks, and
that every stage checks between items.

A turn can start **speculatively**: it runs (model work, synthesis) but its messages are
held in its outbox and it has no turn id yet. ``commit(turn_id)`` numbers it and lets its
messages out in order; ``drop()`` cancels it and throws the held messages away, so nothing
of it reaches the game or the conversation's memory.

An **acknowledgement** ("Hm.") is offered to the turn (``offer_ack``) and said only if no audio
of the reply has gone out when the turn is decided: at once for a turn that is already real,
at ``commit`` for a speculative one (ahead of what it held of the reply). Both paths share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from npc_engine.metrics import TurnClock
from npc_engine.pipeline.base import PromptUsage
from npc_engine.protocol.outgoing import (
    Cue,
    Outgoing,
    ReplyAudio,
    ReplyText,
    SessionMessage,
    TurnSource,
    TurnStatus,
)

# The messages of the reply itself (what an acknowledgement must precede).
_REPLY = (ReplyText, ReplyAudio, Cue)


class Decision(Enum):
    PENDING = "pending"
    COMMITTED = "committed"
    DROPPED = "dropped"


class TurnOutbox:
    """Stamps a turn's messages with session, turn id and sequence number, in send order.

    While the turn is speculative (no id yet) messages are held; they are numbered only when
    they go out, so a dropped turn leaves no gap in anyone's sequence.
    """

    def __init__(
        self, send: Callable[[Outgoing], None], session: str, turn_id: int | None, character: str | None = None
    ) -> None:
        self._send = send
        self.session = session
        self.turn_id = turn_id
        self.character = character  # who speaks: stamped on every message (a scene has several)
        self._seq = itertools.count()
        self._held: list[SessionMessage] | None = [] if turn_id is None else None
        self._insert_at: int | None = None

    def emit(self, msg: SessionMessage) -> None:
        if self._held is not None:
            if self._insert_at is None:
                self._held.append(msg)
            else:
                self._held.insert(self._insert_at, msg)
                self._insert_at += 1
        else:
            self._send(dataclasses.replace(
                msg, session=self.session, turn=self.turn_id, seq=next(self._seq), character=self.character
            ))

    def open(self, turn_id: int) -> None:
        """Number the turn and send what was held, in order."""
        held, self._held = self._held or [], None
        self.turn_id = turn_id
        for msg in held:
            self.emit(msg)

    @contextlib.contextmanager
    def ahead_of_reply(self) -> Iterator[None]:
        """Messages emitted inside go before the held messages of the reply (its reply.text,
        reply.audio and cues), after its turn.start and story messages. No effect once open."""
        if self._held is not None:
            self._insert_at = next((i for i, m in enumerate(self._held) if isinstance(m, _REPLY)), len(self._held))
        try:
            yield
        finally:
            self._insert_at = None

    def discard(self) -> int:
        held, self._held = self._held or [], []
        return len(held)


@dataclass
class Delivered:
    """What the player actually got from a turn: the basis of its memory and of ``turn.end``."""

    audio_text: list[str] = field(default_factory=list)  # text of each audio chunk sent (heard)
    text_sent: list[str] = field(default_factory=list)  # reply.text deltas sent (read)
    # Timeline of the audio sent, in seconds of the turn's audio: (start, text) per word, or
    # per chunk when a voice has no word timings. A late cancel trims memory to what was heard.
    heard_marks: list[tuple[float, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    # When the audio sent so far has played, on ``time.perf_counter()``'s clock, as a game
    # plays it (``scheduling.played_until``): the next chunk's deadline. None before any audio.
    dry_at: float | None = None
    chunks: int = 0  # reply.audio chunks sent: the next chunk's number
    tokens: int = 0
    prompt: PromptUsage = field(default_factory=PromptUsage)  # the LLM call's prompt tokens, filled by its backend

    def heard_text(self, seconds: float) -> str:
        return " ".join(text for start, text in self.heard_marks if start < seconds)

    def spoken(self, audio: bool, heard: float | None) -> str:
        """The reply as the player got it: heard (audio session) or read (text-only)."""
        if audio:
            text = " ".join(t.strip() for t in self.audio_text if t.strip())
        else:
            text = "".join(self.text_sent).strip()
        if heard is not None and self.heard_marks and heard < self.audio_seconds:
            text = self.heard_text(heard)
        return text


class TurnHandle:
    def __init__(
        self,
        source: TurnSource,
        outbox: TurnOutbox,
        *,
        clock: TurnClock | None = None,
        user_text: str | None = None,
        request_id: str | int | None = None,
        prompt: str | None = None,
    ) -> None:
        self.source: TurnSource = source
        self.user_text = user_text
        # A scene's reaction or banter line answers an instruction ("Bram said ...; answer him"),
        # not the player: the model's last message, never remembered as the player's words.
        self.prompt = prompt
        self.request_id = request_id
        self.clock = clock or TurnClock()
        self.outbox = outbox
        self.delivered = Delivered()
        self.status: TurnStatus = "ok"
        self.interrupted = False
        self.heard: float | None = None  # seconds of audio the player heard, from a cancel
        self.guard_report: list[dict[str, str]] = []  # what the guard stopped: turn.end's `guard`
        self.preemptive = False  # a voice reply started when the player fell silent: turn.end's `preemptive`
        self.stop = threading.Event()  # polled by model threads; set only through cancel() / drop()
        self._on_stop: list[Callable[[], None]] = []
        self._ack: Callable[[], None] | None = None  # an acknowledgement waiting for the commit
        self.task: asyncio.Task[None] | None = None
        # Set once the turn's text is all written (its last clause may still be synthesizing):
        # a scene's banter starts the next line's model then, while this one is still spoken.
        self.text_done = asyncio.Event()
        self._decision = Decision.PENDING if outbox.turn_id is None else Decision.COMMITTED
        self._decided = asyncio.Event()
        if self._decision is Decision.COMMITTED:
            self._decided.set()

    # ------------------------------------------------------------------ identity

    @property
    def id(self) -> int | None:
        """The turn id the game sees; None while the turn is speculative."""
        return self.outbox.turn_id

    @property
    def speculative(self) -> bool:
        return self._decision is Decision.PENDING

    @property
    def dropped(self) -> bool:
        return self._decision is Decision.DROPPED

    @property
    def text(self) -> str:
        """What the turn has said so far (its reply.text deltas, an acknowledgement included)."""
        return "".join(self.delivered.text_sent).strip()

    @property
    def tokens(self) -> int:
        return self.delivered.tokens

    @property
    def audio_seconds(self) -> float:
        return self.delivered.audio_seconds

    # ------------------------------------------------------------------ the one cancel path

    def cancel(self, *, heard: float | None = None, interrupted: bool = True) -> None:
        """Stop the turn at the next token / chunk; its ``turn.end`` follows on its own."""
        if heard is not None:
            self.heard = heard
        if not self.stop.is_set():
            self.interrupted = interrupted
            self._stop()

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the turn is stopped (at once if it already is): a model call
        waiting for its first token has its own stop event, linked here."""
        if self.stop.is_set():
            callback()
        else:
            self._on_stop.append(callback)

    def _stop(self) -> None:
        self.stop.set()
        callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            callback()

    @property
    def cancelled(self) -> bool:
        return self.stop.is_set()

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    async def wait(self) -> None:
        """Until the turn has ended (its ``turn.end`` sent and its memory recorded)."""
        if self.task is not None:
            await asyncio.shield(self.task)

    # ------------------------------------------------------------------ speculation

    def commit(self, turn_id: int) -> None:
        """Make a speculative turn real: number it and send what it held, in order."""
        if self._decision is not Decision.PENDING:
            raise RuntimeError(f"turn already {self._decision.value}")
        self._decision = Decision.COMMITTED
        ack, self._ack = self._ack, None
        if ack is not None and self._may_ack():
            with self.outbox.ahead_of_reply():
                ack()
        if self.delivered.chunks:  # the audio it held goes out now, and plays from now on
            self.delivered.dry_at = time.perf_counter() + self.delivered.audio_seconds
        self.outbox.open(turn_id)
        self._decided.set()

    def drop(self) -> None:
        """Abandon a speculative turn without a trace: stop it, discard its messages."""
        if self._decision is not Decision.PENDING:
            raise RuntimeError(f"turn already {self._decision.value}")
        self._decision = Decision.DROPPED
        self._ack = None
        self.outbox.discard()
        self._stop()
        self._decided.set()

    def offer_ack(self, say: Callable[[], None]) -> None:
        """An acknowledgement to say if no audio of the reply is ready when the turn is decided:
        ``say()`` is called now for a real turn, at ``commit`` for a speculative one (its
        messages then go ahead of the reply it held). Not said once the turn is stopped."""
        if self._decision is Decision.PENDING:
            self._ack = say
        elif self._decision is Decision.COMMITTED and self._may_ack():
            say()

    def _may_ack(self) -> bool:
        return self.delivered.chunks == 0 and not self.cancelled

    async def decided(self) -> bool:
        """Wait until the turn is committed (True) or dropped (False)."""
        await self._decided.wait()
        return self._decision is Decision.COMMITTED

    # ------------------------------------------------------------------ messages

    def emit(self, msg: SessionMessage) -> None:
        if self._decision is not Decision.DROPPED:
            self.outbox.emit(msg)
