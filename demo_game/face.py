"""Faces: which mouth shape a viseme makes, emotions and gestures over time, and drawing a face.

The engine sends the 15 Oculus/OVR visemes with times relative to each audio chunk.
A game rarely has 15 mouth sprites; five read well at any size, so this module folds
them into ``CLOSED, NARROW, OPEN, ROUND, TEETH`` plus how far the jaw drops. A Unity or
Godot game does the same with blend shapes: look the viseme up at the chunk's playback
time (:func:`viseme_at`), map it (:data:`VISEME_SHAPES`), ease towards it.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pygame

Color = tuple[int, int, int]


class Mouth(str, Enum):
    CLOSED = "closed"
    NARROW = "narrow"
    OPEN = "open"
    ROUND = "round"
    TEETH = "teeth"


# viseme -> (shape, jaw opening 0..1)
VISEME_SHAPES: dict[str, tuple[Mouth, float]] = {
    "sil": (Mouth.CLOSED, 0.0),
    "PP": (Mouth.CLOSED, 0.0),  # p b m: lips pressed
    "FF": (Mouth.TEETH, 0.25),  # f v: upper teeth on the lower lip
    "TH": (Mouth.TEETH, 0.35),
    "DD": (Mouth.NARROW, 0.35),
    "kk": (Mouth.NARROW, 0.45),
    "CH": (Mouth.TEETH, 0.4),  # ch j sh: teeth together, lips pushed out
    "SS": (Mouth.TEETH, 0.2),
    "nn": (Mouth.NARROW, 0.3),
    "RR": (Mouth.ROUND, 0.35),
    "aa": (Mouth.OPEN, 1.0),
    "E": (Mouth.OPEN, 0.65),
    "ih": (Mouth.NARROW, 0.5),
    "oh": (Mouth.ROUND, 0.8),
    "ou": (Mouth.ROUND, 0.5),
}
VISEMES: tuple[str, ...] = tuple(VISEME_SHAPES)


@dataclass(frozen=True)
class VisemeTrack:
    """One chunk's visemes, sorted by start time, for fast lookup while it plays."""

    starts: tuple[float, ...]
    ends: tuple[float, ...]
    labels: tuple[str, ...]

    @classmethod
    def from_cue(cls, visemes: Sequence[dict[str, Any]]) -> VisemeTrack:
        items = sorted(
            (float(v["start"]), float(v["end"]), str(v["viseme"])) for v in visemes if "viseme" in v
        )
        return cls(tuple(s for s, _, _ in items), tuple(e for _, e, _ in items), tuple(lab for _, _, lab in items))

    def __bool__(self) -> bool:
        return bool(self.labels)


def viseme_at(track: VisemeTrack, t: float) -> str:
    """The viseme sounding ``t`` seconds into the chunk (``sil`` in gaps and after the end)."""
    i = bisect_right(track.starts, t) - 1
    if i < 0 or t >= track.ends[i]:
        return "sil"
    return track.labels[i]


def shape_for(viseme: str) -> tuple[Mouth, float]:
    return VISEME_SHAPES.get(viseme, (Mouth.NARROW, 0.4))


def shape_for_level(level: float) -> tuple[Mouth, float]:
    """Mouth from loudness (0..1), for audio that came without visemes (the espeak voice)."""
    if level < 0.08:
        return Mouth.CLOSED, 0.0
    if level < 0.3:
        return Mouth.NARROW, 0.3 + level
    return Mouth.OPEN, min(1.0, 0.4 + level)


# --------------------------------------------------------------------------- state over time

EMOTION_TINT: dict[str, Color] = {
    "happy": (255, 214, 120),
    "sad": (120, 150, 220),
    "angry": (230, 80, 60),
    "surprised": (255, 250, 170),
    "afraid": (180, 160, 230),
}
EMOTION_HOLD = 6.0  # seconds an emotion shows before the face relaxes back to neutral
GESTURE_TIME = 1.6


@dataclass
class FaceState:
    """What one character's face is doing now: mouth, emotion, the last gesture/action."""

    mouth: Mouth = Mouth.CLOSED
    jaw: float = 0.0  # eased towards target_jaw every frame
    target_jaw: float = 0.0
    emotion: str = "neutral"
    emotion_at: float = -1e9
    gesture: str | None = None
    gesture_at: float = -1e9
    action: str | None = None
    action_at: float = -1e9
    blink_seed: int = 0
    history: list[Mouth] = field(default_factory=list)  # recent distinct shapes (for tests/debug)

    def set_mouth(self, shape: Mouth, jaw: float) -> None:
        if shape != self.mouth:
            self.history.append(shape)
            del self.history[:-64]
        self.mouth = shape
        self.target_jaw = jaw

    def ease(self, dt: float) -> None:
        # ~35 ms time constant: fast enough for 60-100 ms visemes, no popping.
        k = 1.0 - math.exp(-dt / 0.035)
        self.jaw += (self.target_jaw - self.jaw) * k

    def set_emotion(self, name: str, now: float) -> None:
        self.emotion, self.emotion_at = name, now

    def current_emotion(self, now: float) -> str:
        return self.emotion if now - self.emotion_at < EMOTION_HOLD else "neutral"

    def set_gesture(self, name: str, now: float) -> None:
        self.gesture, self.gesture_at = name, now

    def current_gesture(self, now: float) -> tuple[str | None, float]:
        """The gesture and its progress 0..1, or (None, 0) once it is over."""
        p = (now - self.gesture_at) / GESTURE_TIME
        return (self.gesture, p) if self.gesture and 0 <= p < 1 else (None, 0.0)

    def set_action(self, name: str, now: float) -> None:
        self.action, self.action_at = name, now

    def current_action(self, now: float) -> tuple[str | None, float]:
        p = (now - self.action_at) / (GESTURE_TIME * 1.5)
        return (self.action, p) if self.action and 0 <= p < 1 else (None, 0.0)

    def blinking(self, now: float) -> bool:
        period = 3.7 + (self.blink_seed % 7) * 0.35
        return (now + self.blink_seed * 0.37) % period < 0.12


