"""Drawing the village: ground, y-sorted objects (trees, walls, buildings, people), lights.

Only reads game state; never changes it. The HUD (panels, subtitles, screens) is in
``hud.py``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import pygame

from demo_game import sprites as S
from demo_game import world as W
from demo_game.face import draw_head
from demo_game.game import Actor, Game
from demo_game.hud import wrap
from demo_game.world import TILE

DrawFn = Callable[[pygame.Surface, float, float], None]
NIGHT = (26, 30, 70)
NIGHT_ALPHA = 58


@dataclass
class Camera:
    x: float = 0.0
    y: float = 0.0
    w: int = 960
    h: int = 640

    def follow(self, tx: float, ty: float, dt: float | None) -> None:
        tx = min(max(tx - self.w / 2, 0), W.WIDTH * TILE - self.w)
        ty = min(max(ty - self.h / 2, 0), W.HEIGHT * TILE - self.h)
        if dt is None:
            self.x, self.y = tx, ty
        else:
            k = 1 - math.exp(-dt * 6)
            self.x += (tx - self.x) * k
            self.y += (ty - self.y) * k


class SceneRenderer:
    def __init__(self, size: tuple[int, int]) -> None:
        self.camera = Camera(w=size[0], h=size[1])
        self.ground = S.make_ground()
        self.small = pygame.font.SysFont("dejavusans", 11, bold=True)
        self.tiny = pygame.font.SysFont("dejavusans", 10)
        self.night = pygame.Surface(size)
        self.night.fill(NIGHT)
        self.night.set_alpha(NIGHT_ALPHA)
        self.anvil = S.anvil()
        self.well = S.well()
        self.barrel = S.barrel()
        self.lamp = S.lamp_post()
        self.wall = S.palisade()
        self.trees = [(x, y, S.tree((x * 7 + y * 3) % 5)) for y in range(W.HEIGHT) for x in range(W.WIDTH) if W.TERRAIN[y][x] == "T"]
        self.walls = [(x, y) for y in range(W.HEIGHT) for x in range(W.WIDTH) if W.TERRAIN[y][x] == "#"]
        self.smoke_rng = random.Random(3)
        self.lamps = [(16, 17), (24, 17), (16, 24), (24, 24)]
        self._first = True

    # ------------------------------------------------------------------ frame

    def draw(self, surf: pygame.Surface, game: Game, now: float, dt: float, view_shift: float = 0.0) -> None:
        p = game.player
        self.camera.follow(p.x, p.y + view_shift, None if self._first else dt)
        self._first = False
        cam = self.camera
        ox, oy = -int(cam.x), -int(cam.y)
        surf.blit(self.ground, (ox, oy))
        self._water_shimmer(surf, ox, oy, now)
        inside = game.world.building_inside(*p.tile)
        for b in W.BUILDINGS:
            if b.enterable and inside is b:
                surf.blit(S.building_sprite(b, "floor"), (b.rect.x * TILE - S.MARGIN_X + ox, b.rect.y * TILE - S.MARGIN_TOP + oy))
        for spot in game.world.items_on_ground():
            self._item_on_ground(surf, spot, ox, oy, now)
        objects: list[tuple[float, DrawFn]] = []
        view = pygame.Rect(cam.x - 64, cam.y - 64, cam.w + 128, cam.h + 160)
        for x, y, img in self.trees:
            if view.collidepoint(x * TILE, y * TILE):
                objects.append(((y + 1) * TILE - 2, self._blitter(img, x * TILE + 16 - 26, (y + 1) * TILE - 62)))
        for x, y in self.walls:
            if view.collidepoint(x * TILE, y * TILE):
                objects.append(((y + 1) * TILE - 1, self._blitter(self.wall, x * TILE, (y + 1) * TILE - 56)))
        for door in W.DOORS:
            is_open = door.id in game.world.open_doors
            for i, (x, y) in enumerate(door.tiles):
                objects.append(((y + 1) * TILE - 1, self._gate_leaf(x, y, i, is_open, now - game.door_opened_at.get(door.id, -99))))
        for b in W.BUILDINGS:
            variant = "walls" if (b.enterable and inside is b) else "exterior"
            img = S.building_sprite(b, variant)
            objects.append(((b.rect.y + b.rect.h) * TILE, self._blitter(img, b.rect.x * TILE - S.MARGIN_X, b.rect.y * TILE - S.MARGIN_TOP)))
        ax, ay = W.PROPS["anvil"]
        objects.append(((ay + 1) * TILE - 4, self._blitter(self.anvil, ax * TILE - 1, ay * TILE + 4)))
        objects.append((21 * TILE, self._blitter(self.well, 19 * TILE, 20 * TILE - 34)))
        for bx, by in ((35, 17), (35, 18), (27, 17)):
            objects.append(((by + 1) * TILE - 6, self._blitter(self.barrel, bx * TILE + 6, by * TILE + 6)))
        for lx, ly in self.lamps:
            objects.append(((ly + 1) * TILE - 4, self._blitter(self.lamp, lx * TILE + 9, ly * TILE - 14)))
        for npc in game.npcs.values():
            objects.append((npc.y, self._actor_fn(npc, game, now)))
        objects.append((p.y, self._actor_fn(p, game, now)))
        objects.sort(key=lambda o: o[0])
        for _, fn in objects:
            fn(surf, ox, oy)
        mill = next(b for b in W.BUILDINGS if b.kind == "mill")
        self._sails(surf, mill, ox, oy, now, faded=inside is mill)
        self._smoke(surf, ox, oy, now)
        self._lights(surf, ox, oy, now)
        for npc in game.npcs.values():
            self._overhead(surf, npc, game, ox, oy, now)
        self._prompt(surf, game, ox, oy)

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _blitter(img: pygame.Surface, x: float, y: float) -> DrawFn:
        def draw(surf: pygame.Surface, ox: float, oy: float) -> None:
            surf.blit(img, (x + ox, y + oy))

        return draw

    def _gate_leaf(self, x: int, y: int, index: int, is_open: bool, since: float) -> DrawFn:
        def draw(surf: pygame.Surface, ox: float, oy: float) -> None:
            px, py = x * TILE + ox, (y + 1) * TILE - 56 + oy
            if not is_open:
                surf.blit(S.palisade(gate=True), (px, py))
                return
            # Swing open over ~0.8 s: the leaf narrows towards its hinge post.
            k = min(1.0, max(0.0, since / 0.8))
            width = max(6, int(TILE * (1 - k)))
            leaf = pygame.transform.smoothscale(S.palisade(gate=True), (width, 56)) if width > 6 else S.palisade(gate=True, open_=True)
            surf.blit(leaf, (px if index == 0 else px + TILE - leaf.get_width(), py))
            pygame.draw.rect(surf, S.WOOD_DARK, (px - 3 if index == 0 else px + TILE - 1, py + 8, 4, 48))

        return draw

    def _item_on_ground(self, surf: pygame.Surface, spot: W.ItemSpot, ox: float, oy: float, now: float) -> None:
        cx, cy = W.tile_center(spot.tile)
        bob = math.sin(now * 3) * 2
        surf.blit(S.shadow(20, 6, 90), (cx - 10 + ox, cy + 6 + oy))
        S.draw_item(surf, spot.item, (cx + ox, cy + oy + bob - 2), 22)
        # a glint so the player notices it
        a = (now * 2) % 2.4
        if a < 0.6:
            r = 3 + a * 8
            gx, gy = cx + ox + 6, cy + oy - 8 + bob
            pygame.draw.line(surf, (255, 255, 230), (gx - r, gy), (gx + r, gy), 1)
            pygame.draw.line(surf, (255, 255, 230), (gx, gy - r), (gx, gy + r), 1)

    def _water_shimmer(self, surf: pygame.Surface, ox: float, oy: float, now: float) -> None:
        for i, (x, y) in enumerate(((29, 4), (31, 5), (30, 3), (32, 4), (3, 26), (4, 27))):
            ph = now * 1.3 + i * 1.7
            dx = math.sin(ph) * 6
            alpha = 0.5 + 0.5 * math.sin(ph * 0.7)
            col = S.mix(S.WATER, (190, 220, 250), alpha * 0.8)
            sx, sy = x * TILE + 8 + dx + ox, y * TILE + 14 + oy
            pygame.draw.line(surf, col, (sx, sy), (sx + 12, sy), 2)

    def _sails(self, surf: pygame.Surface, mill: W.Building, ox: float, oy: float, now: float, faded: bool) -> None:
        # The hub sits on the front of the roof, above the door, like a post mill seen from the square.
        cx = (mill.rect.x + mill.rect.w / 2) * TILE + ox
        cy = (mill.rect.y + mill.rect.h) * TILE - 44 - 34 + oy
        layer = pygame.Surface((180, 180), pygame.SRCALPHA)
        c = (90, 90)
        angle = now * 0.5  # the old mill turns slowly
        for i in range(4):
            a = angle + i * math.pi / 2
            ca, sa = math.cos(a), math.sin(a)
            tip = (c[0] + ca * 74, c[1] + sa * 74)
            pygame.draw.line(layer, (92, 64, 40), c, tip, 4)
            # the lattice sail on one side of each arm
            px, py = -sa, ca
            quad = [
                (c[0] + ca * 20 + px * 3, c[1] + sa * 20 + py * 3),
                (c[0] + ca * 72 + px * 3, c[1] + sa * 72 + py * 3),
                (c[0] + ca * 72 + px * 18, c[1] + sa * 72 + py * 18),
                (c[0] + ca * 20 + px * 13, c[1] + sa * 20 + py * 13),
            ]
            pygame.draw.polygon(layer, (236, 226, 200, 230), quad)
            pygame.draw.polygon(layer, (120, 90, 60), quad, 1)
            for k in (34, 47, 60):
                pygame.draw.line(layer, (150, 120, 90), (c[0] + ca * k + px * 3, c[1] + sa * k + py * 3), (c[0] + ca * k + px * 18, c[1] + sa * k + py * 18), 1)
        pygame.draw.circle(layer, (70, 50, 36), c, 8)
        pygame.draw.circle(layer, (140, 110, 80), c, 4)
        if faded:
            layer.set_alpha(70)
        surf.blit(layer, (cx - 90, cy - 90))

    def _smoke(self, surf: pygame.Surface, ox: float, oy: float, now: float) -> None:
        forge = next(b for b in W.BUILDINGS if b.kind == "forge")
        sx = (forge.rect.x + forge.rect.w) * TILE - 46 + 11 + ox
        sy = forge.rect.y * TILE - 48 + oy
        puff = pygame.Surface((40, 40), pygame.SRCALPHA)
        for i in range(7):
            age = (now * 0.6 + i / 7) % 1.0
            r = 5 + age * 14
            alpha = int(110 * (1 - age))
            puff.fill((0, 0, 0, 0))
            pygame.draw.circle(puff, (200, 200, 205, alpha), (20, 20), int(r))
            surf.blit(puff, (sx - 20 + math.sin(age * 5 + i) * 6 + age * 18, sy - 20 - age * 70))

    def _lights(self, surf: pygame.Surface, ox: float, oy: float, now: float) -> None:
        """Evening: tint the scene, then add the warm light of windows, lamps and the forge."""
        surf.blit(self.night, (0, 0))
        flicker = 0.92 + 0.08 * math.sin(now * 13) * math.sin(now * 7.3)
        lights: list[tuple[float, float, int, tuple[int, int, int]]] = []
        forge = next(b for b in W.BUILDINGS if b.kind == "forge")
        lights.append(((forge.door[0]) * TILE, (forge.rect.y + forge.rect.h) * TILE - 14, int(70 * flicker), (255, 140, 60)))
        for lx, ly in self.lamps:
            lights.append((lx * TILE + 16, ly * TILE - 6, int(46 * flicker), (255, 200, 120)))
        inn = next(b for b in W.BUILDINGS if b.kind == "inn")
        for tx in range(inn.rect.w):
            lights.append(((inn.rect.x + tx) * TILE + 16, (inn.rect.y + inn.rect.h) * TILE - 26, 26, (255, 200, 110)))
        gh = next(b for b in W.BUILDINGS if b.kind == "gatehouse")
        lights.append((gh.rect.x * TILE - 4, gh.rect.y * TILE + 4, int(50 * flicker), (255, 170, 90)))
        w, h = surf.get_size()
        for x, y, r, col in lights:
            sx, sy = x + ox, y + oy
            if -r < sx < w + r and -r < sy < h + r:
                surf.blit(S.glow(max(8, r), col), (sx - r, sy - r), special_flags=pygame.BLEND_RGB_ADD)

    # ------------------------------------------------------------------ people

    def _actor_fn(self, a: Actor, game: Game, now: float) -> DrawFn:
        return lambda surf, ox, oy: draw_actor(surf, a, a.x + ox, a.y + oy, now)

    def _overhead(self, surf: pygame.Surface, npc: Actor, game: Game, ox: float, oy: float, now: float) -> None:
        x, y = npc.x + ox, npc.y + oy
        label = self.small.render(npc.name, True, (255, 250, 235))
        shadow = self.small.render(npc.name, True, (20, 16, 10))
        r = label.get_rect(midbottom=(int(x), int(y - 50)))
        surf.blit(shadow, r.move(1, 1))
        surf.blit(label, r)
        conv = game.conv
        top = r.top - 4
        if conv is not None and conv.character == npc.id and conv.thinking:
            dots = "." * (1 + int(now * 3) % 3)
            t = self.small.render(dots, True, (60, 50, 40))
            box = t.get_rect(midbottom=(int(x), top)).inflate(14, 4)
            pygame.draw.rect(surf, (250, 246, 230), box, border_radius=8)
            surf.blit(t, t.get_rect(center=box.center))
            top = box.top - 4
        if npc.icon and npc.icon_until > now:
            S.draw_icon(surf, npc.icon, (x, top - 12), self.small)
            top -= 28
        if npc.gift and now - npc.gift_at < 2.2:
            k = (now - npc.gift_at) / 2.2
            S.draw_item(surf, npc.gift, (x + 16, y - 30 - k * 30), 22 + 6 * math.sin(k * math.pi))
        if npc.bubble and npc.bubble_until > now and (conv is None or npc.id not in conv.members):
            self._speech_bubble(surf, npc.bubble, x, top)

    def _speech_bubble(self, surf: pygame.Surface, text: str, x: float, bottom: float) -> None:
        lines = wrap(text, self.tiny, 200)[-3:]
        imgs = [self.tiny.render(line, True, (40, 34, 28)) for line in lines]
        w = max(i.get_width() for i in imgs) + 14
        h = sum(i.get_height() for i in imgs) + 8
        box = pygame.Rect(0, 0, w, h)
        box.midbottom = (int(x), int(bottom - 6))
        pygame.draw.rect(surf, (252, 248, 236), box, border_radius=8)
        pygame.draw.polygon(surf, (252, 248, 236), [(x - 5, box.bottom - 1), (x + 5, box.bottom - 1), (x, box.bottom + 6)])
        pygame.draw.rect(surf, (120, 100, 80), box, 1, border_radius=8)
        yy = box.y + 4
        for img in imgs:
            surf.blit(img, (box.x + 7, yy))
            yy += img.get_height()

    def _prompt(self, surf: pygame.Surface, game: Game, ox: float, oy: float) -> None:
        text = game.prompt()
        if not text:
            return
        key, _, rest = text.partition("  ")
        k = self.small.render(key, True, (40, 30, 20))
        t = self.small.render(rest, True, (255, 250, 235))
        w = k.get_width() + t.get_width() + 22
        box = pygame.Rect(0, 0, w, 22)
        box.midbottom = (int(game.player.x + ox), int(game.player.y + oy - 52))
        pygame.draw.rect(surf, (30, 26, 22), box, border_radius=6)
        kb = pygame.Rect(box.x + 4, box.y + 3, k.get_width() + 8, 16)
        pygame.draw.rect(surf, (240, 220, 150), kb, border_radius=4)
        surf.blit(k, k.get_rect(center=kb.center))
        surf.blit(t, (kb.right + 5, box.y + 4))


def draw_actor(surf: pygame.Surface, a: Actor, x: float, y: float, now: float) -> None:
    """A villager, feet at (x, y): shadow, legs, body with gesture, head with a live face."""
    look = a.look
    face = a.face
    gesture, gp = face.current_gesture(now)
    action, _ap = face.current_action(now)
    swing = math.sin(a.walk) if a.moving else 0.0
    bounce = abs(math.sin(a.walk)) * 1.5 if a.moving else 0.0
    surf.blit(S.shadow(22, 8), (x - 11, y - 4))
    # legs
    for side in (-1, 1):
        off = swing * 3 * side
        pygame.draw.rect(surf, (60, 50, 44), (x + side * 4 - 3, y - 10 + min(0, off), 6, 10 - abs(off) * 0.3), border_radius=2)
    body_y = y - 10 - bounce
    lean = 0.0
    if gesture == "lean_in":
        lean = math.sin(gp * math.pi) * 4
    if gesture == "laugh":
        body_y -= abs(math.sin(gp * math.pi * 6)) * 2
    torso = pygame.Rect(0, 0, 20, 18)
    torso.midbottom = (int(x), int(body_y + lean * 0.5))
    pygame.draw.rect(surf, look.outfit, torso, border_radius=6)
    if a.id == "bram":  # leather apron
        pygame.draw.rect(surf, (120, 80, 50), torso.inflate(-8, -4).move(0, 2), border_radius=3)
    elif a.id == "marta":
        pygame.draw.rect(surf, look.trim, torso.inflate(-8, -3).move(0, 2), border_radius=3)
    elif a.id == "aldric":
        pygame.draw.rect(surf, look.trim, torso.inflate(-2, -10).move(0, -4), border_radius=3)
        pygame.draw.line(surf, (150, 40, 40), (torso.centerx, torso.y + 6), (torso.centerx, torso.bottom - 1), 3)
    # arms: swing while walking; gestures raise them
    for side in (-1, 1):
        sx = torso.centerx + side * 11
        sy = torso.y + 4
        ex: float
        ex, ey = sx + side * 1, sy + 11 + swing * side * 2
        if gesture == "wave" and side == 1:
            ex, ey = sx + 6 + math.sin(gp * 20) * 4, sy - 10
        elif gesture in ("point",) or (action == "point" and side == 1):
            if side == 1:
                fx = a.facing[0] or 1
                ex, ey = sx + fx * 14, sy + 1
        elif gesture == "cross_arms":
            ex, ey = torso.centerx - side * 6, sy + 7
        elif gesture == "wipe_brow" and side == 1:
            ex, ey = torso.centerx + 6 + math.sin(gp * 12) * 3, torso.y - 14
        elif gesture == "salute" and side == 1:
            ex, ey = torso.centerx + 8, torso.y - 16
        elif gesture == "wipe_counter" and side == 1:
            ex, ey = sx + 6 + math.sin(gp * 14) * 6, sy + 9
        elif (action == "give_item" and side == 1) or (action == "open_door" and side == 1):
            ex, ey = sx + 10, sy + 4
        pygame.draw.line(surf, look.outfit, (sx, sy), (ex, ey), 5)
        pygame.draw.circle(surf, look.skin, (ex, ey), 3)
    # head
    nod = math.sin(gp * math.pi * 4) * 2.5 if gesture == "nod" else 0.0
    shake = math.sin(gp * math.pi * 6) * 3 if gesture == "shake_head" else 0.0
    hx, hy = torso.centerx + shake + lean * 0.4, torso.y - 10 + nod + lean
    if a.facing == (0, -1):
        pygame.draw.circle(surf, look.skin, (hx, hy), 11)
        pygame.draw.circle(surf, look.hair if look.hat != "helmet" else look.trim, (hx, hy - 1), 11)
    else:
        draw_head(surf, hx, hy, 11, look, face, now)
