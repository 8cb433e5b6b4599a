"""The module import graph of featstore/, heads/ and cli/ has no cycles (issue 14: data flows one way).

Every module is parsed with ``ast``; every ``import`` counts, module-level or inside a function (a lazy
import hides a cycle, it does not remove it). An edge goes to the most specific project module an import
names (``from .store import backends`` -> ``featstore.store.backends``; ``from ..store import Recipe`` ->
``featstore.store``); a package's implicit import of its parents is not an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("featstore", "heads", "cli")

Edges = Dict[str, Dict[str, int]]  # module -> imported project module -> line of the first such import

# Cycles allowed for now, by the modules they join, each with how to break it: none. Any cycle fails the
# test; so does an entry here once its cycle is gone (then delete the entry).
KNOWN_CYCLES: Dict[tuple, str] = {}


def modules_of(root: Path, packages) -> Dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    pkg = module.split(".") if is_package else module.split(".")[:-1]
    pkg = pkg[:len(pkg) - (node.level - 1)]
    return ".".join(pkg + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known) -> Dict[str, int]:
    """Project modules ``module`` imports anywhere in its file, with the line of the first import of each."""
    found: Dict[str, int] = {}
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            if t in known and t != module:  # others: outside the packages (or a module that does not exist)
                found.setdefault(t, node.lineno)
    return found


def import_graph(root: Path, packages) -> Tuple[Edges, Dict[str, Path]]:
    mods = modules_of(root, packages)
    return {m: imports_of(m, p, mods) for m, p in mods.items()}, mods


def cycles(edges: Edges) -> List[List[str]]:
    """One cycle (as a closed path of modules) per strongly connected component that has one (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_closed_path(comp, edges) for comp in comps]


def _closed_path(comp: List[str], edges: Edges) -> List[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, inside = comp[0], set(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]  # path runs v, ..., start
                if w in inside and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no path back to {start} inside {comp}")


def describe(cycle: List[str], edges: Edges, mods: Dict[str, Path], root: Path) -> str:
    steps = [f"{a} -> {b} ({mods[a].relative_to(root)}:{edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n      " + "\n      ".join(steps)


def check_acyclic(root: Path, packages, known=()) -> None:
    """Fails listing every cycle (its modules, and the file and line of each import on it) not in ``known``."""
    edges, mods = import_graph(root, packages)
    found = [c for c in cycles(edges) if tuple(sorted(set(c))) not in known]
    assert not found, "import cycles:\n  " + "\n  ".join(describe(c, edges, mods, root) for c in found)


def test_featstore_heads_cli_import_graph_has_no_cycles():
    check_acyclic(ROOT, PACKAGES, KNOWN_CYCLES)


def test_every_known_cycle_still_exists():
    present = {tuple(sorted(set(c))) for c in cycles(import_graph(ROOT, PACKAGES)[0])}
    gone = sorted(set(KNOWN_CYCLES) - present)
    assert not gone, f"these import cycles are gone: delete them from KNOWN_CYCLES: {gone}"


def test_the_graph_sees_the_real_imports():
    edges, _ = import_graph(ROOT, PACKAGES)
    assert "featstore.store.layout" in edges["featstore.store.reader"]
    assert "featstore.store.layout" in edges["featstore.store.writer"]
    assert {"featstore.store.reader", "featstore.store.writer"} <= set(edges["featstore.store.store"])
    assert "featstore.store.reader" not in edges["featstore.store.writer"]
    assert "featstore.store" in edges["featstore.runner.extract"]  # `from ..store import Recipe, Store`


def _write(root: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_cycle_through_a_function_level_import_is_found_and_listed(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import thing\n",
        "pkg/b.py": "import os\n\n\ndef thing():\n    from pkg.sub import c\n    return c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from .. import a\nfrom ..d import x\n",
        "pkg/d.py": "x = 1\n",
    })
    with pytest.raises(AssertionError) as e:
        check_acyclic(tmp_path, ["pkg"])
    msg = str(e.value)
    assert "pkg.a -> pkg.b -> pkg.sub.c -> pkg.a" in msg, msg
    assert "pkg.b -> pkg.sub.c (pkg/b.py:5)" in msg, msg
    assert "pkg.d" not in msg.split("\n")[1], msg


def test_an_acyclic_package_passes(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "from .a import f\n", "pkg/a.py": "from .b import g\n",
                      "pkg/b.py": "def g():\n    from . import c\n", "pkg/c.py": ""})
    check_acyclic(tmp_path, ["pkg"])
    edges, _ = import_graph(tmp_path, ["pkg"])
    assert edges == {"pkg": {"pkg.a": 1}, "pkg.a": {"pkg.b": 1}, "pkg.b": {"pkg.c": 2}, "pkg.c": {}}
