"""Import structure: no import cycles in ``npc_engine`` and ``demo_game``; argparse only in the CLI.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING:``
(a cycle that only type checking sees still ties the modules into one knot). ``import a.b.c``
is an edge to ``a.b.c``; ``from a.b import c`` is an edge to ``a.b.c`` when that is a module,
else to ``a.b``. A submodule has no implicit edge to its parent package.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Collection
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("npc_engine", "demo_game")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def edges(source: str, name: str, is_package: bool, known: Collection[str]) -> dict[str, int]:
    """The modules of ``known`` that module ``name`` (its text: ``source``) imports, with a line each."""
    package = name if is_package else name.rpartition(".")[0]
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            if target in known and target != name:
                out.setdefault(target, node.lineno)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, for the modules of this repo only."""
    mods = modules()
    return {
        name: edges(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", mods)
        for name, path in mods.items()
    }


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == grey:
                return [*stack[stack.index(nxt):], nxt]
            if colour[nxt] == white and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(graph):
        if colour[start] == white and (cycle := visit(start)) is not None:
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    mods = modules()
    hops = [
        f"  {a} ({mods[a].relative_to(REPO)}:{graph[a][b]}) imports {b}" for a, b in itertools.pairwise(cycle)
    ]
    return "import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(hops)


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert len(graph) > 50
    # A relative-free absolute import, a function-level import, and one under `if TYPE_CHECKING:`.
    assert "npc_engine.turns.handle" in graph["npc_engine.turns.reply"]
    assert "npc_engine.pipeline.llm_ollama" in graph["npc_engine.engine"], "imports inside functions count"
    assert "npc_engine.pipeline.vad" in graph["npc_engine.engine"], "imports under TYPE_CHECKING count"
    # `from npc_engine.protocol import outgoing as msg` is an edge to the submodule.
    assert "npc_engine.protocol.outgoing" in graph["npc_engine.turns.reply"]


def test_edges_resolve_relative_and_from_imports() -> None:
    known = {"pkg", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.x", "pkg.x.y", "pkg.z"}
    source = """
import pkg.x.y
from typing import TYPE_CHECKING
from . import b, not_a_module
from ..x import y
from .. import z
if TYPE_CHECKING:
    from pkg import x
def later() -> None:
    import pkg.sub
"""
    assert edges(source, "pkg.sub.a", False, known) == {
        "pkg.x.y": 2, "pkg.sub.b": 4, "pkg.sub": 4, "pkg.z": 6, "pkg.x": 8,
    }
    # In a package's __init__, `.` is the package itself; no implicit edge to a parent package.
    assert edges("from .a import thing", "pkg.sub", True, known) == {"pkg.sub.a": 1}
    assert edges("x = 1", "pkg.sub.a", False, known) == {}


def test_find_cycle_reports_the_path() -> None:
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) is None
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]


def test_there_is_no_import_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


def test_only_the_cli_parses_arguments() -> None:
    offenders = []
    for name, path in modules().items():
        if not name.startswith("npc_engine.") or name == "npc_engine.cli" or name.startswith("npc_engine.cli."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(n == "argparse" or n.startswith("argparse.") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == [], f"argparse outside npc_engine/cli/: {offenders}"
