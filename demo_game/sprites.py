"""Procedural art: the ground, trees, buildings, props and icons, drawn once with pygame
primitives into surfaces that ``render.py`` blits every frame. No image files needed.
"""

from __future__ import annotations

import functools
import math
import random

import pygame

from demo_game import world as W
from demo_game.world import TILE

Color = tuple[int, int, int]

GRASS = (92, 148, 66)
GRASS_DARK = (70, 122, 52)
GRASS_LIGHT = (122, 176, 84)
DIRT = (176, 142, 96)
DIRT_EDGE = (140, 108, 70)
COBBLE = (150, 146, 138)
COBBLE_DARK = (112, 108, 104)
WATER = (64, 116, 170)
WATER_DEEP = (48, 92, 146)
MUD = (120, 100, 70)
SOIL = (116, 84, 56)
WHEAT = (222, 190, 100)
WOOD = (126, 86, 52)
WOOD_DARK = (86, 58, 36)
STONE = (150, 148, 144)
STONE_DARK = (104, 102, 100)
PLASTER = (232, 220, 192)
ROOF_SLATE = (76, 82, 96)
ROOF_RED = (160, 72, 52)
THATCH = (200, 164, 92)
WINDOW_LIT = (255, 214, 120)

# Building sprites extend past their footprint: roofs and chimneys rise above it.
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 10, 56, 6


def shade(c: Color, f: float) -> Color:
    return (max(0, min(255, int(c[0] * f))), max(0, min(255, int(c[1] * f))), max(0, min(255, int(c[2] * f))))


def mix(a: Color, b: Color, t: float) -> Color:
    return (int(a[0] + (b[0] - a[0]) * t), int(a[1] + (b[1] - a[1]) * t), int(a[2] + (b[2] - a[2]) * t))


# --------------------------------------------------------------------------- ground


