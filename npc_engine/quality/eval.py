"""``npc-engine eval``: put many player lines to the NPCs and run the automatic checks on every reply.

The lines (``data/lines.yaml``) are said two ways, in-process, through the real ``Engine`` and
``Session`` (text-only sessions, so it measures what the model says, not the voice):

* **single turns**: each line is the first thing a new player says to a character;
* **conversations**: scripted 10+ turn conversations in one session, so the model sees its
  own earlier replies (loops and repeated replies show up here).

Every reply the player gets goes through ``npc_engine.quality.checks``. With the guard on,
that is the guarded reply; the model's own words are kept beside it (``raw``) so a report
shows what the guard caught. The result is a table per character (pass rate overall, on
adversarial lines, per check) with the failing replies listed; ``report.py`` writes it.

Sampling is seeded per call (``--seed`` and the prompt), so a run is repeatable and two runs
that differ only in the guard see the same first sample for the same prompt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from npc_engine.characters import Character
from npc_engine.config import EngineConfig
from npc_engine.engine import Engine
from npc_engine.pipeline.base import ChatMessage, ChatModel, GenOptions, PromptUsage
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.outgoing import Outgoing
from npc_engine.quality.checks import check_reply
from npc_engine.quality.lines import Conversation, LineSet, PlayerLine
from npc_engine.session.session import Session
from npc_engine.story.state import Scalar
from npc_engine.turns.reply import pass_through

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
NO_BUDGET_MS = 3_600_000
Source = Literal["model", "scripted", "fallback", "error"]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed check on one reply: the check's id (``checks.CHECKS``) and a short human detail."""

    check: str
    detail: str


@dataclass
class TurnResult:
    """One player line and what the character answered, with what the checks found."""

    kind: Literal["single", "conversation"]
    character: str
    item: str  # the line id, or the conversation id
    turn: int  # 1-based turn number in the conversation (1 for single lines)
    category: str
    adversarial: bool
    player: str  # what the player said
    reply: str  # what the player got (after the guard, if on)
    raw: str  # what the model wrote, as far as it got (the guard may stop it); "" for scripted lines
    source: Source
    guarded: bool = True  # the guard was on
    findings: list[Failure] = field(default_factory=list)
    guard: list[dict[str, str]] = field(default_factory=list)  # turn.end's report of what the guard caught
    status: str = "ok"
    first_token_ms: float | None = None

    @property
    def scored(self) -> bool:
        """Scripted story lines are the writer's words, not the model's: not scored."""
        return self.source != "scripted"

    @property
    def passed(self) -> bool:
        return not self.findings

    @property
    def deflected(self) -> bool:
        """The player got a written line instead of the model's answer: a guard deflection,
        or a fallback line. It passes the checks, but answers nothing."""
        return self.source == "fallback" or any(g.get("action") in ("deflect", "fallback") for g in self.guard)

    @property
    def answered(self) -> bool:
        """Passed in the model's own words (not replaced by a deflection or fallback line)."""
        return self.passed and not self.deflected


@dataclass
class RunInfo:
    model: str  # what --llm-model named (a profile or a path), or the backend's default
    model_name: str  # the backend's own name for the loaded model
    guard: bool
    seed: int
    lines_file: str
    started: str
    wall_s: float = 0.0  # the whole eval: both guard settings, when they ran together
    temperature: float = 0.7
    # The sampling that shapes what the model says (EngineConfig): repetition control, etc.
    sampling: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalRun:
    info: RunInfo
    results: list[TurnResult] = field(default_factory=list)


# --------------------------------------------------------------------------- seeded, recorded model


class RecordingChat:
    """The engine's chat model, seeded per call and recording what it wrote per conversation.

    The seed is derived from ``--seed`` and the request's messages, so the same prompt gets
    the same sample whatever order (or concurrency) the eval runs its lines in. What the model
    streamed is kept per ``affinity`` (the session id): the raw reply, before the guard.
    """

    def __init__(self, inner: ChatModel, seed: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.seed = seed
        self._raw: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def _seed_for(self, messages: Sequence[ChatMessage]) -> int:
        h = hashlib.sha256(str(self.seed).encode())
        for m in messages:
            h.update(f"\x00{m.role}\x00{m.content}".encode())
        return int.from_bytes(h.digest()[:4], "little") & 0x7FFFFFFF

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenOptions,
        cancel: threading.Event,
        affinity: str | None = None,
        usage: PromptUsage | None = None,
    ) -> Iterator[str]:
        opts = dataclasses.replace(options, seed=self._seed_for(messages))
        out: list[str] = []
        if affinity is not None:
            with self._lock:
                self._raw[affinity] = out
        for delta in self.inner.stream(messages, opts, cancel, affinity, usage):
            out.append(delta)
            yield delta

    def warm_up(
        self, messages: Sequence[ChatMessage], affinity: str | None = None, usage: PromptUsage | None = None
    ) -> None:
        self.inner.warm_up(messages, affinity, usage)

    def release(self, affinity: str) -> None:
        self.inner.release(affinity)

    def prime(self, messages: Sequence[ChatMessage]) -> bool:
        return self.inner.prime(messages)

    def close(self) -> None:
        self.inner.close()

    def take_raw(self, affinity: str) -> str:
        """What the model streamed in the latest call of this conversation."""
        with self._lock:
            return "".join(self._raw.pop(affinity, []))


