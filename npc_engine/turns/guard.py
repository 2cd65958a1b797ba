"""The guard stage: stops what the character must not say, sentence by sentence, as it streams.

    llm_deltas -> parse_cues -> guard -> clauses -> speak

The guard holds back the text of the sentence being written and lets it out once the
sentence has ended and passed the checks (``npc_engine.quality.checks``). What fails is
never sent nor spoken:

* ``strip``: a speaker label opening the reply ("Assistant:", "Auntie:") goes, the rest stays;
* ``cut``: the reply ends before another speaker's label, any label after the first
  sentence, or a chat-template token; at a loop ("aye, aye, aye, aye") one "aye" stays;
* ``deflect``: AI or prompt talk, refusal boilerplate or a secret's key phrase ends the reply
  with one of the character's ``deflections`` lines instead;
* ``drop``: a sentence with an out-of-world word, a contradicted fact, a wrong name, a repeat
  of an earlier sentence or an echo of the player goes; the reply goes on with the next one;
* nothing left to say (everything dropped, or an empty reply): a ``deflect`` or ``fallback``
  line.

Sentences also pass one by one what only the reply as a whole shows (``Checker.so_far`` on
the sentences let out plus the one just ended): a secret key whose words span sentences
deflects, a loop across sentences cuts, and a reply that repeats an earlier one (short
replies too: "Aye, that I can." to a fifth question) or echoes the player holds its last
sentence back: the next sentence may make the reply new (both go out), else it is dropped.

Latency: holding a sentence back until it ends would delay the first audio by the time the
model takes to write the rest of the first sentence (the chunker's first clause is 2-5
words). So the *first* fragment of a reply (what the chunker would cut as the first clause)
is let out as soon as it, with the two words after it (a key phrase or "as an AI" can
straddle its end), passes every check that can be decided on a fragment (labels, AI/prompt
talk, refusals, secret keys, loops, out-of-world words, names, facts), unless it starts like
an earlier sentence or the player's line (a repeat or an echo needs the whole sentence).
Later text waits for its sentence's end: by then the first clause is being spoken. Measured
with bench/bench_guard.py (bram, 20 lines, greedy decoding, a loaded 2-core machine), the
median wait from the first token to the first clause: no guard 356 ms, fragment 518 ms,
whole sentence 945 ms (fast profile); 893 / 1217 / 1492 ms (balanced). The price of the
fragment: a failure found later in the first sentence can no longer be dropped, so the
reply ends there with a deflection line, which used to read as the fragment's continuation
("I'm sorry, That is no concern of yours, citizen."). So the first sentence is held whole
when that is likely: when the player's line invites trouble (``Checker.provoked``: talk of
AI, prompts, games, roles, the world outside, a hidden secret's words: in an eval run,
none of the 102 ordinary replies, 109 of the 142 adversarial ones) or the reply opens like a
refusal ("I'm sorry,", "As a", "a real person"). Where it still happens, a dash goes between the fragment
and the line in the text ("I'm sorry, — That is no concern of yours, citizen."); it is not
spoken, and the two are separate chunks of audio anyway.
The loop and the hard checks also run on the unfinished sentence after every delta, so a
looping model is stopped without waiting for a sentence end that never comes.

A deflection or fallback line goes downstream as ``Scripted``: ``clauses`` speaks it whole,
from the line cache, and the reply ends there. Every catch is recorded in the turn
(``turn.guard_report``), which ``turn.end`` reports as ``guard: [{check, action}]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal

from npc_engine.pipeline.chunker import ChunkerConfig, ClauseChunker
from npc_engine.pipeline.cues import Cue, Parsed
from npc_engine.quality import checks as C
from npc_engine.quality.checks import Checker, Finding, normalize, split_sentences
from npc_engine.turns.handle import TurnHandle
from npc_engine.turns.reply import Guard, Scripted
from npc_engine.turns.speech import Speakable

log = logging.getLogger(__name__)

Action = Literal["strip", "drop", "cut", "deflect", "fallback"]
Hold = Literal["sentence", "fragment"]

# What each check does to a sentence (role labels and loops carry their own fix).
DEFLECT = frozenset({C.AI_TALK, C.REFUSAL, C.PROMPT_TALK, C.SECRET})
DROP = frozenset({C.OUT_OF_WORLD, C.FACT, C.NAME, C.REPEAT, C.ECHO})
# Checked on the unfinished sentence after every delta: stop these without waiting.
_EARLY = frozenset({C.ROLE_LABEL, C.AI_TALK, C.REFUSAL, C.PROMPT_TALK, C.SECRET, C.LOOP})
# A sentence held longer than this is judged and let out as it is (a run-on reply must not
# hold the voice back for ever; the chunker cuts later chunks at 220 characters too).
MAX_HOLD_CHARS = 240
# Words past the first fragment that must be in (and pass) before the fragment is let out.
LOOKAHEAD = 2
# Between a first fragment already let out and a deflection line: the speaker breaks off.
BRIDGE = "— "
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|\n+")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "sr", "jr", "mt", "capt", "sgt", "lt", "vs", "etc"})


@dataclass(frozen=True, slots=True)
class Caught:
    """One thing the guard stopped: which check, what it did, and the text it stopped."""

    check: str
    action: Action
    detail: str
    text: str

    def report(self) -> dict[str, str]:
        """The ``turn.end`` entry: the check and the action (no text: it may hold a secret)."""
        return {"check": self.check, "action": self.action}


class _Stop(Exception):
    """The reply ends here (cut or deflected)."""


@dataclass(slots=True)
class _Held:
    """A sentence that passed its own checks but makes the reply so far repeat an earlier
    reply or echo the player: held until the next sentence tells (dilutes it: both go out)
    or the reply ends (it was a repeat: dropped)."""

    text: str  # as it will be let out
    cues: list[Cue]
    whole: str  # stripped, as checked
    finding: Finding


class ReplyGuard:
    """One reply's guard. ``__call__`` is the stage (a ``Guard``)."""

    def __init__(
        self,
        checker: Checker,
        *,
        deflection: Callable[[], Speakable | None],
        fallback: Callable[[], Speakable | None],
        cancelled: Callable[[], bool] = lambda: False,
        on_catch: Callable[[Caught], None] | None = None,
        hold: Hold = "fragment",
        chunking: ChunkerConfig | None = None,
        max_sentences: int | None = None,
    ) -> None:
        self.checker = checker
        # The reply's sentence limit: once that many sentences are out the guard ends the
        # reply, so the model stops at once instead of writing a sentence nobody will hear.
        self.max_sentences = max_sentences
        self._sentences = 0
        self._deflection = deflection
        self._fallback = fallback
        self._cancelled = cancelled
        self._on_catch = on_catch
        self.hold = hold
        self._chunking = chunking or ChunkerConfig()
        self.caught: list[Caught] = []
        self._buf = ""  # the sentence being written, not yet let out
        self._cues: list[Cue] = []  # cues that came with it
        self._released_part = 0  # chars of _buf already let out (the first fragment)
        self._said: list[str] = []  # normalised sentences let out, to catch one said twice
        self._reply: list[str] = []  # the sentences let out, as checked: the reply so far
        self._held: _Held | None = None
        # A line that invites trouble ("are you an AI?", a secret's words): the first clause
        # is not let out early, so a deflection never follows a fragment already spoken.
        self.provoked = checker.provoked() if hold == "fragment" else None
        self._out: list[Parsed] = []  # what to yield next
        self._any_text = False

    # ------------------------------------------------------------------ the stage

    async def __call__(self, parsed: AsyncGenerator[Parsed, None]) -> AsyncGenerator[Parsed, None]:
        async with aclosing(parsed):
            try:
                async for piece in parsed:
                    self._feed(piece)
                    for item in self._take():
                        yield item
                if self._cancelled():
                    return
                self._finish()
            except _Stop:
                pass
        if not self._cancelled():
            for item in self._take():
                yield item

    def _take(self) -> list[Parsed]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ logic (synchronous)

    def _feed(self, piece: Parsed) -> None:
        self._buf += piece.text
        while (end := self._sentence_end(self._buf)) is not None:
            sentence, self._buf = self._buf[:end], self._buf[end:]
            self._judge(sentence)
        # A piece's cues come after its text (the parser cannot tell where inside a piece a
        # tag was): a cue that closes a sentence goes with the next one, as without a guard.
        self._cues.extend(piece.cues)
        if len(self._buf) > MAX_HOLD_CHARS:
            cut = self._buf.rfind(" ", 0, MAX_HOLD_CHARS) + 1 or len(self._buf)
            sentence, self._buf = self._buf[:cut], self._buf[cut:]
            self._judge(sentence)
        if self._buf.strip():
            self._early()

    def _finish(self) -> None:
        """The model's reply has ended: judge what is left, and make sure something is said."""
        if self._buf.strip():
            sentence, self._buf = self._buf, ""
            self._judge(sentence)
        self._drop_held()
        if not self._any_text:
            if self.caught:
                self._deflect()
            else:
                self._catch(C.EMPTY, "fallback", "the model's reply had no words", "")
                self._scripted(self._fallback())
            raise _Stop

    def _sentence_end(self, buf: str) -> int | None:
        for m in _SENTENCE_END.finditer(buf):
            word = buf[:m.start()].rsplit(None, 1)
            if m.group().startswith(".") and word and word[-1].lower().lstrip("\"'(") in _ABBREVIATIONS:
                continue
            if not self._released_part and not any(c.isalnum() for c in buf[:m.start()]):
                continue  # a lone "..." or "!" before any word: part of the next sentence
            return m.end()
        return None

    def _early(self) -> None:
        """Hard failures on the unfinished sentence; and the first fragment, let out early."""
        words_end = self._buf.rfind(" ") if not self._buf[-1:].isspace() else len(self._buf)
        whole = self._buf[:words_end] if words_end > 0 else ""
        if not whole.strip():
            return
        found = [f for f in self.checker.fragment(whole.strip()) if f.check in _EARLY]
        if found:
            sentence, self._buf = self._buf, ""
            self._act(sentence, found, partial=True)
            return
        if (self.hold == "fragment" and self.provoked is None and not self._any_text and not self._released_part
                and self._held is None):
            cut = self._first_fragment(whole)
            # Let the fragment out only once LOOKAHEAD more words are in and pass too: a key
            # phrase or "as an AI" can straddle the fragment's end. An opening that often goes
            # on to a refusal or AI talk ("I'm sorry, but...") waits for its sentence's end.
            if cut is not None and len(whole[cut:].split()) >= LOOKAHEAD:
                fragment = self._buf[:cut]
                if (not self._fragment_findings(whole) and not self._may_repeat(fragment)
                        and not Checker.risky_opening(whole)):
                    self._release(fragment)
                    self._released_part = cut

    def _first_fragment(self, text: str) -> int | None:
        """Where the chunker will cut the first clause of ``text`` (whole words only): the
        chunker itself is asked, so the guard lets out exactly what it would speak first."""
        chunks = ClauseChunker(self._chunking).feed(text + " ")
        if not chunks:
            return None
        n = len(chunks[0].split())
        spans = list(re.finditer(r"\S+\s*", text))
        if len(spans) < n:
            return None
        return spans[n - 1].end()

    def _may_repeat(self, fragment: str) -> bool:
        """The fragment starts like an earlier sentence or like the player's line: wait for
        the whole sentence to tell whether it repeats or echoes."""
        head = normalize(fragment).split()
        if not head:
            return False
        ctx = self.checker.ctx
        starts = [normalize(s).split() for e in ctx.earlier for s in split_sentences(e)]
        starts.append(normalize(ctx.player_line).split())
        return any(s[:len(head)] == head for s in starts if len(s) > len(head))

    def _fragment_findings(self, fragment: str) -> list[Finding]:
        found = self.checker.sentence(fragment.strip())
        # Repeats and echoes need the whole sentence; a fragment is too short to tell.
        return [f for f in found if f.check not in (C.REPEAT, C.ECHO)]

    def _judge(self, sentence: str) -> None:
        if not sentence.strip():
            self._buf_passthrough(sentence)
            return
        whole = sentence.strip()
        found = self.checker.sentence(whole)
        n = normalize(whole)
        if n and n in self._said and len(n.split()) >= 2:
            found.append(Finding(C.LOOP, f"says the same sentence twice: {whole!r}", whole, cut=True, fix=""))
        if found:
            self._act(sentence, found, partial=False)
        else:
            self._passed(sentence, whole)
        self._released_part = 0
        if self.max_sentences is not None and self._sentences >= self.max_sentences:
            raise _Stop

    def _passed(self, sentence: str, whole: str) -> None:
        """A sentence that passed its own checks; now the reply so far with it: a secret key
        whose words span sentences (deflect), a loop across sentences (cut), a repeat of an
        earlier reply or an echo of the player (held, then dropped unless the next sentence
        makes it new: short sentences pass their own repeat check, and "Aye, citizen. A fine
        one." said again is two of them)."""
        held = [self._held.whole] if self._held is not None else []
        found = self.checker.so_far(" ".join([*self._reply, *held, whole]))
        if not found:
            self._let_out_held()
            self._let_out(sentence[self._released_part:], whole)
            return
        f = next((g for g in found if g.check in (C.SECRET, C.LOOP)), found[0])
        if f.check == C.SECRET:
            self._catch(f.check, "deflect", f.detail, whole)
            self._deflect()
            raise _Stop
        if f.check == C.LOOP or self._released_part:
            # A loop only grows; a sentence already partly out cannot be held back: either
            # way the reply ends before this sentence.
            self._catch(f.check, "cut" if f.check == C.LOOP and not self._released_part else "deflect", f.detail, whole)
            self._stop_here()
        last = self.max_sentences is not None and self._sentences + len(held) + 1 >= self.max_sentences
        if self._held is not None or last:
            # Still a repeat with the held sentence, or no sentence can follow to change it.
            self._catch(f.check, "drop", f.detail, whole)
            self._cues.clear()
            return
        self._held = _Held(sentence, self._cues, whole, f)
        self._cues = []

    def _let_out(self, text: str, whole: str) -> None:
        self._release(text)
        self._said.append(normalize(whole))
        self._reply.append(whole)
        self._sentences += 1

    def _let_out_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            # Its cues, not the current sentence's, go before its text.
            pending, self._cues = self._cues, held.cues
            self._let_out(held.text, held.whole)
            self._cues = pending

    def _drop_held(self) -> None:
        """The reply ends with a sentence still held: it was a repeat (or an echo) after all."""
        held, self._held = self._held, None
        if held is not None:
            self._catch(held.finding.check, "drop", held.finding.detail, held.whole)

    def _buf_passthrough(self, space: str) -> None:
        if self._any_text and space and self._held is None:
            self._out.append(Parsed(text=" " if "\n" in space else space))

    def _act(self, sentence: str, found: list[Finding], *, partial: bool) -> None:
        """Do what the worst finding asks (see the module's table)."""
        whole = sentence.strip()
        first = found[0]
        for f in found:
            if f.check in DEFLECT:
                self._catch(f.check, "deflect", f.detail, whole)
                self._deflect()
                raise _Stop
        label = next((f for f in found if f.check == C.ROLE_LABEL), None)
        # A label opening the reply is stripped; one opening a later sentence or line means
        # the model is writing a script, so that label is where the reply ends.
        if label is not None and label.fix is not None and not label.cut and not self._any_text:
            self._catch(C.ROLE_LABEL, "strip", label.detail, whole)
            # The fix is the checked text without its label; text after the checked part
            # (the word still being written) stays.
            rest = label.fix + whole[len(label.text):]
            if partial:
                self._buf = rest + sentence[len(sentence.rstrip()):]
            elif rest.strip():
                self._judge(rest + (sentence[len(sentence.rstrip()):] or " "))
            return
        stopper = next((f for f in found if f.cut or f.check == C.ROLE_LABEL), None)
        if stopper is not None:
            self._catch(stopper.check, "cut", stopper.detail, whole)
            keep = (stopper.fix or "").strip() if stopper.cut else ""
            out = sentence[:self._released_part].strip()  # the first fragment, if already let out
            if (keep.startswith(out) and keep[len(out):].strip()
                    and not [g for g in self.checker.sentence(keep) if g.check != C.LOOP]):
                self._release(keep[len(out):].lstrip() if out else keep)
                self._released_part = 0  # the sentence is complete now: no bridge needed
            self._stop_here()
        for f in found:
            if f.check in DROP:
                if self._released_part:
                    # Part of this sentence is already out: it cannot be dropped any more.
                    self._catch(f.check, "deflect", f.detail, whole)
                    self._deflect()
                    raise _Stop
                self._catch(f.check, "drop", f.detail, whole)
                self._cues.clear()
                return
        # Unknown check ids (none today): treat as a drop, never let them through.
        self._catch(first.check, "drop", first.detail, whole)
        self._cues.clear()

    def _stop_here(self) -> None:
        self._drop_held()
        if not self._any_text or self._released_part:
            self._deflect()  # nothing said, or a first fragment left hanging
        raise _Stop

    def _release(self, text: str) -> None:
        if not text.strip():
            return
        if not self._any_text:
            text = text.lstrip()
        text = re.sub(r"\s*\n\s*", " ", text)  # a line break in speech is a pause: a space
        if self._cues:
            # Cues first, on their own: ``clauses`` gives a piece's cues to the clause after
            # the text it closes, and these belong to the start of this text.
            self._out.append(Parsed(cues=self._cues))
            self._cues = []
        self._out.append(Parsed(text=text))
        self._any_text = True

    def _deflect(self) -> None:
        self._drop_held()
        line = self._deflection() or self._fallback()
        if line is not None and self._released_part:
            # The first fragment of this sentence is already out ("I'm sorry,"): the deflection
            # must not read as its continuation ("I'm sorry, That is no concern of yours").
            # A dash marks the break in the text; it is not spoken (the chunker drops a chunk
            # without words), and the fragment and the line are two chunks of audio anyway.
            self._out.append(Parsed(text=BRIDGE))
        self._scripted(line)

    def _scripted(self, line: Speakable | None) -> None:
        if line is not None:
            self._out.append(Scripted(line=line))
            self._any_text = True

    def _catch(self, check: str, action: Action, detail: str, text: str) -> None:
        caught = Caught(check, action, detail, text)
        self.caught.append(caught)
        log.info("guard: %s -> %s (%s): %r", check, action, detail, text[:120])
        if self._on_catch is not None:
            self._on_catch(caught)


def guard_stage(reply_guard: ReplyGuard) -> Guard:
    """``reply_guard`` as the chain's ``Guard`` callable."""
    return reply_guard.__call__


def for_turn(
    turn: TurnHandle,
    checker: Checker,
    *,
    deflection: Callable[[], Speakable | None],
    fallback: Callable[[], Speakable | None],
    hold: Hold = "fragment",
    max_sentences: int | None = None,
) -> Guard:
    """The guard of one turn: what it catches goes into ``turn.guard_report`` (for turn.end)."""
    return guard_stage(ReplyGuard(
        checker,
        deflection=deflection,
        fallback=fallback,
        cancelled=lambda: turn.cancelled,
        on_catch=lambda c: turn.guard_report.append(c.report()),
        hold=hold,
        max_sentences=max_sentences,
    ))