# --------------------------------------------------------------------------- looks


@dataclass(frozen=True)
class Look:
    skin: Color
    hair: Color
    outfit: Color
    trim: Color
    hat: str = ""  # "", "helmet", "bun"
    beard: bool = False


LOOKS: dict[str, Look] = {
    "bram": Look(skin=(214, 160, 120), hair=(70, 50, 40), outfit=(96, 64, 40), trim=(60, 60, 66), beard=True),
    "marta": Look(skin=(238, 196, 160), hair=(168, 74, 40), outfit=(70, 120, 80), trim=(240, 232, 214), hat="bun"),
    "aldric": Look(skin=(226, 182, 146), hair=(40, 36, 34), outfit=(70, 86, 130), trim=(170, 176, 188), hat="helmet"),
    "player": Look(skin=(232, 190, 150), hair=(220, 180, 90), outfit=(60, 100, 170), trim=(200, 170, 90)),
}


def look_for(character: str) -> Look:
    """The character's look, or a stable made-up one for a character this demo does not know."""
    if character in LOOKS:
        return LOOKS[character]
    h = zlib.crc32(character.encode())
    outfit = (60 + h % 140, 60 + (h >> 8) % 140, 60 + (h >> 16) % 140)
    return Look(skin=(225, 180, 140), hair=(60 + (h >> 4) % 120, 45, 35), outfit=outfit, trim=(220, 210, 190))


# --------------------------------------------------------------------------- drawing


def _darker(c: Color, f: float = 0.7) -> Color:
    return (int(c[0] * f), int(c[1] * f), int(c[2] * f))