def make_ground() -> pygame.Surface:
    """The whole map's ground, drawn once: grass, paths, cobbles, water, fields, flowers."""
    rng = random.Random(7)
    surf = pygame.Surface((W.WIDTH * TILE, W.HEIGHT * TILE))
    surf.fill(GRASS)
    for ty in range(W.HEIGHT):
        for tx in range(W.WIDTH):
            v = rng.uniform(-0.05, 0.05)
            pygame.draw.rect(surf, shade(GRASS, 1 + v), (tx * TILE, ty * TILE, TILE, TILE))
    # Soft large patches so the grass does not read as a grid.
    for _ in range(90):
        x, y = rng.uniform(0, W.WIDTH * TILE), rng.uniform(0, W.HEIGHT * TILE)
        r = rng.uniform(30, 90)
        patch = pygame.Surface((int(r * 2), int(r * 2)), pygame.SRCALPHA)
        col = GRASS_LIGHT if rng.random() < 0.5 else GRASS_DARK
        pygame.draw.ellipse(patch, (*col, 38), patch.get_rect())
        surf.blit(patch, (x - r, y - r))
    for _ in range(5200):
        x, y = rng.uniform(0, W.WIDTH * TILE), rng.uniform(0, W.HEIGHT * TILE)
        col = GRASS_DARK if rng.random() < 0.6 else GRASS_LIGHT
        pygame.draw.line(surf, col, (x, y), (x + rng.uniform(-1.5, 1.5), y - rng.uniform(2, 5)))

    def tiles(chars: str) -> list[W.Tile]:
        return [(x, y) for y in range(W.HEIGHT) for x in range(W.WIDTH) if W.TERRAIN[y][x] in chars]

    def blob(cells: list[W.Tile], color: Color, grow: int) -> None:
        # Circles on cells plus bridges to neighbours: organic edges instead of tile squares.
        cellset = set(cells)
        r = TILE // 2 + grow
        for x, y in cells:
            cx, cy = x * TILE + TILE // 2, y * TILE + TILE // 2
            pygame.draw.circle(surf, color, (cx, cy), r)
            for dx, dy in ((1, 0), (0, 1), (1, 1), (-1, 1)):
                if (x + dx, y + dy) in cellset and (dx == 0 or dy == 0 or ((x + dx, y) in cellset and (x, y + dy) in cellset)):
                    pygame.draw.line(surf, color, (cx, cy), (cx + dx * TILE, cy + dy * TILE), r * 2)

    # fields
    field_cells = tiles("%")
    for x, y in field_cells:
        pygame.draw.rect(surf, SOIL, (x * TILE - 1, y * TILE - 1, TILE + 2, TILE + 2))
    for x, y in field_cells:
        for row in range(4):
            yy = y * TILE + 4 + row * 8
            pygame.draw.line(surf, shade(SOIL, 0.8), (x * TILE, yy + 3), (x * TILE + TILE, yy + 3), 2)
            for k in range(5):
                sx = x * TILE + 3 + k * 6 + rng.uniform(-1, 1)
                pygame.draw.line(surf, shade(WHEAT, rng.uniform(0.8, 1.05)), (sx, yy + 3), (sx + rng.uniform(-1, 1), yy - 4), 2)
    # water with a muddy rim
    water = tiles("~")
    blob(water, MUD, 4)
    blob(water, WATER, 0)
    for x, y in water:
        pygame.draw.circle(surf, WATER_DEEP, (x * TILE + 16, y * TILE + 16), 9)
    blob(water, WATER, -6)
    for x, y in water:
        if rng.random() < 0.4:
            pygame.draw.circle(surf, WATER_DEEP, (x * TILE + rng.randint(8, 24), y * TILE + rng.randint(8, 24)), rng.randint(4, 8))
    # dirt paths with a darker edge and pebbles
    path = tiles(":")
    blob(path, DIRT_EDGE, 3)
    blob(path, DIRT, 0)
    for x, y in path:
        for _ in range(6):
            px, py = x * TILE + rng.uniform(2, 30), y * TILE + rng.uniform(2, 30)
            pygame.draw.circle(surf, shade(DIRT, rng.uniform(0.75, 1.15)), (px, py), rng.choice((1, 1, 2)))
    # cobbled square
    plaza = tiles("ow")
    x0 = min(x for x, _ in plaza) * TILE
    y0 = min(y for _, y in plaza) * TILE
    x1 = (max(x for x, _ in plaza) + 1) * TILE
    y1 = (max(y for _, y in plaza) + 1) * TILE
    pygame.draw.rect(surf, DIRT_EDGE, (x0 - 4, y0 - 4, x1 - x0 + 8, y1 - y0 + 8), border_radius=14)
    pygame.draw.rect(surf, COBBLE_DARK, (x0, y0, x1 - x0, y1 - y0), border_radius=12)
    for row, yy in enumerate(range(y0 + 2, y1 - 2, 10)):
        off = 6 if row % 2 else 0
        for xx in range(x0 + 2 - off, x1 - 2, 13):
            if xx < x0 + 2:
                continue
            w = min(11, x1 - 2 - xx)
            if w > 3:
                pygame.draw.rect(surf, shade(COBBLE, rng.uniform(0.9, 1.08)), (xx, yy, w, 8), border_radius=3)
    # flower beds
    for x, y in tiles("f"):
        cx, cy = x * TILE + 16, y * TILE + 16
        pygame.draw.ellipse(surf, shade(SOIL, 0.9), (cx - 15, cy - 10, 30, 20))
        for _ in range(11):
            col = rng.choice(((240, 90, 110), (250, 220, 90), (250, 250, 250), (170, 120, 220)))
            fx, fy = cx + rng.uniform(-11, 11), cy + rng.uniform(-6, 6)
            pygame.draw.circle(surf, (60, 120, 50), (fx, fy + 1), 3)
            pygame.draw.circle(surf, col, (fx, fy), 2)
    # stray wildflowers on grass
    for _ in range(160):
        x, y = rng.randrange(W.WIDTH), rng.randrange(W.HEIGHT)
        if W.TERRAIN[y][x] == ".":
            col = rng.choice(((250, 250, 240), (250, 220, 90), (230, 130, 170)))
            pygame.draw.circle(surf, col, (x * TILE + rng.randint(4, 28), y * TILE + rng.randint(4, 28)), 1)
    return surf


