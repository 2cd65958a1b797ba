"""On-screen panels: the conversation (portrait, subtitles, typing), the quest log, the
inventory, toasts, help, and the loading / error screens shown before the game starts.
"""

from __future__ import annotations

import math
from typing import Any

import pygame

from demo_game import sprites as S
from demo_game.engine_proc import REPO, EngineProcess
from demo_game.face import EMOTION_TINT, draw_head
from demo_game.game import Conversation, Game, pretty

INK = (48, 36, 24)
PARCHMENT = (244, 232, 204)
PANEL = (28, 24, 22)
GOLD = (222, 186, 96)
TEXT = (246, 240, 226)
DIM = (170, 162, 150)
PLAYER_BLUE = (150, 200, 255)
KIND_COLORS = {"info": (60, 56, 52), "good": (48, 96, 56), "warn": (132, 96, 30), "error": (140, 44, 40)}
CONV_H = 182


def wrap(text: str, font: pygame.font.Font, width: int) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}".strip()
            if font.size(trial)[0] <= width or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def fit(text: str, font: pygame.font.Font, width: int) -> str:
    """``text`` cut to ``width`` pixels with an ellipsis."""
    if font.size(text)[0] <= width:
        return text
    while text and font.size(text + "…")[0] > width:
        text = text[:-1]
    return text + "…"


def panel(surf: pygame.Surface, rect: pygame.Rect, color: tuple[int, int, int] = PANEL, alpha: int = 220, border: tuple[int, int, int] = GOLD) -> None:
    box = pygame.Surface(rect.size, pygame.SRCALPHA)
    pygame.draw.rect(box, (*color, alpha), box.get_rect(), border_radius=10)
    surf.blit(box, rect.topleft)
    pygame.draw.rect(surf, border, rect, 2, border_radius=10)


