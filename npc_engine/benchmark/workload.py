"""The player turns a benchmark replays: fixture WAVs (voice) and typed lines (text).

Lines are chosen to be ordinary LLM turns for Bram, Marta and Aldric with a fresh player: none of
them matches an intent that makes the Oakhollow story answer with a scripted line (a turn
that does anyway is reported apart, see ``replay.classify``). Each session gets a fresh
player, so one session's story progress never turns another's line into a story beat.
"""

from __future__ import annotations

import json
import random
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

import npc_engine
from npc_engine.benchmark.felt import speech_end

REPO = Path(npc_engine.__file__).resolve().parent.parent
DEFAULT_CLIPS = REPO / "tests" / "fixtures" / "speech"
CHARACTERS: tuple[str, ...] = ("bram", "marta", "aldric")
CLIP_RATE = 16_000

TEXT_LINES: tuple[str, ...] = (
    "What do you make at your forge?",
    "How is business these days?",
    "What is on the menu tonight?",
    "Tell me about this village.",
    "How long have you lived in Oakhollow?",
    "What do you think of the captain?",
    "Is the winter going to be hard this year?",
    "Who is your best customer?",
    "What should a traveller know about this place?",
    "Do you have any family here?",
    "What is the best thing you ever made?",
    "Any news from the road?",
)


@dataclass(frozen=True)
class Utterance:
    kind: Literal["voice", "text"]
    text: str  # the typed line, or the clip's reference text
    clip: str | None = None
    pcm: np.ndarray | None = field(default=None, repr=False, compare=False)  # int16 mono 16 kHz
    speech_end_s: float | None = None  # where the speech ends in the clip (felt.speech_end)

    @property
    def seconds(self) -> float:
        return 0.0 if self.pcm is None else len(self.pcm) / CLIP_RATE


Mode = Literal["push_to_talk", "open_mic"]
RELEASE_S: tuple[float, float] = (0.2, 0.3)


@dataclass(frozen=True)
class Planned:
    """One turn of the plan: which session (and character) says what."""

    session: int
    character: str
    utterance: Utterance
    index: int = 0  # position in the plan (pairs a streaming turn with its naive twin)
    mode: Mode = "push_to_talk"  # the session's: who ends a voice turn
    # Push-to-talk: the key is released this long after the end of speech (seeded, the same
    # on both sides of an A/B pair), as a player's thumb lags the last word.
    release_s: float = 0.25


def load_clips(directory: Path) -> list[Utterance]:
    """The natural-sounding English player lines listed in ``manifest.json``."""
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no speech clips at {directory} (manifest.json missing); pass --clips DIR with a manifest.json "
            "like tests/fixtures/speech, or --voice-share 0 for typed lines only"
        )
    entries = json.loads(manifest.read_text())["clips"]
    out = []
    for c in entries:
        if c.get("kind") != "line" or c.get("lang", "en") != "en" or not c.get("natural"):
            continue
        with wave.open(str(directory / c["file"])) as w:
            if w.getframerate() != CLIP_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise ValueError(f"{c['file']}: clips must be 16 kHz mono 16-bit WAV")
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()
        out.append(Utterance("voice", c["text"], c["file"], pcm, speech_end(c, pcm, CLIP_RATE)))
    return out


def plan_turns(
    n_turns: int, clips: list[Utterance], voice_share: float, turns_per_session: int, seed: int = 0,
    characters: tuple[str, ...] = CHARACTERS, first_session: int = 0, mode: Mode = "push_to_talk",
) -> list[Planned]:
    """``n_turns`` turns in sessions of ``turns_per_session``, characters in turn, each
    session's turns a deterministic mix of clips and typed lines, each voice turn with its
    push-to-talk release delay drawn from ``RELEASE_S``."""
    rng = random.Random(seed)
    release = random.Random(seed + 1)  # its own stream: the lines chosen do not move with it
    clips = clips[:]
    texts = list(TEXT_LINES)
    rng.shuffle(clips)
    rng.shuffle(texts)
    n_voice = round(n_turns * voice_share) if clips else 0
    # Spread the voice turns evenly among the typed ones (t v v t v v ... for 2/3 voice).
    kinds = ["voice" if ((i + 1) * n_voice) // n_turns > (i * n_voice) // n_turns else "text" for i in range(n_turns)]
    plan, vi, ti = [], 0, 0
    for i, kind in enumerate(kinds):
        session = first_session + i // turns_per_session
        character = characters[session % len(characters)]
        if kind == "voice":
            utt = clips[vi % len(clips)]
            vi += 1
        else:
            utt = Utterance("text", texts[ti % len(texts)])
            ti += 1
        plan.append(Planned(session, character, utt, i, mode, round(release.uniform(*RELEASE_S), 3)))
    return plan


SCENE_CHARACTERS: tuple[str, ...] = ("marta", "bram")  # the tavern's pair (issue #13's demo scene)


def addressed_by_name(text: str, character: str) -> str:
    """``text`` said to ``character`` by name, as a player turns to one of a group: "Marta, what
    is on the menu tonight?" (the scene's routing matches a character's id or name, any case)."""
    head = text[:1].lower() if text[1:2].islower() else text[:1]  # "What" -> "what", but "I" stays
    return f"{character.capitalize()}, {head}{text[1:]}"


def plan_scene_turns(
    n_turns: int, clips: list[Utterance], voice_share: float, turns_per_session: int, seed: int = 0,
    characters: tuple[str, ...] = SCENE_CHARACTERS, first_session: int = 0,
) -> list[Planned]:
    """Push-to-talk and typed turns for scene conversations: ``plan_turns``' mix of clips and
    typed lines, each addressed to one of ``characters`` in turn (``Planned.character``: who
    should answer). The clips' words name nobody present, so a voice turn is addressed by the
    game's ``facing`` (``scene.update``), sent before the key is pressed; a typed turn names its
    character. The same plan, played on one-to-one sessions (each line to its character's own
    session), is the control."""
    if not characters:
        raise ValueError("a scene plan needs characters")
    base = plan_turns(n_turns, clips, voice_share, turns_per_session, seed, first_session=first_session)
    plan = []
    for p in base:
        who = characters[(p.index - (p.session - first_session) * turns_per_session) % len(characters)]
        utt = p.utterance if p.utterance.kind == "voice" else Utterance("text", addressed_by_name(p.utterance.text, who))
        plan.append(Planned(p.session, who, utt, p.index, p.mode, p.release_s))
    return plan
