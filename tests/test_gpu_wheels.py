"""The GPU device machine can run ``benchmarks/gpu_check.py``: every third-party module the project's code,
the benchmarks and the CUDA tests import (anywhere in a file, lazy imports too) comes from a distribution
that its image holds (``benchmarks/device_packages.txt``) or that ``benchmarks/gpu_wheels.sh`` carries there
(``benchmarks/gpu_wheels.txt``).

A new dependency that is on neither list fails here, naming the module, the file and the line, before a
15-minute GPU loan would find it at its first import.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("featstore", "heads", "cli", "benchmarks")
PROJECT = {"featstore", "heads", "cli", "tests"} | {p.stem for d in ("benchmarks", "tests") for p in (ROOT / d).glob("*.py")}


def _names(path: str) -> set:
    lines = (ln.split("#", 1)[0].strip() for ln in (ROOT / path).read_text().splitlines())
    return {_norm(re.split(r"[=<>!~ ]", ln, 1)[0]) for ln in lines if ln}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_test_files() -> List[Path]:
    """The test files gpu_check.py runs (those marking tests ``pytest.mark.cuda``, its own rule) and the
    test modules they import, transitively."""
    todo = sorted(p for p in (ROOT / "tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text())
    seen: List[Path] = []
    while todo:
        path = todo.pop()
        seen.append(path)
        for top, _ in _imports(path):
            sibling = ROOT / "tests" / f"{top}.py"
            if sibling.is_file() and sibling not in seen and sibling not in todo:
                todo.append(sibling)
    return sorted(seen)


def _imports(path: Path) -> List[Tuple[str, int]]:
    """(top-level module, line) of every absolute import in ``path``, module-level or inside a function."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.module.split(".")[0], node.lineno))
    return out


def third_party_imports() -> List[Tuple[str, str, int]]:
    """(top-level module, file, line) of every import outside the standard library and the project."""
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))] + cuda_test_files()
    found = []
    for path in files:
        for top, line in _imports(path):
            if top not in sys.stdlib_module_names and top not in PROJECT:
                found.append((top, str(path.relative_to(ROOT)), line))
    return found


@functools.lru_cache(maxsize=1)
def _module_distributions() -> Dict[str, List[str]]:
    return md.packages_distributions()


def distributions_of(module: str) -> List[str]:
    return [_norm(d) for d in _module_distributions().get(module, [])]


def test_lists_are_well_formed():
    device, carried = _names("benchmarks/device_packages.txt"), _names("benchmarks/gpu_wheels.txt")
    assert {"torch", "torchvision", "transformers", "numpy"} <= device  # the image's PyTorch stack
    assert carried and not carried & device, f"carried wheels the image already holds: {sorted(carried & device)}"
    pins = [ln for ln in (ROOT / "benchmarks/gpu_wheels.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", p) for p in pins), pins  # exact pins only


def uncovered(imports, covered: set) -> Dict[str, Tuple[str, int]]:
    """``"module (distributions)" -> (file, line)`` of its first import, for modules none of whose
    distributions is in ``covered``."""
    missing: Dict[str, Tuple[str, int]] = {}
    for top, where, line in imports:
        dists = distributions_of(top)
        if not dists:
            pytest.fail(f"{where}:{line} imports {top!r}, which no installed distribution provides")
        if not set(dists) & covered:
            missing.setdefault(f"{top} ({', '.join(dists)})", (where, line))
    return missing


def test_every_third_party_import_reaches_the_device():
    covered = _names("benchmarks/device_packages.txt") | _names("benchmarks/gpu_wheels.txt")
    missing = uncovered(third_party_imports(), covered)
    assert not missing, "not in benchmarks/device_packages.txt nor benchmarks/gpu_wheels.txt: " + "; ".join(
        f"{m} first at {w}:{ln}" for m, (w, ln) in sorted(missing.items()))


def test_a_new_dependency_is_caught(tmp_path, monkeypatch):
    """The check itself: a lazy import of a distribution on neither list is found, with its file and line."""
    (tmp_path / "featstore").mkdir()
    (tmp_path / "featstore" / "x.py").write_text("import os\nfrom .y import z\n\ndef f():\n    import moto.core\n")
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "ROOT", tmp_path)
    monkeypatch.setattr(here, "SCANNED", ("featstore",))
    imports = third_party_imports()
    assert imports == [("moto", "featstore/x.py", 5)]  # os: stdlib; .y: the project
    assert uncovered(imports, {"torch"}) == {"moto (moto)": ("featstore/x.py", 5)}
    assert uncovered(imports, {"moto"}) == {}
