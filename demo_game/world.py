"""Oakhollow: the map, its buildings, where the characters stand, areas and items.

Pure data and geometry (no pygame), in tile units: one tile is ``TILE`` pixels.
Everything the story talks about has a name here that matches ``story/oakhollow.yaml``:
the ``mill`` area (``area.entered``), the ``hammer`` item (``item.picked_up``), the
``north_gate`` door (``door.open``) and Aldric's ``gatehouse`` spot (``npc.move``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

TILE = 32

# Terrain, one character per tile:
#   .  grass      :  dirt path   o  cobbles   %  wheat   f  flowers   (walkable)
#   T  tree       ~  water       #  palisade  w  well    G  gate (solid until opened)
TERRAIN = (
    "TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT",
    "TT....T..................TT..........TTT",
    "T.%%%%%%%...........................T..T",
    "T.%%%%%%%....................~~~~......T",
    "..%%%%%%%...................~~~~~~......",
    ".T%%%%%%%...................~~~~~~......",
    "T.%%%%%%%....................~~~~......T",
    "...................::.................T.",
    "..T...........:::::::............T......",
    "...................::...................",
    "###################GG###################",
    "#T.................::.................T#",
    "#.T..........T.....::................T.#",
    "#..................::....T.............#",
    "#T.................::..................#",
    "#..................::.................T#",
    "#..................::..................#",
    "#...............f..::..f...............#",
    "#......:.......oooooooooo.......:......#",
    "#.....:::::::::oooooooooo::::::::......#",
    "#T.........f...oooowwoooo..f...........#",
    "#..............oooooooooo.............T#",
    "#.T............oooooooooo..............#",
    "#..............oooooooooo..............#",
    "#.......::::::::f:::::::::::::::.......#",
    "#..................::..f...............#",
    "#.~~~~.............::..................#",
    "#.~~~~........T....::....T...........T.#",
    "#T........T..................T......T..#",
    "########################################",
)
WIDTH = len(TERRAIN[0])
HEIGHT = len(TERRAIN)
SOLID_TERRAIN = frozenset("T~#w")

Tile = tuple[int, int]


@dataclass(frozen=True)
class Rect:
    """A rectangle of whole tiles: ``x, y`` top-left, ``w, h`` in tiles."""

    x: int
    y: int
    w: int
    h: int

    def contains(self, tx: int, ty: int) -> bool:
        return self.x <= tx < self.x + self.w and self.y <= ty < self.y + self.h

    def tiles(self) -> list[Tile]:
        return [(x, y) for y in range(self.y, self.y + self.h) for x in range(self.x, self.x + self.w)]


@dataclass(frozen=True)
class Building:
    id: str
    name: str
    kind: str  # how render.py draws it: forge, inn, mill, gatehouse, cottage
    rect: Rect
    door: Tile  # the door tile on the front (bottom) wall
    enterable: bool = False  # walk-in buildings: walls solid, inside walkable, roof fades

    def solid(self, tx: int, ty: int) -> bool:
        if not self.rect.contains(tx, ty):
            return False
        if not self.enterable:
            return True
        r = self.rect
        on_wall = tx in (r.x, r.x + r.w - 1) or ty in (r.y, r.y + r.h - 1)
        return on_wall and (tx, ty) != self.door

    def interior(self) -> Rect:
        r = self.rect
        return Rect(r.x + 1, r.y + 1, r.w - 2, r.h - 2)


@dataclass(frozen=True)
class Area:
    """A named region; entering one sends ``area.entered {area: id}`` to the engine."""

    id: str
    name: str
    rects: tuple[Rect, ...]

    def contains(self, tx: int, ty: int) -> bool:
        return any(r.contains(tx, ty) for r in self.rects)


@dataclass(frozen=True)
class ItemSpot:
    """Something lying on the ground that the player can pick up with E."""

    item: str
    tile: Tile


@dataclass(frozen=True)
class Door:
    """A door the story can open (``door.open {door: id}``); solid while closed."""

    id: str
    tiles: tuple[Tile, ...]


BUILDINGS: tuple[Building, ...] = (
    Building("mill", "The Old Mill", "mill", Rect(11, 2, 7, 6), door=(14, 7), enterable=True),
    Building("forge", "Bram's Forge", "forge", Rect(3, 13, 7, 5), door=(7, 17)),
    Building("inn", "The Crooked Kettle", "inn", Rect(28, 12, 8, 6), door=(32, 17)),
    Building("gatehouse", "Gatehouse", "gatehouse", Rect(22, 11, 3, 2), door=(23, 12)),
    Building("cottage_w", "Cottage", "cottage", Rect(4, 20, 5, 3), door=(6, 22)),
    Building("cottage_e", "Cottage", "cottage", Rect(30, 20, 5, 3), door=(32, 22)),
)

# Small props that block movement (the anvil by the forge).
PROPS: dict[str, Tile] = {"anvil": (11, 17)}

DOORS: tuple[Door, ...] = (Door("north_gate", ((19, 10), (20, 10))),)

AREAS: tuple[Area, ...] = (
    # Checked in order: the mill sits inside the north road.
    Area("mill", "The Old Mill", (Rect(12, 3, 5, 5),)),
    Area("north_road", "North Road", (Rect(0, 0, WIDTH, 10),)),
    Area("north_gate", "North Gate", (Rect(15, 11, 11, 3),)),
    Area("forge", "The Forge", (Rect(1, 12, 13, 8),)),
    Area("inn", "The Crooked Kettle", (Rect(26, 11, 13, 9),)),
    Area("square", "Village Square", (Rect(15, 17, 10, 7),)),
)

ITEMS: tuple[ItemSpot, ...] = (ItemSpot("hammer", (13, 4)),)

# Where each character stands, and named spots a story can send them to (``npc.move``).
NPC_HOME: dict[str, Tile] = {"bram": (12, 17), "marta": (30, 18), "aldric": (18, 11)}
SPOTS: dict[str, Tile] = {
    "gatehouse": (23, 13),
    "north_gate": (18, 11),
    "forge": (12, 17),
    "anvil": (12, 17),
    "inn": (30, 18),
    "square": (21, 21),
    "well": (21, 21),
    "mill": (14, 8),
    "kettle": (32, 18),  # beside Marta at the Crooked Kettle's door: the two of them make a scene
    "forge_yard": (10, 19),  # where the captain stands when he calls at the forge
}

# Where a character waits while in a story beat: Bram comes along to the Kettle while you
# ask Marta about the thief (the tavern scene), and goes home when his beat moves on. He
# leaves only once you are not talking with him. A game would author these with its levels.
BEAT_POSTS: dict[str, str] = {"bram_waiting": "kettle"}  # the beat's character goes to the spot

# Rounds: a character walks between these spots, staying the given seconds at each (the
# first is where the round starts). Captain Aldric calls at the forge now and then: walk past
# it while he is there and he and Bram argue (a banter). A story npc.move ends the round.
PATROLS: dict[str, tuple[tuple[str, float], ...]] = {
    "aldric": (("north_gate", 45.0), ("forge_yard", 40.0)),
}



@dataclass(frozen=True)
class Banter:
    """An NPC-to-NPC exchange the game plays when the player walks into ``area`` while all of
    ``characters`` stand in it (once per visit): the story's ``beat`` if it has one, else ``topic``."""

    area: str
    characters: tuple[str, ...]
    beat: str
    topic: str