# --------------------------------------------------------------------------- trees & props


@functools.lru_cache(maxsize=8)
def tree(variant: int) -> pygame.Surface:
    """A round tree, 48 x 64, its trunk base at (24, 58)."""
    rng = random.Random(variant * 31 + 3)
    s = pygame.Surface((52, 68), pygame.SRCALPHA)
    pygame.draw.ellipse(s, (20, 40, 20, 90), (8, 50, 38, 14))
    pygame.draw.rect(s, WOOD_DARK, (22, 36, 8, 22), border_radius=3)
    base = mix((52, 110, 52), (80, 130, 50), rng.random())
    for i, (dx, dy, r) in enumerate(((0, 8, 18), (-10, 16, 13), (10, 16, 13), (-6, 2, 12), (7, 3, 12))):
        pygame.draw.circle(s, shade(base, 0.75 if i == 0 else 0.85), (26 + dx, 22 + dy + 2), r + 1)
    for dx, dy, r in ((0, 6, 17), (-10, 14, 12), (10, 15, 12), (-5, 0, 11), (6, 1, 11)):
        pygame.draw.circle(s, base, (26 + dx, 22 + dy), r)
    for _ in range(14):
        a, d = rng.uniform(0, 2 * math.pi), rng.uniform(0, 14)
        pygame.draw.circle(s, shade(base, 1.22), (22 + math.cos(a) * d, 20 + math.sin(a) * d * 0.8), rng.randint(2, 4))
    return s


def palisade(gate: bool = False, open_: bool = False) -> pygame.Surface:
    """One tile of the wooden wall (or a gate leaf), 32 x 56, standing on its tile's bottom."""
    s = pygame.Surface((TILE, 56), pygame.SRCALPHA)
    if gate:
        if open_:
            # A leaf swung inward: a narrow dark edge against the post.
            pygame.draw.rect(s, WOOD_DARK, (0, 18, 6, 38))
            return s
        pygame.draw.rect(s, WOOD, (0, 16, TILE, 40))
        for x in range(0, TILE, 8):
            pygame.draw.line(s, WOOD_DARK, (x, 16), (x, 55), 1)
        for y in (24, 44):
            pygame.draw.rect(s, (70, 70, 74), (0, y, TILE, 4))
        pygame.draw.rect(s, WOOD_DARK, (0, 16, TILE, 40), 2)
        return s
    for i, x in enumerate((0, 11, 22)):
        top = 6 + (i % 2) * 3
        pygame.draw.rect(s, shade(WOOD, 1.0 - 0.07 * i), (x, top + 6, 10, 56 - top - 6))
        pygame.draw.polygon(s, shade(WOOD, 1.1), [(x, top + 6), (x + 5, top), (x + 10, top + 6)])
        pygame.draw.line(s, WOOD_DARK, (x + 9, top + 6), (x + 9, 55), 2)
    pygame.draw.rect(s, WOOD_DARK, (0, 30, TILE, 4))
    return s


def anvil() -> pygame.Surface:
    s = pygame.Surface((34, 30), pygame.SRCALPHA)
    pygame.draw.ellipse(s, (0, 0, 0, 70), (3, 20, 28, 9))
    pygame.draw.rect(s, WOOD_DARK, (10, 14, 14, 12), border_radius=2)
    pygame.draw.polygon(s, (58, 60, 66), [(2, 6), (28, 6), (33, 9), (26, 13), (8, 13)])
    pygame.draw.rect(s, (80, 82, 90), (6, 4, 22, 4))
    return s


def well() -> pygame.Surface:
    s = pygame.Surface((64, 60), pygame.SRCALPHA)
    pygame.draw.ellipse(s, (0, 0, 0, 70), (6, 34, 54, 20))
    pygame.draw.ellipse(s, STONE_DARK, (6, 22, 52, 30))
    pygame.draw.ellipse(s, STONE, (6, 18, 52, 30))
    pygame.draw.ellipse(s, (30, 50, 80), (14, 24, 36, 18))
    for x in (8, 54):
        pygame.draw.rect(s, WOOD_DARK, (x, 0, 4, 32))
    pygame.draw.polygon(s, ROOF_RED, [(2, 6), (32, -4), (62, 6), (58, 10), (6, 10)])
    pygame.draw.line(s, WOOD, (10, 14), (56, 14), 3)
    return s


