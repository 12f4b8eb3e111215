"""The package's import graph: no cycles, and the layers point one way.

Every ``import`` statement of every module counts, wherever it stands (module level, inside a
function, under ``TYPE_CHECKING``). ``from a.b import c`` is an edge to ``a.b.c`` when that is
a module, else to ``a.b`` (a name of the package). The implicit import of a module's own parent
packages is not an edge: Python runs them first, whatever they import.
"""

from __future__ import annotations

import ast
import pathlib

import revproxy

ROOT = pathlib.Path(revproxy.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The revproxy modules and packages that ``path`` imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # "from a import b" imports a.b when b is a module, else a name of a.
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walker_sees_a_known_edge() -> None:
    graph = import_graph()
    assert "revproxy.net.session" in graph["revproxy.dispatcher"]
    assert "revproxy.config.errors" in graph["revproxy.config.loader"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


# The floors of the house, top to bottom, as revproxy/__init__.py maps them: a module imports
# from its own floor or the floors below.
FLOORS: list[list[str]] = [
    ["revproxy.cli", "revproxy.demo", "revproxy.__main__"],
    ["revproxy.server"],
    ["revproxy.instance"],
    ["revproxy.reverse"],
    ["revproxy.proxy"],
    ["revproxy.dispatcher"],
    ["revproxy.dns"],
    ["revproxy.transport"],
    ["revproxy.mux"],
    ["revproxy.config"],
    ["revproxy.routing", "revproxy.sniff", "revproxy.geodata"],
    ["revproxy.net"],
    ["revproxy.log", "revproxy.policy", "revproxy"],
]


def floor_of(module: str) -> int:
    parts = module.split(".")
    for name in (".".join(parts[:2]), parts[0]):
        for number, floor in enumerate(FLOORS):
            if name in floor:
                return number
    raise AssertionError(f"{module} is on no floor: add it to FLOORS and the map")


def test_every_module_is_on_a_floor() -> None:
    for module in import_graph():
        floor_of(module)


def test_lower_floors_do_not_import_higher_ones() -> None:
    wrong = [f"{module} -> {target}"
             for module, imports in import_graph().items()
             for target in imports if floor_of(target) < floor_of(module)]
    assert wrong == []


def test_the_map_names_every_floor_in_order() -> None:
    """revproxy/__init__.py lists the floors top to bottom."""
    doc = revproxy.__doc__ or ""
    positions = []
    for floor in FLOORS[:-1]:
        short = floor[0].removeprefix("revproxy.")
        marker = f"``{short}/``" if (ROOT / short).is_dir() else f"``{short}``"
        assert marker in doc, f"the map does not name {marker}"
        positions.append(doc.index(marker))
    assert positions == sorted(positions)
