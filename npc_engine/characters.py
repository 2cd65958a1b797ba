"""Characters as writers author them (``characters/<id>.yaml``), and their loader.

The data only: who the character is, how they sound, what they know and may
reveal, which cues they may use, and their scripted greeting/fallback lines.
The prompt is built elsewhere (``npc_engine.pipeline.prompt``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator

from npc_engine.story.conditions import validate_condition_field
from npc_engine.story.lines import Line
from npc_engine.yamlsrc import (
    Sourced,
    SourceError,
    ValidationFailed,
    YMap,
    load_yaml_file,
    suggest,
    validation_errors,
)

__all__ = [
    "ACK_KINDS",
    "DEFAULT_EMOTIONS",
    "KNOWN_VOICES",
    "Ack",
    "AckKind",
    "Character",
    "Example",
    "Fact",
    "Line",
    "ReplyStyle",
    "Secret",
    "ValidationFailed",
    "VoiceSpec",
    "load_characters",
    "read_character",
    "read_characters",
]

log = logging.getLogger(__name__)

# The Kokoro voice packs the engine ships (npm kokoro-js voices/, see NOTICE).
KNOWN_VOICES: tuple[str, ...] = ("af_heart", "af_bella", "am_michael", "bm_george", "bf_emma")
DEFAULT_EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised", "afraid")
CHARACTER_ID = re.compile(r"^[a-z][a-z0-9_]*$")
YAML_SUFFIXES = (".yaml", ".yml")
# The kinds of player line an acknowledgement may answer (npc_engine.turns.acks classifies
# the line); ``any`` fits every line.
AckKind = Literal["question", "greeting", "thanks", "insult", "any"]
ACK_KINDS: tuple[str, ...] = get_args(AckKind)
ACK_MAX_WORDS = 4  # longer, and it stops sounding like a reaction and starts to be an answer


class VoiceSpec(Sourced):
    """A Kokoro voice id and a speaking-rate multiplier."""

    id: str
    speed: float = Field(1.0, ge=0.5, le=2.0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value


class Secret(Sourced):
    """Something the character must not say unless ``reveal_when`` holds (never, if it is absent).

    ``keys`` are short phrases whose appearance in a reply means the secret leaked (the guard
    stops such a sentence and the eval counts it); ``a + b`` means both words in one sentence.
    """

    text: str
    reveal_when: str | None = None
    keys: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value

    @field_validator("reveal_when", mode="before")
    @classmethod
    def _condition_parses(cls, value: Any) -> Any:
        return validate_condition_field(value)


class Fact(Sourced):
    """A short line the character holds true, given to the model as is.

    With ``about`` (keywords) and ``value`` (the accepted answers), the fact is also checkable:
    a reply sentence that mentions an ``about`` word and states another value of the same kind
    (another number, another proper name) contradicts it.
    """

    text: str
    about: list[str] = Field(default_factory=list)
    value: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value

    @field_validator("about", "value", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value

    @field_validator("value", mode="after")
    @classmethod
    def _as_text(cls, value: list[Any]) -> list[str]:
        return [str(v) for v in value]


class Ack(Sourced):
    """A short interjection ("Hm.", "Aye.", "Well now,") said at once when the player's turn
    ends and the model has nothing to say yet; the model's reply then goes on after it.
    ``kinds``: the player lines it suits (``any``: every line)."""

    text: str = Field(min_length=1)
    kinds: list[AckKind] = Field(default_factory=lambda: list[AckKind](["any"]), min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value

    @field_validator("kinds", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Example(Sourced):
    """One example exchange shown to the model before the real conversation."""

    player: str = Field(min_length=1)
    reply: str = Field(min_length=1)


class ReplyStyle(Sourced):
    """How long model replies may be (the 135M model rambles if allowed to)."""

    max_sentences: int = Field(2, ge=1, le=8)
    max_tokens: int = Field(80, ge=8, le=512)


class Character(Sourced):
    """One character; ``id`` is the file name without ``.yaml``."""

    INJECTED = frozenset({"id"})

    id: str
    name: str = Field(min_length=1)
    voice: VoiceSpec
    persona: str = Field(min_length=1)
    style: str = ""
    knows: list[str] = Field(default_factory=list)
    facts: list[Fact] = Field(default_factory=list)
    secrets: list[Secret] = Field(default_factory=list)
    relationships: dict[str, str] = Field(default_factory=dict)
    emotions: list[str] = Field(default_factory=lambda: list(DEFAULT_EMOTIONS))
    gestures: list[str] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    greetings: list[Line] = Field(default_factory=list)
    fallbacks: list[Line] = Field(default_factory=list)
    deflections: list[Line] = Field(default_factory=list)
    acks: list[Ack] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)
    reply: ReplyStyle = Field(default_factory=ReplyStyle)

    def lines(self) -> list[Line]:
        """Greetings, fallbacks and deflections: the character's own scripted lines (pre-render these)."""
        return [*self.greetings, *self.fallbacks, *self.deflections]


