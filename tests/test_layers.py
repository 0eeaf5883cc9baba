"""The package's layering: no import cycles, and imports only go down across rooms.

Pure ast over covidxray/ (nothing is imported): absolute and relative imports, at module level, inside
functions and under TYPE_CHECKING alike. Rooms, top to bottom:

    entry points (covidxray, cli, gunicorn_conf, local_gunicorn): may import anything; nothing imports them
    web > dicomnode > service (service, retention), archive
        > imaging, predictors, backends, ml, automl_standin > base

with, inside the middle floor: ml may import predictors and imaging, predictors and automl_standin
may import imaging, automl_standin may import predictors; backends import only each other and base.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "covidxray"

#: room -> the other rooms it may import
MAY_IMPORT: dict[str, set[str]] = {
    "entry": {
        "web",
        "dicomnode",
        "service",
        "archive",
        "imaging",
        "predictors",
        "backends",
        "ml",
        "automl_standin",
        "base",
    },
    "web": {"dicomnode", "service", "imaging", "predictors", "backends", "ml", "automl_standin", "base"},
    "dicomnode": {"service", "imaging", "predictors", "backends", "base"},
    "service": {"imaging", "predictors", "backends", "base"},
    "archive": {"imaging", "predictors", "backends", "base"},
    "ml": {"imaging", "predictors", "base"},
    "automl_standin": {"predictors", "imaging", "base"},
    "predictors": {"imaging", "base"},
    "imaging": {"base"},
    "backends": {"base"},
    "base": set(),
}
SUBPACKAGES = {"web", "dicomnode", "archive", "imaging", "predictors", "backends", "ml", "automl_standin"}
TOP_LEVEL = {
    "covidxray": "entry",
    "covidxray.cli": "entry",
    "covidxray.gunicorn_conf": "entry",
    "covidxray.local_gunicorn": "entry",
    "covidxray.service": "service",
    "covidxray.retention": "service",
    "covidxray.settings": "base",
    "covidxray.errors": "base",
    "covidxray.labels": "base",
    "covidxray.version": "base",
}


def room_of(module: str) -> str | None:
    """The room of a dotted module name (None: it has none yet)."""
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    parts = module.split(".")
    if parts[:2] == ["covidxray", "cli"]:
        return "entry"  # the command line's own modules, by command group
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else None


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module under `package` (packages by their __init__.py)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (an imported name that is a submodule counts as it)."""
    mods = modules(package)
    root = package.name

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names
                ]
            for target in targets:
                if target == root or target.startswith(root + "."):
                    found = resolve(target)
                    if found and found != name:
                        graph[name].add(found)
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    cycles.append(sorted(component))
    return sorted(cycles)


def layer_violations(graph: Mapping[str, Iterable[str]], room=room_of) -> list[str]:
    """Every import that goes up, sideways where not allowed, or into an entry point; roomless modules."""
    problems = []
    for source, targets in sorted(graph.items()):
        source_room = room(source)
        if source_room is None:
            problems.append(f"{source} has no room: place it in MAY_IMPORT's layout")
            continue
        for target in sorted(targets):
            target_room = room(target)
            if target_room is None:
                continue  # reported as its own source
            if target_room == "entry" and not (source_room == "entry" and target.startswith("covidxray.cli")):
                problems.append(f"{source} imports the entry point {target}")
            elif target_room != source_room and target_room not in MAY_IMPORT[source_room]:
                problems.append(f"{source} ({source_room}) imports {target} ({target_room})")
    return problems


def floors(graph: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Each module's floor: 0 when it imports no package module, else one above its highest import
    (the modules of a cycle share one floor)."""
    component = {m: i for i, c in enumerate(find_cycles(graph)) for m in c}
    memo: dict[str, int] = {}

    def floor(module: str, seen: frozenset[str]) -> int:
        if module in memo:
            return memo[module]
        group = {m for m, c in component.items() if c == component.get(module, -1)} or {module}
        below = [t for m in group for t in graph.get(m, ()) if t not in group and t not in seen]
        value = max((floor(t, seen | group) + 1 for t in below), default=0)
        for m in group:
            memo[m] = value
        return value

    return {m: floor(m, frozenset()) for m in graph}


def test_every_module_has_a_room():
    assert [m for m in modules() if room_of(m) is None] == []


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_imports_only_go_down():
    assert layer_violations(import_graph()) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(circle) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    rooms = {"covidxray.backends.x": "backends", "covidxray.web.y": "web", "covidxray.cli": "entry"}
    upward = {
        "covidxray.backends.x": {"covidxray.web.y"},
        "covidxray.web.y": {"covidxray.cli"},
        "covidxray.cli": set(),
    }
    assert layer_violations(upward, rooms.get) == [
        "covidxray.backends.x (backends) imports covidxray.web.y (web)",
        "covidxray.web.y imports the entry point covidxray.cli",
    ]
    assert floors({"a": {"b"}, "b": {"c"}, "c": set()}) == {"a": 2, "b": 1, "c": 0}


def test_the_graph_sees_relative_lazy_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "covidxray"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n"
    )
    graph = import_graph(pkg)
    assert graph["covidxray.a"] == {"covidxray.sub.b"} and graph["covidxray.sub.b"] == {"covidxray.a"}
    assert find_cycles(graph) == [["covidxray.a", "covidxray.sub.b"]]
