"""The package's architecture: layers with imports only downward, and no import circle anywhere.

Layers (pyproject.toml, ``[tool.importlinter]``): ``core`` (engine, regimes, seeding, storage, data,
parameters) <- ``models`` (algorithms only) <- ``chapters`` (study modules, claims, plotting) <-
``tooling`` (chapter registry, runner, page footers, browser check).  The root package only gathers
names for the notebooks; no layer imports it.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter, the dev extra) is not installed")
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "broken" in out.stdout and " 0 broken" in out.stdout


def _cycles(graph, modules):
    """Every import circle among ``modules`` (Tarjan's strongly connected components of size > 1)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v) & modules):
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
                out.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_circle():
    graph = grimp.build_graph("collapse_utils")
    # packages' __init__ files that only hand names on are left out: the circle through them is not
    # a dependency of code on code (``collapse_utils`` imports its layers to offer their names)
    modules = {m for m in graph.modules if m != "collapse_utils"}
    assert _cycles(graph, modules) == []


def test_circle_detector_finds_a_circle():
    class Fake:
        modules = {"a", "b", "c"}

        def find_modules_directly_imported_by(self, m):
            return {"a": {"b"}, "b": {"a"}, "c": set()}[m]

    assert _cycles(Fake(), Fake.modules) == [["a", "b"]]