def barrel() -> pygame.Surface:
    s = pygame.Surface((20, 24), pygame.SRCALPHA)
    pygame.draw.ellipse(s, (0, 0, 0, 60), (1, 16, 18, 7))
    pygame.draw.rect(s, WOOD, (2, 4, 16, 16), border_radius=4)
    pygame.draw.ellipse(s, shade(WOOD, 1.15), (2, 1, 16, 7))
    for y in (8, 15):
        pygame.draw.line(s, (70, 70, 74), (2, y), (17, y), 2)
    return s


def lamp_post() -> pygame.Surface:
    s = pygame.Surface((14, 44), pygame.SRCALPHA)
    pygame.draw.rect(s, (50, 46, 44), (6, 8, 3, 36))
    pygame.draw.rect(s, (60, 56, 52), (2, 2, 11, 10), border_radius=2)
    pygame.draw.rect(s, WINDOW_LIT, (4, 4, 7, 6))
    return s


@functools.lru_cache(maxsize=8)
def shadow(w: int, h: int, alpha: int = 70) -> pygame.Surface:
    s = pygame.Surface((w, h), pygame.SRCALPHA)
    pygame.draw.ellipse(s, (0, 0, 0, alpha), s.get_rect())
    return s


@functools.lru_cache(maxsize=16)
def glow(radius: int, color: Color) -> pygame.Surface:
    """A radial light to add onto the scene (blit with BLEND_RGB_ADD)."""
    s = pygame.Surface((radius * 2, radius * 2))
    s.fill((0, 0, 0))
    for i in range(radius, 0, -2):
        f = (1 - i / radius) ** 1.6
        pygame.draw.circle(s, shade(color, f * 0.55), (radius, radius), i)
    return s


# --------------------------------------------------------------------------- buildings