def draw_mouth(surf: pygame.Surface, cx: float, cy: float, r: float, shape: Mouth, jaw: float, emotion: str) -> None:
    """The mouth centred at (cx, cy) for a head of radius ``r``."""
    lip = (150, 60, 60)
    dark = (70, 20, 25)
    w = r * 0.52
    h = max(1.0, r * 0.42 * (0.25 + jaw))
    thick = max(1, int(r / 14))
    if shape == Mouth.CLOSED:
        curve = {"happy": 0.18, "sad": -0.15, "angry": -0.08, "afraid": -0.1}.get(emotion, 0.03)
        pts = [(cx - w * 0.6, cy - curve * r * 0.3), (cx, cy + curve * r * 0.5), (cx + w * 0.6, cy - curve * r * 0.3)]
        pygame.draw.lines(surf, lip, False, pts, max(2, thick + 1))
        return
    if shape == Mouth.ROUND:
        rw, rh = w * 0.42, max(2.0, h * 0.9)
        box = pygame.Rect(0, 0, rw * 2, rh * 2)
        box.center = (int(cx), int(cy))
        pygame.draw.ellipse(surf, dark, box)
        pygame.draw.ellipse(surf, lip, box, max(1, thick + 1))
        return
    if shape == Mouth.NARROW:
        box = pygame.Rect(0, 0, w * 1.3, max(2.0, h * 0.8))
    elif shape == Mouth.TEETH:
        box = pygame.Rect(0, 0, w * 1.4, max(3.0, h * 0.9 + r * 0.08))
    else:  # OPEN
        box = pygame.Rect(0, 0, w * 1.15, max(3.0, h * 1.5))
    box.center = (int(cx), int(cy + box.height * 0.1))
    radius = max(1, box.height // 2)
    pygame.draw.rect(surf, dark, box, border_radius=radius)
    if shape == Mouth.TEETH or (shape == Mouth.OPEN and r > 20):
        teeth = pygame.Rect(box.x + 2, box.y + 1, box.width - 4, max(1, int(box.height * (0.5 if shape == Mouth.TEETH else 0.25))))
        pygame.draw.rect(surf, (245, 242, 230), teeth, border_radius=max(1, teeth.height // 2))
    if shape == Mouth.OPEN and r > 20:
        tongue = pygame.Rect(0, 0, box.width * 0.5, box.height * 0.35)
        tongue.midbottom = (box.centerx, box.bottom - 1)
        pygame.draw.ellipse(surf, (200, 90, 100), tongue)
    pygame.draw.rect(surf, lip, box, max(1, thick), border_radius=radius)


def draw_eyes_and_brows(surf: pygame.Surface, cx: float, cy: float, r: float, emotion: str, blink: bool) -> None:
    ex = r * 0.36
    ey = cy - r * 0.12
    eye_r = max(1.5, r * 0.13)
    if emotion == "surprised":
        eye_r *= 1.35
    for side in (-1, 1):
        x = cx + side * ex
        if blink:
            pygame.draw.line(surf, (40, 30, 30), (x - eye_r, ey), (x + eye_r, ey), max(1, int(r / 12)))
        else:
            if r > 14:
                pygame.draw.circle(surf, (250, 250, 245), (x, ey), eye_r * 1.25)
            pygame.draw.circle(surf, (40, 30, 30), (x, ey), eye_r)
            if r > 14:
                pygame.draw.circle(surf, (255, 255, 255), (x + eye_r * 0.35, ey - eye_r * 0.35), max(1.0, eye_r * 0.3))
        # Brows carry most of the emotion at small sizes.
        by = ey - r * 0.26
        inner, outer = {
            "angry": (0.12, -0.1),
            "sad": (-0.14, 0.06),
            "afraid": (-0.16, 0.02),
            "surprised": (-0.14, -0.12),
            "happy": (-0.04, -0.06),
        }.get(emotion, (0.0, 0.0))
        x_in, x_out = x - side * eye_r * 1.1, x + side * eye_r * 1.3
        pygame.draw.line(
            surf, (60, 40, 30), (x_in, by + inner * r), (x_out, by + outer * r), max(2, int(r / 8))
        )


def draw_head(
    surf: pygame.Surface, cx: float, cy: float, r: float, look: Look, face: FaceState | None, now: float,
    tilt: float = 0.0,
) -> None:
    """A round head with hair, hat, beard and a live face (``face`` None: a resting face)."""
    cx += tilt
    emotion = face.current_emotion(now) if face else "neutral"
    if look.hat == "bun":
        pygame.draw.circle(surf, look.hair, (cx, cy - r * 0.95), r * 0.42)
        pygame.draw.circle(surf, look.hair, (cx, cy - r * 0.14), r * 1.04)
    pygame.draw.circle(surf, look.skin, (cx, cy), r)
    tint = EMOTION_TINT.get(emotion)
    if tint and emotion in ("angry", "happy") and r > 14:
        glow = pygame.Surface((int(r * 2), int(r * 2)), pygame.SRCALPHA)
        pygame.draw.circle(glow, (*tint, 55), (r, r), r)
        surf.blit(glow, (cx - r, cy - r))
    if emotion in ("happy", "afraid") or (emotion == "angry" and r > 14):
        blush = (235, 130, 120) if emotion != "afraid" else (200, 200, 230)
        for side in (-1, 1):
            pygame.draw.circle(surf, blush, (cx + side * r * 0.55, cy + r * 0.2), max(1.0, r * 0.14))
    # hair / hats
    if look.hat == "helmet":
        pygame.draw.arc(surf, look.trim, pygame.Rect(cx - r * 1.05, cy - r * 1.1, r * 2.1, r * 1.9), 0.1, math.pi - 0.1, max(2, int(r * 0.45)))
        pygame.draw.line(surf, _darker(look.trim), (cx - r, cy - r * 0.28), (cx + r, cy - r * 0.28), max(1, int(r / 7)))
        pygame.draw.line(surf, _darker(look.trim), (cx, cy - r * 0.3), (cx, cy + r * 0.05), max(1, int(r / 8)))
    elif look.hat == "bun":
        pygame.draw.arc(surf, look.hair, pygame.Rect(cx - r * 1.02, cy - r * 1.04, r * 2.04, r * 1.5), 0.05, math.pi - 0.05, max(2, int(r * 0.38)))
        pygame.draw.arc(surf, _darker(look.hair, 0.8), pygame.Rect(cx - r * 0.5, cy - r * 0.98, r * 1.0, r * 0.8), 0.3, math.pi - 0.3, max(1, int(r / 10)))
    else:
        pygame.draw.arc(surf, look.hair, pygame.Rect(cx - r, cy - r * 1.02, r * 2, r * 1.6), 0.15, math.pi - 0.15, max(2, int(r * 0.35)))
    if look.beard:
        beard = pygame.Rect(0, 0, r * 1.5, r * 0.95)
        beard.midtop = (int(cx), int(cy + r * 0.18))
        pygame.draw.ellipse(surf, look.hair, beard)
        # Clear a spot for the mouth so it stays readable inside the beard.
        pygame.draw.ellipse(surf, look.skin, pygame.Rect(cx - r * 0.36, cy + r * 0.28, r * 0.72, r * 0.42))
    blink = face.blinking(now) if face else False
    draw_eyes_and_brows(surf, cx, cy, r, emotion, blink)
    mouth, jaw = (face.mouth, face.jaw) if face else (Mouth.CLOSED, 0.0)
    draw_mouth(surf, cx, cy + r * 0.45, r, mouth, jaw, emotion)
    pygame.draw.circle(surf, _darker(look.skin, 0.6), (cx, cy), r, max(1, int(r / 12)))
