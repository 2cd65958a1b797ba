"""Streaming parser that pulls animation cues out of the LLM's text.

The model is asked to mark cues inline as ``[emotion:happy]``, ``[gesture:nod]`` or
``[action:give_item]`` (a bare ``[nod]`` works when the name is unambiguous). Small
models also write stage directions such as ``*nods slowly*`` or ``(laughs)``. Both are removed from the
spoken text; a tag naming something the character is allowed becomes a ``Cue``, anything
else is dropped (and reported as ``rejected`` so it can be logged). Tokens arrive in
arbitrary pieces, so a half-open ``[``, ``*`` or ``(`` is held back until it closes, and only
released as text if it never does within ``MAX_TAG`` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

CueKind = Literal["emotion", "gesture", "action"]
KINDS: tuple[CueKind, ...] = ("emotion", "gesture", "action")
MAX_TAG = 48
# Stage directions come as *nods* and, as often from the small models, as (laughs) or
# (smiling wistfully): the voice said those aloud (bench replies, issue #10's third round).
_OPENERS = {"[": "]", "*": "*", "(": ")"}


@dataclass(frozen=True, slots=True)
class Cue:
    kind: CueKind
    name: str


@dataclass(slots=True)
class Parsed:
    text: str = ""
    cues: list[Cue] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


class CueParser:
    def __init__(
        self,
        emotions: Iterable[str],
        gestures: Iterable[str],
        actions: Iterable[str],
        speaker_names: Iterable[str] = (),
    ) -> None:
        self.allowed: dict[CueKind, frozenset[str]] = {
            "emotion": frozenset(e.lower() for e in emotions),
            "gesture": frozenset(g.lower() for g in gestures),
            "action": frozenset(a.lower() for a in actions),
        }
        self._speakers = {s.lower() for s in speaker_names}
        self._pending = ""
        self._at_start = True
        self._last = " "  # last character emitted, to avoid doubled spaces where a tag was

    def feed(self, delta: str) -> Parsed:
        self._pending += delta
        return self._drain(final=False)

    def flush(self) -> Parsed:
        return self._drain(final=True)

    def _drain(self, final: bool) -> Parsed:
        out = Parsed()
        buf = self._pending
        if self._at_start:
            # Small models like to open with "Bram: ...". Hold text back only while it
            # could still be such a label, so the first token is not delayed otherwise.
            head = buf.lstrip()
            low = head.lower()
            for name in self._speakers:
                if low.startswith(name + ":"):
                    buf = head[len(name) + 1:].lstrip()
                    break
            else:
                if not final and any((n + ":").startswith(low) for n in self._speakers):
                    return out
            self._at_start = False
        text: list[str] = []
        i = 0
        while i < len(buf):
            ch = buf[i]
            closer = _OPENERS.get(ch)
            if closer is None:
                text.append(ch)
                i += 1
                continue
            end = buf.find(closer, i + 1)
            if end == -1:
                if not final and len(buf) - i <= MAX_TAG:
                    break  # wait for the closing bracket
                text.append(buf[i:] if ch == "[" else buf[i + 1:])
                i = len(buf)
                break
            if end - i > MAX_TAG:  # too long to be a tag: a stray character
                text.append(ch if ch == "[" else "")
                i += 1
                continue
            self._classify(buf[i + 1:end], ch != "[", out)
            i = end + 1
        self._pending = buf[i:]
        cleaned = _tidy("".join(text))
        if self._last.isspace():
            cleaned = cleaned.lstrip(" ")
        if cleaned:
            self._last = cleaned[-1]
        out.text = cleaned
        return out

    def _classify(self, body: str, stage_direction: bool, out: Parsed) -> None:
        body = body.strip().lower()
        if not body:
            return
        kind_name = body.split(":", 1) if ":" in body else (None, body)
        kind, name = kind_name[0], kind_name[1].strip()
        if kind is not None:
            cue_kind = _cue_kind(kind.strip())
            if cue_kind is not None and name in self.allowed[cue_kind]:
                out.cues.append(Cue(cue_kind, name))
                return
            out.rejected.append(body)
            return
        # A bare name or a stage direction: accept the first allowed word, in kind order.
        words = re.findall(r"[a-z_]+", name) if stage_direction else [name.replace(" ", "_")]
        for k in KINDS:
            for w in words:
                for cand in (w, w.rstrip("s"), w[:-2] if w.endswith("es") else w):
                    if cand in self.allowed[k]:
                        out.cues.append(Cue(k, cand))
                        return
        out.rejected.append(body)


def _cue_kind(text: str) -> CueKind | None:
    """``text`` as a ``CueKind`` (typed, unlike ``text in KINDS``), or None for an unknown kind."""
    for k in KINDS:
        if k == text:
            return k
    return None


def _tidy(text: str) -> str:
    # Removing a tag can leave doubled spaces or a space before punctuation.
    text = re.sub(r"[ \t]{2,}", " ", text)
    return re.sub(r" ([,.!?;:])", r"\1", text)