class Hud:
    def __init__(self, size: tuple[int, int]) -> None:
        self.w, self.h = size
        self.title = pygame.font.SysFont("dejavuserif", 44, bold=True)
        self.serif = pygame.font.SysFont("dejavuserif", 18, bold=True)
        self.serif_small = pygame.font.SysFont("dejavuserif", 14, bold=True)
        self.body = pygame.font.SysFont("dejavusans", 15)
        self.sub = pygame.font.SysFont("dejavusans", 19)
        self.small = pygame.font.SysFont("dejavusans", 12)
        self.small_bold = pygame.font.SysFont("dejavusans", 12, bold=True)
        self.mono = pygame.font.SysFont("dejavusansmono", 12)

    # ------------------------------------------------------------------ in game

    def draw(self, surf: pygame.Surface, game: Game, now: float, fps: float = 0.0) -> None:
        self._location(surf, game, now)
        if game.show_quest:
            self._quest(surf, game)
        conv = game.conv
        if conv is not None:
            self._conversation(surf, game, conv, now)
        else:
            self._controls(surf, game)
        self._inventory(surf, game, raised=conv is not None)
        self._toasts(surf, game)
        if game.show_help:
            self._help(surf, game)
        if game.show_debug:
            self._debug(surf, game, fps)

    def _location(self, surf: pygame.Surface, game: Game, now: float) -> None:
        area = game.area.name if game.area else "Oakhollow"
        t1 = self.small_bold.render("OAKHOLLOW", True, GOLD)
        t2 = self.serif.render(area, True, TEXT)
        box = pygame.Rect(12, 12, max(t1.get_width(), t2.get_width()) + 24, 50)
        panel(surf, box, alpha=190)
        surf.blit(t1, (box.x + 12, box.y + 6))
        surf.blit(t2, (box.x + 12, box.y + 22))
        # A bigger title fades in and out for a moment when you enter somewhere new.
        age = now - game.area_at
        if game.area is not None and 0 <= age < 2.5:
            a = int(255 * min(1.0, age * 3, (2.5 - age) * 2))
            big = self.title.render(game.area.name, True, TEXT)
            big.set_alpha(a)
            shadow = self.title.render(game.area.name, True, (0, 0, 0))
            shadow.set_alpha(a // 2)
            r = big.get_rect(center=(self.w // 2, self.h // 3))
            surf.blit(shadow, r.move(2, 3))
            surf.blit(big, r)

    def _quest(self, surf: pygame.Surface, game: Game) -> None:
        q = game.quest
        width = 300
        x = self.w - width - 12
        lines: list[tuple[str, pygame.font.Font, tuple[int, int, int]]] = []
        title = q.title or "Quest log"
        hint = game.hint()
        if hint:
            for ln in wrap("→ " + hint, self.body, width - 24):
                lines.append((ln, self.body, (255, 236, 170)))
        for entry in q.journal[-5:]:
            for ln in wrap("• " + entry, self.small, width - 24):
                lines.append((ln, self.small, DIM if entry is not q.journal[-1] else TEXT))
        flags = [pretty(k) for k, v in sorted(q.flags.items()) if v is True]
        if not lines:
            lines.append(("Talk to the villagers (E).", self.small, DIM))
        h = 40 + sum(f.get_height() + 2 for _, f, _ in lines) + (22 if flags else 0)
        box = pygame.Rect(x, 12, width, h)
        panel(surf, box, alpha=200)
        surf.blit(self.serif_small.render(title, True, GOLD), (x + 12, 20))
        surf.blit(self.small.render("J", True, DIM), (box.right - 18, 20))
        y = 42
        for text, font, col in lines:
            surf.blit(font.render(text, True, col), (x + 12, y))
            y += font.get_height() + 2
        if flags:
            fx = x + 12
            for name in flags[-4:]:
                chip = self.small.render(name, True, (30, 40, 30))
                r = pygame.Rect(fx, y + 4, chip.get_width() + 18, 16)
                if r.right > box.right - 8:
                    break
                pygame.draw.rect(surf, (170, 210, 150), r, border_radius=8)
                pygame.draw.lines(surf, (40, 90, 40), False, [(r.x + 4, r.y + 8), (r.x + 7, r.y + 11), (r.x + 12, r.y + 4)], 2)
                surf.blit(chip, (r.x + 15, r.y + 1))
                fx = r.right + 4

    def _controls(self, surf: pygame.Surface, game: Game) -> None:
        keys = [("WASD", "walk"), ("E", "talk / pick up"), ("T", "type"), ("V", "hold to speak"), ("F5", "save"), ("F9", "load"), ("F1", "help")]
        x, y = 12, self.h - 34
        strip = pygame.Rect(8, self.h - 40, 600, 32)
        panel(surf, strip, alpha=170, border=(90, 80, 60))
        for key, label in keys:
            k = self.small_bold.render(key, True, INK)
            kb = pygame.Rect(x + 4, y + 2, k.get_width() + 10, 18)
            pygame.draw.rect(surf, (236, 220, 170), kb, border_radius=4)
            surf.blit(k, k.get_rect(center=kb.center))
            t = self.small.render(label, True, TEXT)
            surf.blit(t, (kb.right + 5, y + 3))
            x = kb.right + 5 + t.get_width() + 8
        showing = {t.text for t in game.toasts}
        notes = [n for n in game.notices.values() if n not in showing]
        if notes:
            t = self.small.render(notes[-1], True, (255, 210, 150))
            r = t.get_rect(bottomleft=(14, self.h - 46))
            panel(surf, r.inflate(12, 8), alpha=170, border=(132, 96, 30))
            surf.blit(t, r)

    def _inventory(self, surf: pygame.Surface, game: Game, raised: bool) -> None:
        slots = 4
        size = 40
        x0 = self.w - 12 - slots * (size + 6) + 6
        y0 = self.h - 12 - size - (CONV_H + 6 if raised else 0)
        for i in range(slots):
            r = pygame.Rect(x0 + i * (size + 6), y0, size, size)
            panel(surf, r, alpha=190, border=(120, 100, 70))
            if i < len(game.inventory):
                S.draw_item(surf, game.inventory[i], r.center, 26)
        if game.gold:
            t = self.small_bold.render(f"{game.gold} gold", True, GOLD)
            surf.blit(t, (x0, y0 - 18))

    def _toasts(self, surf: pygame.Surface, game: Game) -> None:
        y = 76
        for toast in game.toasts[-4:]:
            t = self.body.render(toast.text, True, TEXT)
            r = t.get_rect(midtop=(self.w // 2, y))
            box = r.inflate(22, 10)
            panel(surf, box, color=KIND_COLORS.get(toast.kind, KIND_COLORS["info"]), alpha=225, border=(230, 210, 160))
            surf.blit(t, r)
            y = box.bottom + 6

    # ------------------------------------------------------------------ conversation

    def _conversation(self, surf: pygame.Surface, game: Game, conv: Conversation, now: float) -> None:
        who = game.panel_character(conv)  # in a scene, the portrait follows whoever speaks
        npc = game.npcs.get(who)
        box = pygame.Rect(12, self.h - CONV_H - 12, self.w - 24, CONV_H)
        panel(surf, box, alpha=232)
        # portrait
        frame = pygame.Rect(box.x + 14, box.y + 14, 150, box.height - 28)
        emotion = npc.face.current_emotion(now) if npc else "neutral"
        bg = S.mix((70, 62, 56), EMOTION_TINT.get(emotion, (70, 62, 56)), 0.35)
        pygame.draw.rect(surf, bg, frame, border_radius=8)
        if npc is not None:
            clip = surf.get_clip()
            surf.set_clip(frame)
            shoulders = pygame.Rect(0, 0, 118, 60)
            shoulders.midtop = (frame.centerx, frame.bottom - 34)
            pygame.draw.ellipse(surf, npc.look.outfit, shoulders)
            gesture, gp = npc.face.current_gesture(now)
            nod = math.sin(gp * math.pi * 4) * 6 if gesture == "nod" else 0.0
            shake = math.sin(gp * math.pi * 6) * 7 if gesture == "shake_head" else 0.0
            draw_head(surf, frame.centerx + shake, frame.centery - 4 + nod, 50, npc.look, npc.face, now)
            surf.set_clip(clip)
        pygame.draw.rect(surf, GOLD, frame, 2, border_radius=8)
        # name, mood
        x = frame.right + 18
        name = npc.name if npc else pretty(who)
        surf.blit(self.serif.render(name, True, GOLD), (x, box.y + 12))
        mood = []
        others = [game.npcs[m].name if m in game.npcs else m for m in conv.members if m != who]
        if others:
            mood.append("with " + " and ".join(others))
        if emotion != "neutral":
            mood.append(emotion)
        if npc is not None:
            g, _ = npc.face.current_gesture(now)
            if g:
                mood.append(S.GESTURE_WORDS.get(g, g.replace("_", " ")))
            a, _ = npc.face.current_action(now)
            if a:
                mood.append(S.GESTURE_WORDS.get(a, a.replace("_", " ")))
        if mood:
            surf.blit(self.small.render("  ·  ".join(mood), True, DIM), (x + self.serif.size(name)[0] + 12, box.y + 17))
        log_w = 240
        text_w = box.right - x - 16 - log_w - 20
        self._history(surf, game, conv, pygame.Rect(box.right - log_w - 14, box.y + 12, log_w, box.height - 24))
        y = box.y + 40
        # what the player said last
        last_player = next((ln for ln in reversed(conv.log) if ln.speaker == "player"), None)
        if conv.listening or conv.partial:
            dot = (230, 60, 50) if int(now * 2) % 2 == 0 else (140, 40, 36)
            pygame.draw.circle(surf, dot, (x + 6, y + 9), 6)
            heard = conv.partial or ("listening ... release V to send" if conv.listening else "")
            surf.blit(self.body.render(heard, True, PLAYER_BLUE), (x + 18, y))
            y += 24
        elif last_player is not None:
            label = "You: " + last_player.text
            for ln in wrap(label, self.body, text_w)[:2]:
                surf.blit(self.body.render(ln, True, PLAYER_BLUE), (x, y))
                y += 19
            y += 4
        # the line being spoken, brightening word by word as it plays
        sub = game.subtitle()
        if sub is not None and sub[0] in conv.members:
            self._subtitle(surf, sub[1], sub[2], x, y, text_w, game)
        elif conv.thinking or not conv.ready:
            dots = "." * (1 + int(now * 3) % 3)
            surf.blit(self.sub.render(dots, True, DIM), (x, y))
        else:
            # Whose portrait shows says whose line this is (a scene's others have their own).
            last_npc = next((ln for ln in reversed(conv.log) if ln.speaker == who), None)
            if last_npc is not None:
                for ln in wrap(last_npc.text, self.sub, text_w)[:3]:
                    surf.blit(self.sub.render(ln, True, (214, 206, 192)), (x, y))
                    y += 23
        # typing box / hints
        bottom = box.bottom - 30
        if conv.typing:
            ib = pygame.Rect(x - 4, bottom - 6, text_w + 8, 28)
            pygame.draw.rect(surf, (250, 246, 236), ib, border_radius=6)
            caret = "|" if int(now * 2) % 2 == 0 else " "
            shown = conv.draft
            while self.body.size(shown + caret)[0] > ib.width - 16 and shown:
                shown = shown[1:]
            surf.blit(self.body.render(shown + caret, True, INK), (ib.x + 8, ib.y + 5))
            if not conv.draft:
                surf.blit(self.body.render("Say something ... (Enter sends, Esc cancels)", True, (150, 140, 130)), (ib.x + 16, ib.y + 5))
        else:
            hints = "Enter / T  type      V  hold to speak      G  give      Esc  leave"
            if not game.stt:
                hints = "Enter / T  type      G  give      Esc  leave      (no speech recognition: typing only)"
            elif game.mic_problem and game.opts.say_wav:
                hints = "Enter / T  type      V  send the --say WAV      G  give      Esc  leave"
            elif game.mic_problem:
                hints = "Enter / T  type      G  give      Esc  leave      (no microphone: typing only)"
            surf.blit(self.small.render(hints, True, DIM), (x, bottom + 4))

    def _history(self, surf: pygame.Surface, game: Game, conv: Conversation, area: pygame.Rect) -> None:
        """The conversation so far, newest at the bottom (the NPC remembers it too)."""
        pygame.draw.line(surf, (90, 80, 64), (area.x - 10, area.y + 4), (area.x - 10, area.bottom - 4), 1)
        surf.blit(self.small_bold.render("CONVERSATION", True, (150, 130, 90)), (area.x, area.y))
        rows: list[tuple[str, tuple[int, int, int]]] = []
        for ln in conv.log[-8:]:
            who = "You" if ln.speaker == "player" else (game.npcs[ln.speaker].name if ln.speaker in game.npcs else ln.speaker)
            note = f" ({ln.note})" if ln.note in ("interrupted", "degraded") else ""
            col = PLAYER_BLUE if ln.speaker == "player" else (214, 206, 192)
            for i, part in enumerate(wrap(f"{who}: {ln.text}{note}", self.small, area.width)):
                rows.append((part if i == 0 else "  " + part, col))
        line_h = self.small.get_height() + 1
        room = (area.height - 20) // line_h
        y = area.y + 20
        for text, col in rows[-room:]:
            surf.blit(self.small.render(text, True, col), (area.x, y))
            y += line_h

    def _subtitle(self, surf: pygame.Surface, text: str, progress: float, x: int, y: int, width: int, game: Game) -> None:
        # Bright up to where the voice is, dim after: the subtitle follows the audio.
        playing = game.audio.current()
        spoken_chars = int(len(text) * progress)
        if playing is not None and playing[0].words:
            t = playing[1]
            done = [w for w in playing[0].words if float(w.get("start", 0)) <= t]
            if done:
                # Count through the text word by word (words cues carry the spoken words in order).
                pos = 0
                for w in done:
                    i = text.lower().find(str(w.get("word", "")).lower(), pos)
                    if i >= 0:
                        pos = i + len(str(w.get("word", "")))
                spoken_chars = max(spoken_chars if not done else 0, pos)
        count = 0
        for ln in wrap(text, self.sub, width)[:3]:
            cut = max(0, min(len(ln), spoken_chars - count))
            a, b = ln[:cut], ln[cut:]
            img_a = self.sub.render(a, True, TEXT)
            surf.blit(img_a, (x, y))
            if b:
                surf.blit(self.sub.render(b, True, (150, 142, 130)), (x + img_a.get_width(), y))
            count += len(ln) + 1
            y += 23

    # ------------------------------------------------------------------ overlays

    def _help(self, surf: pygame.Surface, game: Game) -> None:
        rows = [
            ("Arrows / WASD", "walk (or click where to go)"),
            ("E", "talk to someone in reach, or pick something up"),
            ("Enter / T", "type a line (typing over the NPC interrupts it)"),
            ("V (hold)", "push-to-talk with the microphone (speaking interrupts)"),
            ("G", "give your first item to the person you talk to"),
            ("Esc", "stop typing / leave the conversation / quit"),
            ("J / Tab", "quest log on/off"),
            ("F5 / F9", "save / load (position, inventory, quest, NPC memory)"),
            ("F3", "engine timings overlay"),
        ]
        box = pygame.Rect(0, 0, 620, 60 + 24 * len(rows) + 70)
        box.center = (self.w // 2, self.h // 2)
        panel(surf, box, alpha=240)
        surf.blit(self.serif.render("How to play", True, GOLD), (box.x + 20, box.y + 16))
        y = box.y + 52
        for key, what in rows:
            surf.blit(self.small_bold.render(key, True, (236, 220, 170)), (box.x + 24, y))
            surf.blit(self.body.render(what, True, TEXT), (box.x + 160, y - 2))
            y += 24
        hello = game.hello
        info = [
            f"Engine: {hello.get('engine', '?')}   speech recognition: {'on' if game.stt else 'off'}   "
            f"voice: {'on' if hello.get('audio_out') else 'off'}",
            f"Player: {game.opts.player_name} (id {game.player_id})   save file: {game.opts.save_path}",
        ]
        for line in info:
            surf.blit(self.small.render(line, True, DIM), (box.x + 24, y + 8))
            y += 18

    def _debug(self, surf: pygame.Surface, game: Game, fps: float) -> None:
        lines = [f"fps {fps:.0f}   sessions: {'+'.join(game.conv.members) if game.conv else '-'}"]
        if game.turn_ends:
            end = game.turn_ends[-1]
            t = end.get("timings") or {}
            lines.append(f"last turn: {end.get('character')} #{end.get('turn')} {end.get('status')}")
            lines += [f"  {k}: {v} ms" for k, v in list(t.items())[:9]]
        for eff in game.story_log[-5:]:
            lines.append("story " + " ".join(f"{k}={v}" for k, v in eff.items() if k not in ("v", "type", "session", "seq")))
        box = pygame.Rect(12, 72, 430, 16 * len(lines) + 12)
        panel(surf, box, alpha=200, border=(90, 90, 90))
        for i, ln in enumerate(lines):
            surf.blit(self.mono.render(ln[:66], True, (200, 230, 200)), (box.x + 8, box.y + 6 + 16 * i))

    # ------------------------------------------------------------------ screens

    def loading(self, surf: pygame.Surface, proc: EngineProcess | None, status: str, now: float) -> None:
        self._backdrop(surf)
        box = pygame.Rect(0, 0, 560, 330)
        box.center = (self.w // 2, self.h // 2 + 40)
        panel(surf, box, alpha=235)
        surf.blit(self.serif.render(status, True, TEXT), (box.x + 24, box.y + 20))
        bar = pygame.Rect(box.x + 24, box.y + 54, box.width - 48, 16)
        progress = proc.progress if proc is not None else (0.5 + 0.5 * math.sin(now * 3)) * 0.2
        pygame.draw.rect(surf, (60, 54, 48), bar, border_radius=8)
        fill = bar.copy()
        fill.width = max(16, int(bar.width * progress))
        pygame.draw.rect(surf, GOLD, fill, border_radius=8)
        y = bar.bottom + 16
        if proc is not None:
            for step in proc.steps[-9:]:
                mark = "✓" if step.done else "…"
                col = TEXT if step.done else (255, 236, 170)
                secs = f"{step.seconds:.1f} s" if step.seconds is not None else f"{now - proc.started_at:.0f} s"
                what = fit(f"{mark}  {step.what.replace(str(REPO) + '/', '')}", self.body, box.width - 120)
                surf.blit(self.body.render(what, True, col), (box.x + 28, y))
                st = self.small.render(secs, True, DIM)
                surf.blit(st, (box.right - 28 - st.get_width(), y + 2))
                y += 21
            foot = "First start loads the models once; later games connect in a second."
        else:
            foot = "Looking for an engine ..."
        surf.blit(self.small.render(foot, True, DIM), (box.x + 24, box.bottom - 26))

    def error(self, surf: pygame.Surface, title: str, lines: list[str], actions: str) -> None:
        self._backdrop(surf)
        body = [ln for raw in lines for ln in wrap(raw, self.body, 560)]
        box = pygame.Rect(0, 0, 620, 120 + 21 * len(body))
        box.center = (self.w // 2, self.h // 2 + 40)
        panel(surf, box, alpha=240, border=(200, 90, 70))
        surf.blit(self.serif.render(title, True, (255, 190, 170)), (box.x + 24, box.y + 20))
        y = box.y + 56
        for ln in body:
            surf.blit(self.body.render(ln, True, TEXT), (box.x + 24, y))
            y += 21
        surf.blit(self.body.render(actions, True, (255, 236, 170)), (box.x + 24, box.bottom - 36))

    def _backdrop(self, surf: pygame.Surface) -> None:
        shade = pygame.Surface(surf.get_size(), pygame.SRCALPHA)
        shade.fill((10, 12, 24, 150))
        surf.blit(shade, (0, 0))
        t = self.title.render("Oakhollow", True, (250, 236, 200))
        s = self.title.render("Oakhollow", True, (0, 0, 0))
        r = t.get_rect(center=(self.w // 2, 78))
        surf.blit(s, r.move(3, 3))
        surf.blit(t, r)
        sub = self.body.render("a voice-acted village, played by npc-engine", True, (220, 210, 190))
        surf.blit(sub, sub.get_rect(center=(self.w // 2, 118)))


def describe_hello(hello: dict[str, Any]) -> str:
    names = ", ".join(c.get("name", c.get("id", "?")) for c in hello.get("characters", []))
    return f"{hello.get('engine', 'engine')}: {names}"