# --------------------------------------------------------------------------- loading


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in YAML_SUFFIXES)


def read_character(path: Path) -> tuple[Character | None, list[SourceError]]:
    """Load one character file; returns the character (None on errors) and every problem found."""
    file = str(path)
    try:
        raw = load_yaml_file(path)
    except ValidationFailed as e:
        return None, e.errors
    if not isinstance(raw, YMap):
        line = getattr(raw, "line", 1)
        return None, [
            SourceError(file, line, "a character file must be a mapping of fields (name: ..., voice: ...)")
        ]
    stem = path.stem
    problems: list[SourceError] = []
    if not CHARACTER_ID.match(stem):
        problems.append(
            SourceError(
                file, 0, f"the file name gives the character id '{stem}': use lower case, digits and '_'"
            )
        )
    if "id" in raw:
        problems.append(
            SourceError(file, raw.key_lines["id"], "remove 'id': a character's id is its file name", "error")
        )
        return None, problems
    try:
        character = Character.model_validate(raw.with_key("id", stem))
    except ValidationError as e:
        return None, problems + validation_errors(e, raw, Character)
    problems += _check_character(character)
    if any(p.is_error for p in problems):
        return None, problems
    return character, problems


def _check_character(ch: Character) -> list[SourceError]:
    """Rules within one file: voice, cue sets, line ids and cues."""
    out: list[SourceError] = []
    if ch.voice.id not in KNOWN_VOICES:
        out.append(
            ch.problem(
                f"unknown voice '{ch.voice.id}'{suggest(ch.voice.id, KNOWN_VOICES)}; "
                f"shipped voices: {', '.join(KNOWN_VOICES)}",
                "voice",
                warning=True,
            )
        )
    if "neutral" not in ch.emotions:
        out.append(
            ch.problem("emotions should include 'neutral' (the resting face)", "emotions", warning=True)
        )
    for field in ("emotions", "gestures", "actions"):
        values: list[str] = getattr(ch, field)
        for n, value in enumerate(values):
            if value in values[:n]:
                out.append(ch.problem(f"'{value}' is listed twice in {field}", field, n, warning=True))
    seen: dict[str, int] = {}
    for field in ("greetings", "fallbacks", "deflections"):
        lines: list[Line] = getattr(ch, field)
        for n, line in enumerate(lines):
            where = ch.src_line(field, n)
            if line.id in seen:
                out.append(
                    ch.problem(
                        f"duplicate line id '{line.id}' (first used on line {seen[line.id]})", field, n
                    )
                )
            else:
                seen[line.id] = where
            out += line_cue_problems(line, ch)
    if not ch.greetings:
        out.append(
            ch.problem("no greetings: the character will not speak first when a session opens", warning=True)
        )
    if not ch.fallbacks:
        out.append(
            ch.problem("no fallbacks: with none, a slow or failed model turn ends in silence", warning=True)
        )
    for who in ch.relationships:
        if who == ch.id:
            out.append(
                ch.problem(
                    "a relationship with oneself is ignored", "relationships", who, key=True, warning=True
                )
            )
    if ch.secrets and not ch.deflections:
        # Without them a fallback line ("Say that again?") answers a question about a secret.
        out.append(
            ch.problem(
                "no deflections: when the guard stops a reply (a secret too soon, AI talk) a fallback line is said",
                warning=True,
            )
        )
    return out + _fact_problems(ch) + _secret_key_problems(ch) + _example_problems(ch) + _ack_problems(ch)