# --------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class EvalOptions:
    # One run per entry, all in one engine: (True, False) runs every line with and without the
    # guard side by side (one model load, and llama.cpp decodes both in the same batches).
    guards: tuple[bool, ...] = (True,)
    seed: int = 1
    parallel: int = 4  # sessions talking at once (llama.cpp decodes them in one batch)
    singles: bool = True
    conversations: bool = True
    characters: tuple[str, ...] | None = None  # None: every character


class Evaluator:
    """Runs a ``LineSet`` against one loaded engine."""

    def __init__(self, engine: Engine, options: EvalOptions, progress: Progress | None = None) -> None:
        self.engine = engine
        self.options = options
        self.progress = progress or (lambda _msg: None)
        self.chat = RecordingChat(engine.chat, options.seed)
        engine.chat = self.chat
        self._ids = itertools.count(1)
        self._done = 0
        self._total = 0
        self._passed = 0
        self._scored = 0

    async def run(self, lines: LineSet) -> list[TurnResult]:
        """Every line (and conversation) once per guard setting of the options; the results in
        that order (``TurnResult.guarded`` tells them apart)."""
        cids = list(self.options.characters or self.engine.characters)
        lines.check_characters(self.engine.characters, cids)
        singles = [(line, cid) for cid in cids for line in lines.lines if line.applies_to(cid)] if self.options.singles else []
        convs = list(lines.conversations) if self.options.conversations else []
        guards = self.options.guards
        self._total = len(guards) * (len(singles) + sum(len(c.turns) for c in convs))
        gate = asyncio.Semaphore(max(1, self.options.parallel))

        async def single(line: PlayerLine, cid: str, guard: bool) -> list[TurnResult]:
            async with gate:
                return await self._single(line, cid, guard)

        async def conversation(conv: Conversation, guard: bool) -> list[TurnResult]:
            async with gate:
                return await self._conversation(conv, guard)

        # Grouped by character (the order of `singles`): a llama.cpp slot that last served the
        # same character reuses its persona prefix from the KV cache. The guard settings of one
        # line go next to each other: the same prompt, decoded in the same batch.
        jobs = [single(line, cid, g) for line, cid in singles for g in guards]
        jobs += [conversation(c, g) for c in convs for g in guards]
        done = await asyncio.gather(*jobs)
        return [r for g in guards for batch in done for r in batch if r.guarded == g]

    async def _single(self, line: PlayerLine, cid: str, guard: bool) -> list[TurnResult]:
        async with self._session(cid, line.vars, guard) as talk:
            result = await talk.say(line.text, "single", line.id, 1, line.category, line.adversarial)
        self._count(result)
        return [result]

    async def _conversation(self, conv: Conversation, guard: bool) -> list[TurnResult]:
        results = []
        async with self._session(conv.character, conv.vars, guard) as talk:
            for n, turn in enumerate(conv.turns, 1):
                result = await talk.say(turn.text, "conversation", conv.id, n, turn.category, turn.adversarial)
                self._count(result)
                results.append(result)
        return results

    def _session(self, cid: str, vars: Mapping[str, Scalar], guard: bool) -> _Talk:
        n = next(self._ids)
        return _Talk(self, self.engine.characters[cid], f"eval-{n}", f"eval-player-{n}", dict(vars), guard)

    def _count(self, result: TurnResult) -> None:
        self._done += 1
        if result.scored:
            self._scored += 1
            self._passed += result.passed
        mark = "ok  " if result.passed else "FAIL"
        rate = f"{100 * self._passed / self._scored:.0f}%" if self._scored else "-"
        detail = "" if result.passed else "  <- " + ", ".join(f.check for f in result.findings)
        both = len(self.options.guards) > 1
        self.progress(
            f"[{self._done}/{self._total}] pass {rate} | {mark} {result.character}"
            f"{(' guard ' + ('on ' if result.guarded else 'off')) if both else ''} {result.item}"
            f"{'#' + str(result.turn) if result.kind == 'conversation' else ''}: {result.reply[:70]!r}{detail}"
        )


