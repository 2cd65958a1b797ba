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