BANTERS: tuple[Banter, ...] = (
    Banter("forge", ("bram", "aldric"), "forge_argument",
           "the stolen hammer, and whether the north gate should stay shut"),
)
PLAYER_START: Tile = (20, 26)
# Characters the engine knows but this map does not place stand around the square.
SPARE_SPOTS: tuple[Tile, ...] = ((17, 22), (23, 22), (17, 18), (23, 18))

# Quest ids the story emits in ``quest.started`` and the title the quest log shows.
QUEST_TITLES: dict[str, str] = {"stolen_hammer": "The Smith's Stolen Hammer"}

ITEM_NAMES: dict[str, str] = {"hammer": "Bram's hammer", "sword": "Star-forged sword"}


@dataclass
class World:
    """The map plus what the story has changed: open doors, picked-up items."""

    open_doors: set[str] = field(default_factory=set)
    picked: set[str] = field(default_factory=set)

    def terrain(self, tx: int, ty: int) -> str:
        if 0 <= tx < WIDTH and 0 <= ty < HEIGHT:
            return TERRAIN[ty][tx]
        return "T"

    def door_at(self, tx: int, ty: int) -> Door | None:
        return next((d for d in DOORS if (tx, ty) in d.tiles), None)

    def solid(self, tx: int, ty: int) -> bool:
        if not (0 <= tx < WIDTH and 0 <= ty < HEIGHT):
            return True
        door = self.door_at(tx, ty)
        if door is not None:
            return door.id not in self.open_doors
        if TERRAIN[ty][tx] in SOLID_TERRAIN:
            return True
        if (tx, ty) in PROPS.values():
            return True
        return any(b.solid(tx, ty) for b in BUILDINGS)

    def area_at(self, tx: int, ty: int) -> Area | None:
        return next((a for a in AREAS if a.contains(tx, ty)), None)

    def building_inside(self, tx: int, ty: int) -> Building | None:
        return next((b for b in BUILDINGS if b.enterable and b.interior().contains(tx, ty)), None)

    def items_on_ground(self) -> list[ItemSpot]:
        return [i for i in ITEMS if i.item not in self.picked]

    def path(self, start: Tile, goal: Tile, avoid: frozenset[Tile] = frozenset()) -> list[Tile] | None:
        """Shortest walkable tile path around ``avoid`` (people); breadth-first over 1,200 tiles."""
        if self.solid(*goal) or goal in avoid:
            # Aim for the nearest free neighbour of a solid goal (an NPC's anvil, say).
            free = [n for n in _neighbours(goal) if not self.solid(*n) and n not in avoid]
            if not free:
                return None
            goal = min(free, key=lambda n: abs(n[0] - start[0]) + abs(n[1] - start[1]))
        prev: dict[Tile, Tile | None] = {start: None}
        todo = deque([start])
        while todo:
            cur = todo.popleft()
            if cur == goal:
                out: list[Tile] = []
                node: Tile | None = cur
                while node is not None:
                    out.append(node)
                    node = prev[node]
                return out[::-1]
            for n in _neighbours(cur):
                if n not in prev and not self.solid(*n) and n not in avoid:
                    prev[n] = cur
                    todo.append(n)
        return None