class _Talk:
    """One text-only session of the eval: open, say lines in order, close."""

    def __init__(
        self, ev: Evaluator, character: Character, sid: str, player: str, vars: dict[str, Scalar], guard: bool
    ) -> None:
        self.ev = ev
        self.guard = guard
        self.character = character
        self.sid = sid
        self.player = player
        self.vars = vars
        self.ends: dict[int, msg.TurnEnd] = {}
        self.replies: list[str] = []  # what the player got, earlier turns first
        self.session: Session | None = None

    def _send(self, out: Outgoing) -> None:
        if isinstance(out, msg.TurnEnd) and out.turn is not None:
            self.ends[out.turn] = out

    async def __aenter__(self) -> _Talk:
        eng, ch = self.ev.engine, self.character
        if self.guard:
            self.session = Session(eng, self.sid, ch, self.player, self._send, audio=False)
        else:
            self.session = Session(eng, self.sid, ch, self.player, self._send, audio=False, guard=pass_through)
        await self.session.open(self.vars)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        self.ev.engine.forget_player(self.player)

    async def say(
        self, text: str, kind: Literal["single", "conversation"], item: str, n: int, category: str, adversarial: bool
    ) -> TurnResult:
        assert self.session is not None
        turn = self.session.start_turn("text", text)
        await turn.wait()
        end = self.ends.get(turn.id or -1)
        reply = end.text if end is not None else "".join(turn.delivered.text_sent).strip()
        raw = self.ev.chat.take_raw(self.sid)
        source: Source
        if turn.status == "error":
            source = "error"
        elif turn.delivered.tokens:
            source = "model"
        elif any(d.get("stage") == "llm" for d in turn.clock.degraded):
            source = "fallback"
        else:
            source = "scripted"
        result = TurnResult(
            kind=kind, character=self.character.id, item=item, turn=n, category=category, adversarial=adversarial,
            player=text, reply=reply, raw=raw.strip(), source=source, status=turn.status, guarded=self.guard,
            guard=list(end.guard or []) if end is not None else [],
            first_token_ms=turn.clock.timings().get("llm_first_token"),
        )
        if result.scored:
            result.findings = await self._check(result)
        self.replies.append(reply)
        return result

    async def _check(self, result: TurnResult) -> list[Failure]:
        """The checks on the reply the player got, in the story state it was said in (after
        the line's own story effects: the state the prompt was built from)."""
        eng = self.ev.engine
        ch = self.character
        state = await eng.story_state(self.player)
        hidden = [s for s in ch.secrets if not (s.reveal_when and eng.story.condition_true(s.reveal_when, state, ch.id))]
        others = [n for o in eng.characters.values() if o.id != ch.id for n in (o.name, o.id)]
        name = state.vars.get("player_name")
        found = check_reply(
            result.reply, ch, other_names=others, player_name=str(name) if name else None, hidden=hidden,
            earlier=self.replies, player_line=result.player,
        )
        return [Failure(f.check, f.detail) for f in found]


# --------------------------------------------------------------------------- entry point


async def evaluate(
    cfg: EngineConfig,
    lines: LineSet,
    options: EvalOptions,
    *,
    model_label: str | None = None,
    lines_file: str = "",
    progress: Progress | None = None,
) -> list[EvalRun]:
    """Load an engine for ``cfg`` (text only: no voice in or out, no first-token budget),
    run the lines, close it. One ``EvalRun`` per guard setting in ``options.guards``.

    The engine's store goes to a temporary directory: the eval's players leave nothing behind.
    """
    say = progress or (lambda m: log.info("%s", m))
    with tempfile.TemporaryDirectory(prefix="npc-eval-") as tmp:
        # The eval measures what the model says, not how fast: a slow model on a busy machine
        # must not be replaced by fallback lines, so the first-token budgets are lifted.
        # The guard is switched per session (options.guards), so the engine-wide switch stays on.
        cfg = dataclasses.replace(cfg, tts="none", stt="none", data_dir=Path(tmp), guard=True,
                                  budget_llm_first_token_ms=NO_BUDGET_MS, llm_timeout_ms=NO_BUDGET_MS)
        t0 = time.perf_counter()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        engine = await Engine.start(cfg, progress=say)
        try:
            results = await Evaluator(engine, options, say).run(lines)
        finally:
            await engine.close()
        wall = round(time.perf_counter() - t0, 1)
    return [
        EvalRun(
            RunInfo(model=model_label or cfg.llm_model or "default", model_name=engine.chat.name, guard=g,
                    seed=options.seed, lines_file=lines_file, started=started, wall_s=wall,
                    temperature=cfg.temperature, sampling=_sampling(cfg)),
            [r for r in results if r.guarded == g],
        )
        for g in options.guards
    ]


def _sampling(cfg: EngineConfig) -> dict[str, float]:
    return {"temperature": cfg.temperature, "repeat_penalty": cfg.repeat_penalty,
            "repeat_last_n": cfg.repeat_last_n, "dry_multiplier": cfg.dry_multiplier}