_PHRASE_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _mentions(text: str, phrase: str) -> bool:
    """``phrase`` (``a + b``: both parts) appears in ``text`` as whole words, ignoring case.
    A plain version of the checks' matcher (npc_engine.quality.checks), enough to warn a writer."""
    words = " " + " ".join(_PHRASE_WORD.findall(text.lower().replace("’", "'"))) + " "
    parts = [" ".join(_PHRASE_WORD.findall(p.lower())) for p in phrase.split("+")]
    return all(p and f" {p} " in words for p in parts)


def _fact_problems(ch: Character) -> list[SourceError]:
    out: list[SourceError] = []
    for n, fact in enumerate(ch.facts):
        if fact.about and not fact.value:
            out.append(ch.problem("'about' without 'value': the fact cannot be checked", "facts", n, "about", warning=True))
        elif fact.value and not fact.about:
            out.append(
                ch.problem("'value' without 'about': say which words the value answers", "facts", n, "value")
            )
        for k, value in enumerate(fact.value):
            first = value.split()[0] if value.split() else ""
            if not value.strip():
                out.append(ch.problem("an empty value", "facts", n, "value", k))
            elif not first.isdigit() and not _mentions(fact.text, value):
                out.append(
                    ch.problem(
                        f"value '{value}' does not appear in the fact's text: is it a typo?",
                        "facts", n, "value", k, warning=True,
                    )
                )
    return out


def _secret_key_problems(ch: Character) -> list[SourceError]:
    """Keys must be there to be checked, and must not fire on what the character says anyway."""
    out: list[SourceError] = []
    said = [
        *((f"line {line.id}", line.text) for line in ch.lines()),
        *((f"ack {i + 1}", ack.text) for i, ack in enumerate(ch.acks)),
        *((f"example {i + 1}", ex.reply) for i, ex in enumerate(ch.examples)),
        *((f"knows {i + 1}", k) for i, k in enumerate(ch.knows)),
        *((f"fact {i + 1}", f.text) for i, f in enumerate(ch.facts)),
    ]
    for n, secret in enumerate(ch.secrets):
        if not secret.keys:
            out.append(
                ch.problem(
                    "a secret without keys: nothing can tell that it leaked (add keys: [phrases that give it away])",
                    "secrets", n, warning=True,
                )
            )
        for k, key in enumerate(secret.keys):
            if any(not _PHRASE_WORD.findall(p.lower()) for p in key.split("+")):
                out.append(ch.problem(f"key '{key}' has an empty part", "secrets", n, "keys", k))
                continue
            for where, text in said:
                if _mentions(text, key):
                    out.append(
                        ch.problem(
                            f"key '{key}' also appears in {where}: the guard would stop that too",
                            "secrets", n, "keys", k, warning=True,
                        )
                    )
                    break
    return out


def _example_problems(ch: Character) -> list[SourceError]:
    out: list[SourceError] = []
    for n, ex in enumerate(ch.examples):
        ends = len(re.findall(r"[.!?]+(?:\s|$)", ex.reply.strip()))
        if ends > ch.reply.max_sentences:
            out.append(
                ch.problem(
                    f"this example reply has {ends} sentences, more than reply.max_sentences "
                    f"({ch.reply.max_sentences}): the model copies the examples' length",
                    "examples", n, "reply", warning=True,
                )
            )
    if len(ch.examples) > 6:
        out.append(ch.problem("more than 6 examples: each one costs prompt tokens on every turn", "examples", warning=True))
    return out