def _neighbours(t: Tile) -> list[Tile]:
    x, y = t
    return [(x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)]


def tile_center(t: Tile) -> tuple[float, float]:
    return (t[0] + 0.5) * TILE, (t[1] + 0.5) * TILE


def tile_of(px: float, py: float) -> Tile:
    return int(px // TILE), int(py // TILE)

# What the quest log suggests next, by the beat a character is in (story/oakhollow.yaml).
# A game would author these with its quest text; unknown beats simply show no hint.
HINTS: dict[str, str] = {
    "bram_hammer_stolen": "Talk to Bram at the forge.",
    "bram_waiting": "Ask Marta at the Crooked Kettle about the thief.",
    "marta_gossip": "Ask Captain Aldric to open the north gate.",
    "aldric_refuses": "Aldric wants a good reason (or ten gold).",
    "aldric_opens": "Search the old mill north of the gate.",
    "bram_hammer_back": "Bring the hammer back to Bram (G gives it).",
    "bram_thanks": "Quest complete. Bram owes you one.",
}
# Which character's beat drives the hint, most advanced first.
HINT_ORDER: tuple[str, ...] = (
    "bram_thanks", "bram_hammer_back", "aldric_opens", "marta_gossip", "aldric_refuses", "bram_waiting",
    "bram_hammer_stolen",
)
