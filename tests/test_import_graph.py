"""The package's layering, checked over its import graph (read with `ast`; nothing is imported, no model).

Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, so an edge to a module is an edge to each of its
parent packages too (except the importing module's own packages, which ran before it). Imports under `if TYPE_CHECKING:` never run and are left out. Imports inside functions are
kept apart: a lazy import that only dodges a cycle is still a cycle, so they count for the layering rules too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "stt_engine"
LEAVES = {"stt_engine.types"}  # domain types every layer may use: they import nothing of ours but other leaves
TOP = ("stt_engine.api", "stt_engine.cli", "stt_engine.__main__")  # the layers allowed to import the API


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Our modules this import statement runs: the named ones, `from x import sub` submodules, and their parents."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = {base} | {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    out: set[str] = set()
    for name in names:
        if name != ROOT and not name.startswith(ROOT + "."):
            continue
        parts = name.split(".")
        for i in range(2, len(parts) + 1):  # the root package's __init__ holds only the version: left out
            if ".".join(parts[:i]) in known:
                out.add(".".join(parts[:i]))
    # A submodule's own packages ran before it: importing through them is no edge (else every package whose
    # __init__ re-exports a submodule would be a cycle with it).
    return {t for t in out if t != module and not module.startswith(t + ".")}


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-level edges) between stt_engine's modules."""
    files = {_module_name(p): p for p in (SRC / ROOT).rglob("*.py")}
    known = set(files)
    top: dict[str, set[str]] = {m: set() for m in known}
    lazy: dict[str, set[str]] = {m: set() for m in known}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for sub in child.orelse:
                        visit(sub, in_function)
                    continue
                if isinstance(child, ast.Import | ast.ImportFrom):
                    (lazy if in_function else top)[module] |= _targets(child, module, is_package, known)
                    continue
                visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

        visit(tree, False)
    return top, lazy


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


GRAPH = _graph()


def _merged() -> dict[str, set[str]]:
    top, lazy = GRAPH
    return {m: top[m] | lazy[m] for m in top}


def test_the_graph_is_read() -> None:
    top, lazy = GRAPH
    assert "stt_engine.api.app" in top["stt_engine.cli"] | lazy["stt_engine.cli"]
    assert "stt_engine.engine" in top["stt_engine.engine.assemble"] or top["stt_engine.engine"]


def test_no_cycle_among_module_level_imports() -> None:
    assert _cycles(GRAPH[0]) == []


def test_no_cycle_even_through_lazy_imports() -> None:
    """A function-level import that exists only to break a cycle still couples the two modules both ways."""
    assert _cycles(_merged()) == []


@pytest.mark.parametrize("kind", [0, 1], ids=["module-level", "function-level"])
def test_nothing_below_the_api_imports_it(kind: int) -> None:
    edges = GRAPH[kind]
    calls_up = sorted(
        f"{m} -> {t}" for m, targets in edges.items() if not m.startswith(TOP)
        for t in targets if t.startswith("stt_engine.api")
    )
    assert calls_up == []


def test_leaf_types_import_only_leaves() -> None:
    merged = _merged()
    for leaf in LEAVES:
        assert leaf in merged, f"{leaf} is missing"
        assert merged[leaf] <= LEAVES, f"{leaf} imports {sorted(merged[leaf] - LEAVES)}"