def _roof(s: pygame.Surface, rect: pygame.Rect, color: Color, thatch: bool, rng: random.Random) -> None:
    ridge = rect.y + int(rect.height * 0.32)
    pygame.draw.rect(s, shade(color, 0.55), rect.inflate(4, 4), border_radius=6)
    pygame.draw.rect(s, shade(color, 1.12), (rect.x, rect.y, rect.width, ridge - rect.y), border_top_left_radius=6, border_top_right_radius=6)
    pygame.draw.rect(s, color, (rect.x, ridge, rect.width, rect.bottom - ridge), border_bottom_left_radius=4, border_bottom_right_radius=4)
    if thatch:
        for _ in range(rect.width * rect.height // 40):
            x = rng.uniform(rect.x + 2, rect.right - 2)
            y = rng.uniform(rect.y + 2, rect.bottom - 4)
            pygame.draw.line(s, shade(color, rng.uniform(0.8, 1.2)), (x, y), (x + rng.uniform(-1, 1), y + 5), 1)
    else:
        for y in range(ridge + 8, rect.bottom - 2, 8):
            pygame.draw.line(s, shade(color, 0.8), (rect.x + 2, y), (rect.right - 3, y), 1)
            off = 6 if (y // 8) % 2 else 0
            for x in range(rect.x + 4 + off, rect.right - 3, 12):
                pygame.draw.line(s, shade(color, 0.8), (x, y - 8), (x, y), 1)
        for y in range(rect.y + 6, ridge - 2, 7):
            pygame.draw.line(s, shade(color, 0.95), (rect.x + 3, y), (rect.right - 4, y), 1)
    pygame.draw.line(s, shade(color, 1.3), (rect.x + 4, ridge), (rect.right - 5, ridge), 3)
    pygame.draw.rect(s, shade(color, 0.6), (rect.x, rect.bottom - 5, rect.width, 5))


def _window(s: pygame.Surface, cx: int, y: int, lit: bool) -> None:
    r = pygame.Rect(0, 0, 14, 13)
    r.midtop = (cx, y)
    pygame.draw.rect(s, WOOD_DARK, r.inflate(4, 4), border_radius=2)
    pygame.draw.rect(s, WINDOW_LIT if lit else (60, 70, 90), r)
    pygame.draw.line(s, WOOD_DARK, (r.centerx, r.y), (r.centerx, r.bottom - 1), 2)
    pygame.draw.line(s, WOOD_DARK, (r.x, r.centery), (r.right - 1, r.centery), 2)


def _stone_wall(s: pygame.Surface, r: pygame.Rect, rng: random.Random) -> None:
    pygame.draw.rect(s, STONE_DARK, r)
    for row, y in enumerate(range(r.y + 1, r.bottom - 1, 7)):
        off = 7 if row % 2 else 0
        for x in range(r.x + 1 - off, r.right - 1, 14):
            xs = max(x, r.x + 1)
            w = min(x + 13, r.right - 1) - xs
            if w > 2:
                pygame.draw.rect(s, shade(STONE, rng.uniform(0.88, 1.08)), (xs, y, w, 6), border_radius=2)


def building_sprite(b: W.Building, variant: str = "exterior") -> pygame.Surface:
    """The building drawn in 3/4 view; blit at (footprint x - MARGIN_X, footprint y - MARGIN_TOP).

    ``variant`` for the mill: ``exterior`` (closed roof), ``walls`` (roof off, what you see
    from inside) or ``floor`` (planks and props under the player).
    """
    return _building_sprite(b.id, variant)


@functools.lru_cache(maxsize=32)
def _building_sprite(bid: str, variant: str) -> pygame.Surface:
    b = next(x for x in W.BUILDINGS if x.id == bid)
    rng = random.Random(bid)
    fw, fh = b.rect.w * TILE, b.rect.h * TILE
    s = pygame.Surface((fw + 2 * MARGIN_X, fh + MARGIN_TOP + MARGIN_BOTTOM), pygame.SRCALPHA)
    ox, oy = MARGIN_X, MARGIN_TOP  # footprint top-left inside the sprite
    small = b.kind in ("gatehouse", "cottage")
    wall_h = 34 if small else 44
    wall = pygame.Rect(ox + 2, oy + fh - wall_h, fw - 4, wall_h)
    door_cx = ox + (b.door[0] - b.rect.x) * TILE + TILE // 2
    if b.kind == "mill" and variant != "exterior":
        return _mill_inside(s, b, variant, rng)
    # shadow
    pygame.draw.rect(s, (0, 0, 0, 60), (ox + 6, oy + fh - 6, fw, 10), border_radius=4)
    # front wall
    if b.kind in ("forge", "gatehouse", "mill"):
        _stone_wall(s, wall, rng)
    else:
        pygame.draw.rect(s, PLASTER, wall)
        if b.kind == "inn":  # timber framing
            for x in range(wall.x, wall.right, 24):
                pygame.draw.line(s, WOOD_DARK, (x, wall.y), (x, wall.bottom), 3)
            pygame.draw.line(s, WOOD_DARK, (wall.x, wall.y + 3), (wall.right, wall.y + 3), 4)
            pygame.draw.line(s, WOOD_DARK, (wall.x, wall.bottom - 2), (wall.right, wall.bottom - 2), 4)
    # windows and the door
    for tx in range(b.rect.w):
        cx = ox + tx * TILE + TILE // 2
        if abs(cx - door_cx) < TILE or b.kind == "gatehouse":
            continue
        if b.kind == "forge" and abs(cx - door_cx) < 2 * TILE:
            continue
        if tx % 2 == 1 or b.kind == "inn":
            _window(s, cx, wall.y + (10 if not small else 7), lit=b.kind in ("inn", "cottage"))
    if b.kind == "forge":
        mouth = pygame.Rect(0, 0, 58, wall_h - 8)
        mouth.midbottom = (door_cx - 10, wall.bottom)
        pygame.draw.rect(s, (40, 26, 20), mouth, border_top_left_radius=10, border_top_right_radius=10)
        inner = mouth.inflate(-14, -12)
        inner.bottom = mouth.bottom
        pygame.draw.rect(s, (230, 120, 40), inner, border_top_left_radius=8, border_top_right_radius=8)
        pygame.draw.rect(s, (255, 200, 90), inner.inflate(-20, -14).move(0, 7), border_radius=4)
    else:
        door = pygame.Rect(0, 0, 18 if small else 22, wall_h - (10 if small else 12))
        door.midbottom = (door_cx, wall.bottom)
        pygame.draw.rect(s, WOOD_DARK, door.inflate(4, 3), border_top_left_radius=9, border_top_right_radius=9)
        pygame.draw.rect(s, WOOD, door, border_top_left_radius=8, border_top_right_radius=8)
        pygame.draw.line(s, WOOD_DARK, (door.centerx, door.y + 3), (door.centerx, door.bottom), 1)
        pygame.draw.circle(s, (210, 180, 80), (door.right - 5, door.centery + 2), 2)
    # roof
    roof_color = {"forge": ROOF_SLATE, "inn": ROOF_RED, "mill": (120, 92, 70), "gatehouse": STONE, "cottage": THATCH}[b.kind]
    if b.kind == "gatehouse":
        top = pygame.Rect(ox - 2, oy - 20, fw + 4, fh - wall_h + 24)
        pygame.draw.rect(s, STONE_DARK, top.inflate(4, 4), border_radius=3)
        pygame.draw.rect(s, STONE, top, border_radius=3)
        for x in range(top.x, top.right - 6, 14):
            pygame.draw.rect(s, STONE, (x, top.y - 8, 9, 10))
            pygame.draw.rect(s, STONE_DARK, (x, top.y - 8, 9, 10), 1)
        pygame.draw.rect(s, (150, 40, 40), (top.centerx - 5, top.y + 6, 10, 20))  # banner
        pygame.draw.polygon(s, (220, 190, 80), [(top.centerx - 3, top.y + 12), (top.centerx + 3, top.y + 12), (top.centerx, top.y + 18)])
    else:
        roof = pygame.Rect(ox - 6, oy - 26, fw + 12, fh - wall_h + 34)
        _roof(s, roof, roof_color, thatch=b.kind == "cottage", rng=rng)
    if b.kind == "forge":  # chimney
        ch = pygame.Rect(ox + fw - 46, oy - 48, 22, 40)
        _stone_wall(s, ch, rng)
        pygame.draw.rect(s, (40, 30, 28), (ch.x + 3, ch.y, ch.width - 6, 5))
        sign = pygame.Rect(ox + fw - 30, wall.y - 6, 26, 18)
        pygame.draw.rect(s, WOOD, sign, border_radius=2)
        pygame.draw.rect(s, WOOD_DARK, sign, 2, border_radius=2)
        pygame.draw.polygon(s, (50, 50, 56), [(sign.x + 5, sign.y + 6), (sign.right - 5, sign.y + 6), (sign.right - 8, sign.y + 10), (sign.x + 8, sign.y + 10)])
        pygame.draw.rect(s, (50, 50, 56), (sign.centerx - 3, sign.y + 10, 6, 4))
    if b.kind == "cottage":
        pygame.draw.rect(s, STONE_DARK, (ox + 12, oy - 30, 12, 22))
    if b.kind == "inn":
        sign = pygame.Rect(0, 0, 92, 20)
        sign.midbottom = (ox + fw // 2 - 30, wall.y + 2)
        pygame.draw.rect(s, WOOD_DARK, sign.inflate(4, 4), border_radius=4)
        pygame.draw.rect(s, (196, 160, 104), sign, border_radius=3)
        font = pygame.font.SysFont("dejavuserif", 10, bold=True)
        label = font.render("Crooked Kettle", True, (70, 40, 20))
        s.blit(label, label.get_rect(center=sign.center))
    if b.kind == "mill":
        pygame.draw.rect(s, (150, 120, 90), (ox + fw // 2 - 30, oy - 22, 60, 26), border_radius=8)  # the cap under the sails
    return s


def _mill_inside(s: pygame.Surface, b: W.Building, variant: str, rng: random.Random) -> pygame.Surface:
    ox, oy = MARGIN_X, MARGIN_TOP
    fw, fh = b.rect.w * TILE, b.rect.h * TILE
    if variant == "floor":
        floor = pygame.Rect(ox + TILE, oy + TILE, fw - 2 * TILE, fh - 2 * TILE)
        pygame.draw.rect(s, (150, 112, 74), floor)
        for y in range(floor.y, floor.bottom, 8):
            pygame.draw.line(s, (120, 88, 58), (floor.x, y), (floor.right, y), 1)
            off = rng.randrange(0, 40)
            for x in range(floor.x + off, floor.right, 40):
                pygame.draw.line(s, (120, 88, 58), (x, y), (x, y + 8), 1)
        # millstone, flour sacks, crates
        mc = (floor.right - 36, floor.y + 36)
        pygame.draw.circle(s, STONE_DARK, mc, 24)
        pygame.draw.circle(s, STONE, mc, 21)
        pygame.draw.circle(s, STONE_DARK, mc, 5)
        for i in range(3):
            sack = pygame.Rect(floor.x + 6 + i * 15, floor.bottom - 24, 14, 18)
            pygame.draw.rect(s, (226, 214, 186), sack, border_radius=6)
            pygame.draw.rect(s, (180, 168, 140), sack, 1, border_radius=6)
        crate = pygame.Rect(floor.right - 30, floor.bottom - 28, 24, 22)
        pygame.draw.rect(s, WOOD, crate)
        pygame.draw.rect(s, WOOD_DARK, crate, 2)
        pygame.draw.line(s, WOOD_DARK, crate.topleft, crate.bottomright, 2)
        # flour dust
        for _ in range(60):
            pygame.draw.circle(s, (236, 228, 210), (rng.uniform(floor.x, floor.right), rng.uniform(floor.y, floor.bottom)), 1)
        return s
    # walls seen from inside: the tops of the side and back walls, and the front wall face
    top = (118, 116, 112)
    pygame.draw.rect(s, top, (ox, oy, fw, TILE - 10))
    pygame.draw.rect(s, top, (ox, oy, TILE - 12, fh))
    pygame.draw.rect(s, top, (ox + fw - TILE + 12, oy, TILE - 12, fh))
    front = pygame.Rect(ox, oy + fh - TILE, fw, TILE)
    door_x = ox + (b.door[0] - b.rect.x) * TILE
    _stone_wall(s, front, rng)
    pygame.draw.rect(s, (0, 0, 0, 0), (door_x + 4, front.y, TILE - 8, TILE))
    for r in ((ox, oy, fw, TILE - 10), (ox, oy, TILE - 12, fh), (ox + fw - TILE + 12, oy, TILE - 12, fh)):
        pygame.draw.rect(s, STONE_DARK, r, 2)
    return s


# --------------------------------------------------------------------------- icons


def draw_item(surf: pygame.Surface, item: str, center: tuple[float, float], size: float) -> None:
    """A small picture of an item (inventory slots, things on the ground, gifts)."""
    cx, cy = center
    k = size / 24
    if item == "hammer":
        pygame.draw.line(surf, WOOD, (cx - 7 * k, cy + 8 * k), (cx + 4 * k, cy - 4 * k), max(2, int(3 * k)))
        head = [(cx - 1 * k, cy - 11 * k), (cx + 11 * k, cy + 1 * k), (cx + 7 * k, cy + 5 * k), (cx - 5 * k, cy - 7 * k)]
        pygame.draw.polygon(surf, (90, 94, 110), head)
        pygame.draw.polygon(surf, (190, 200, 230), head, max(1, int(k)))
    elif item == "sword":
        pygame.draw.line(surf, (220, 226, 236), (cx - 6 * k, cy + 6 * k), (cx + 9 * k, cy - 9 * k), max(2, int(3 * k)))
        pygame.draw.line(surf, (255, 255, 255), (cx - 4 * k, cy + 3 * k), (cx + 8 * k, cy - 9 * k), 1)
        pygame.draw.line(surf, (200, 160, 60), (cx - 9 * k, cy + 3 * k), (cx - 3 * k, cy + 9 * k), max(2, int(3 * k)))
        pygame.draw.line(surf, WOOD_DARK, (cx - 6 * k, cy + 6 * k), (cx - 10 * k, cy + 10 * k), max(2, int(3 * k)))
    else:
        pygame.draw.circle(surf, (180, 140, 90), (cx, cy + 2 * k), 8 * k)
        pygame.draw.rect(surf, (140, 100, 60), (cx - 4 * k, cy - 8 * k, 8 * k, 5 * k))


ICON_COLORS: dict[str, Color] = {
    "happy": (240, 90, 110), "sad": (90, 130, 220), "angry": (220, 60, 40), "surprised": (240, 180, 40),
    "afraid": (150, 110, 220), "neutral": (120, 120, 120),
}
GESTURE_WORDS: dict[str, str] = {
    "nod": "nods", "shake_head": "shakes head", "cross_arms": "crosses arms", "point": "points",
    "wipe_brow": "wipes brow", "wave": "waves", "lean_in": "leans in", "laugh": "laughs", "salute": "salutes",
    "wipe_counter": "wipes the counter", "give_item": "hands something over", "open_door": "opens the door",
}


def draw_icon(surf: pygame.Surface, icon: str, center: tuple[float, float], font: pygame.font.Font) -> None:
    """A speech-bubble icon for an emotion, gesture or action cue, e.g. ``emotion:happy``."""
    kind, _, name = icon.partition(":")
    cx, cy = center
    if kind == "emotion":
        bubble = pygame.Rect(0, 0, 24, 22)
        bubble.center = (int(cx), int(cy))
        pygame.draw.rect(surf, (250, 248, 240), bubble, border_radius=8)
        pygame.draw.polygon(surf, (250, 248, 240), [(cx - 4, bubble.bottom - 1), (cx + 2, bubble.bottom - 1), (cx - 3, bubble.bottom + 5)])
        col = ICON_COLORS.get(name, (120, 120, 120))
        if name == "happy":  # heart
            pygame.draw.circle(surf, col, (cx - 3, cy - 2), 4)
            pygame.draw.circle(surf, col, (cx + 3, cy - 2), 4)
            pygame.draw.polygon(surf, col, [(cx - 7, cy - 1), (cx + 7, cy - 1), (cx, cy + 7)])
        elif name == "sad":  # tear
            pygame.draw.circle(surf, col, (cx, cy + 2), 5)
            pygame.draw.polygon(surf, col, [(cx - 4, cy), (cx + 4, cy), (cx, cy - 8)])
        elif name == "angry":  # cross vein
            for a in (0, 90, 180, 270):
                r = math.radians(a + 45)
                pygame.draw.line(surf, col, (cx + math.cos(r) * 2, cy + math.sin(r) * 2), (cx + math.cos(r) * 7, cy + math.sin(r) * 7), 3)
        elif name in ("surprised", "afraid"):
            txt = font.render("!" if name == "surprised" else "!?", True, col)
            surf.blit(txt, txt.get_rect(center=(cx, cy)))
        else:
            pygame.draw.circle(surf, col, (cx, cy), 4)
        pygame.draw.rect(surf, (90, 80, 70), bubble, 1, border_radius=8)
        return
    words = GESTURE_WORDS.get(name, name.replace("_", " "))
    label = font.render(f"*{words}*", True, (60, 50, 40))
    box = label.get_rect(center=(int(cx), int(cy))).inflate(10, 6)
    pygame.draw.rect(surf, (250, 244, 220) if kind == "gesture" else (226, 240, 250), box, border_radius=7)
    pygame.draw.rect(surf, (120, 100, 80), box, 1, border_radius=7)
    surf.blit(label, label.get_rect(center=box.center))