_TEMPLATE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def _ack_problems(ch: Character) -> list[SourceError]:
    """Acks are pre-rendered and said before the model answers: short, fixed text, each once."""
    out: list[SourceError] = []
    seen: dict[str, int] = {}
    for n, ack in enumerate(ch.acks):
        text = " ".join(ack.text.split())
        if not text:
            out.append(ch.problem("an ack's text is empty", "acks", n))
            continue
        if _TEMPLATE.search(text):
            out.append(ch.problem(
                "an ack cannot use {templates}: it is rendered once, ahead of time, and said before the model answers",
                "acks", n,
            ))
        words = len(text.split())
        if words > ACK_MAX_WORDS:
            out.append(ch.problem(
                f"this ack has {words} words: keep acks to {ACK_MAX_WORDS} or fewer (a reaction, not an answer; "
                "the model's reply follows it)", "acks", n, warning=True,
            ))
        key = text.lower()
        if key in seen:
            out.append(ch.problem(f"ack '{text}' is listed twice (first on line {seen[key]})", "acks", n, warning=True))
        else:
            seen[key] = ch.src_line("acks", n)
        kinds = ack.kinds
        for k, kind in enumerate(kinds):
            if kind in kinds[:k]:
                out.append(ch.problem(f"kind '{kind}' is listed twice", "acks", n, "kinds", k, warning=True))
    if ch.acks and not any("any" in ack.kinds for ack in ch.acks):
        out.append(ch.problem(
            "no ack of kind 'any': a line that is not a question, greeting, thanks or insult gets no ack",
            "acks", key=True, warning=True,
        ))
    return out


def line_cue_problems(line: Line, speaker: Character) -> list[SourceError]:
    """A line's emotion/gesture must be in its speaker's allowed sets."""
    out: list[SourceError] = []
    if line.emotion is not None and line.emotion not in speaker.emotions:
        out.append(
            line.problem(
                f"emotion '{line.emotion}' is not one of {speaker.id}'s emotions"
                f"{suggest(line.emotion, speaker.emotions)} ({', '.join(speaker.emotions)})",
                "emotion",
            )
        )
    if line.gesture is not None and line.gesture not in speaker.gestures:
        allowed = ", ".join(speaker.gestures) or "none listed"
        out.append(
            line.problem(
                f"gesture '{line.gesture}' is not one of {speaker.id}'s gestures"
                f"{suggest(line.gesture, speaker.gestures)} ({allowed})",
                "gesture",
            )
        )
    return out


def read_characters(source: str | Path) -> tuple[dict[str, Character], list[SourceError]]:
    """Load every ``*.yaml`` in a folder (or one file) and check references between them.

    Returns the characters that loaded cleanly and all problems (errors and warnings).
    """
    path = Path(source)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = _yaml_files(path)
        if not files:
            return {}, [SourceError(str(path), 0, "no character files (*.yaml) in this folder")]
    else:
        return {}, [SourceError(str(path), 0, "no such file or folder")]
    characters: dict[str, Character] = {}
    problems: list[SourceError] = []
    for f in files:
        ch, found = read_character(f)
        problems += found
        if ch is not None:
            characters[ch.id] = ch
    problems += cross_check_characters(characters)
    return characters, problems


def cross_check_characters(characters: dict[str, Character]) -> list[SourceError]:
    """Relationships name real characters; line ids are unique across characters."""
    out: list[SourceError] = []
    first: dict[str, tuple[str, int]] = {}
    for ch in characters.values():
        for who in ch.relationships:
            if who not in characters and who != ch.id:
                out.append(
                    ch.problem(
                        f"relationship with unknown character '{who}'{suggest(who, characters)}",
                        "relationships",
                        who,
                        key=True,
                    )
                )
        for field in ("greetings", "fallbacks", "deflections"):
            for n, line in enumerate(getattr(ch, field)):
                if line.id in first and first[line.id][0] != ch.src_file:
                    f, ln = first[line.id]
                    out.append(
                        ch.problem(f"duplicate line id '{line.id}' (already used at {f}:{ln})", field, n)
                    )
                first.setdefault(line.id, (ch.src_file, ch.src_line(field, n)))
    return out


def load_characters(directory: str | Path) -> dict[str, Character]:
    """Load every character in ``directory``; raises ValidationFailed listing all errors.

    Warnings (an unknown voice, a missing fallback) are logged, not raised.
    """
    characters, problems = read_characters(directory)
    errors = [p for p in problems if p.is_error]
    if errors:
        raise ValidationFailed(problems)
    for p in problems:
        log.warning("%s", p)
    log.info("loaded %d characters from %s: %s", len(characters), directory, ", ".join(characters))
    return characters
