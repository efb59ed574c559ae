"""The package's import graph: no cycles, no private modules imported across packages.

The graph is built with :mod:`ast` from the source files (nothing is imported), and it
counts every import, also those inside functions: a lazy import still ties the two
modules together, it only hides the cycle until run time. Imports under
``if TYPE_CHECKING:`` are left out: they name types for annotations and never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "alliance_models"

#: Violations being removed by work in progress; each entry must go when that work lands:
#: the tests below fail on any violation not listed and on any listed one that is gone.
PENDING_CYCLES: set[frozenset[str]] = set()
PENDING_PRIVATE: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(name: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of a package module in ``name``.

    ``from a import b`` counts as an import of ``a.b`` when that is a module, else of
    ``a``; relative imports are resolved against the importing module's package.
    """
    tree = ast.parse(modules[name].read_text(encoding="utf-8"))
    here = name if _is_package(name, modules) else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # "alliance_models.x.y" where y is a name
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] == PACKAGE and t != name:
                out.append((t, node.lineno))
    return out


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for m in modules:
        for t, line in sorted(_imports(m, modules), key=lambda e: e[1]):
            graph[m].setdefault(t, line)  # the first line that imports t
    return graph


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan).

    An import of a package's own ``__init__`` by its submodules (``from . import x``
    inside ``pkg/y.py``) is not a cycle of the design: Python runs ``pkg/__init__``
    first in any case. Those edges are left out.
    """
    edges = {m: [t for t in ts if t not in _ancestors(m)] for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_cycle_in(sorted(c), edges) for c in comps]


def _cycle_in(comp: list[str], edges: dict[str, list[str]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    members = set(comp)
    start = comp[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in edges[v]:
                if w == start:
                    return paths[v] + [start]
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {comp}")  # pragma: no cover


def _show(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)
    ) + f" -> {cycle[-1]}"


def private_imports(graph: dict[str, dict[str, int]]) -> list[tuple[str, str, int]]:
    """Imports of a ``_private`` module of a subpackage from outside that subpackage.

    ``alliance_models._format`` and the like (private modules of the top-level package)
    are the package's shared internals and may be used everywhere.
    """
    found = []
    for m, targets in graph.items():
        for t, line in targets.items():
            parts = t.split(".")
            for k in range(2, len(parts)):
                if parts[k].startswith("_") and not parts[k].startswith("__"):
                    owner = ".".join(parts[:k])
                    if m != owner and not m.startswith(owner + "."):
                        found.append((m, t, line))
                    break
    return found


def test_the_graph_sees_known_edges():
    graph = _graph()
    # a module-level import, a relative one and a lazy one inside a function
    assert "alliance_models.errors" in graph["alliance_models.spec"]
    assert "alliance_models.probing.slopes" in graph["alliance_models.probing"]
    assert "alliance_models.plots" in graph["alliance_models.probing.conditional"]
    # ... and not one under `if TYPE_CHECKING:`
    assert "alliance_models.probing" not in graph["alliance_models.plots"]


def test_cycle_finder_reports_the_cycle():
    graph = {"p.a": {"p.b": 3}, "p.b": {"p.c": 5}, "p.c": {"p.a": 7}, "p.d": {"p.a": 1}}
    (cycle,) = find_cycles(graph)
    assert cycle == ["p.a", "p.b", "p.c", "p.a"]
    assert _show(cycle, graph) == "p.a (line 3) -> p.b (line 5) -> p.c (line 7) -> p.a"
    assert find_cycles({"p": {}, "p.a": {"p": 1}}) == []  # a submodule importing its package


def test_private_import_finder():
    graph = {"p.a.x": {"p.b._y": 4, "p.a._z": 5, "p._w": 6}, "p.b.q": {}}
    assert private_imports(graph) == [("p.a.x", "p.b._y", 4)]


def test_no_import_cycles():
    graph = _graph()
    cycles = find_cycles(graph)
    new = [_show(c, graph) for c in cycles if frozenset(c) not in PENDING_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(new)
    gone = PENDING_CYCLES - {frozenset(c) for c in cycles}
    assert not gone, f"fixed, so remove from PENDING_CYCLES: {[sorted(c) for c in gone]}"


def test_no_private_imports_across_packages():
    found = private_imports(_graph())
    new = [f"{m} (line {line}) imports {t}" for m, t, line in found
           if (m, t) not in PENDING_PRIVATE]
    assert not new, "private modules imported across packages:\n" + "\n".join(new)
    gone = PENDING_PRIVATE - {(m, t) for m, t, _ in found}
    assert not gone, f"fixed, so remove from PENDING_PRIVATE: {sorted(gone)}"


def _imports_of(graph: dict[str, dict[str, int]], prefix: str) -> dict[str, set[str]]:
    return {m: set(ts) for m, ts in graph.items() if m == prefix or m.startswith(prefix + ".")}


@pytest.mark.parametrize("lower,upper", [
    ("alliance_models.models", "alliance_models.probing"),  # models format with _format
    ("alliance_models.plots", "alliance_models.probing"),  # plots draw results only
    ("alliance_models.data.redcap", "alliance_models.data.readers"),  # redcap reads nothing
    ("alliance_models.probing", "alliance_models.reporting"),
    ("alliance_models.models", "alliance_models.planning"),  # planning uses models
    ("alliance_models.planning", "alliance_models.cli"),  # the TOML front end is the CLI's
])
def test_layers(lower, upper):
    graph = _graph()
    bad = {m: sorted(t for t in ts if t == upper or t.startswith(upper + "."))
           for m, ts in _imports_of(graph, lower).items()}
    assert not {m: t for m, t in bad.items() if t}, f"{lower} must not import {upper}"


def test_probing_core_is_plain_numpy():
    tree = ast.parse((SRC / PACKAGE / "probing" / "_core.py").read_text(encoding="utf-8"))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and not n.level}
    # no pandas, no formatting: the package modules it uses are checked just below
    assert names <= {"__future__", "collections", "dataclasses", "typing", "numpy",
                     "scipy"}, names
    assert _graph()["alliance_models.probing._core"].keys() == {"alliance_models.errors"}
