"""The package layers of docs/architecture.md, checked against every import in src/.

Each unit (a subpackage or a top-level module of `tastemaker`) sits in one layer. A unit may
import units of its own layer or of lower ones, never a higher one, and no two units may import
each other through any chain. Every import counts: module-level, function-local and under
`TYPE_CHECKING`, because each of them is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "tastemaker"

# Lowest first; the same list, with the reasons, is in docs/architecture.md.
LAYERS: list[tuple[str, frozenset[str]]] = [
    (
        "base",
        frozenset(
            {
                "tastemaker",  # the package root: __version__
                "arrays",
                "cache",
                "events",
                "extras",  # the error naming the extra a missing package belongs to
                "logs",
                "metrics",
                "metrics_files",
                "redisio",
                "safejson",
                "sqlite",
                "urls",
            }
        ),
    ),
    ("backends", frozenset({"catalog", "log", "pgvector", "store"})),
    (
        "domain",
        frozenset(
            {
                "artifacts",
                "config",  # declares features with the types of `features`
                "data",
                "features",
                "ranking",
                "recommend",
                "retrieval",
                "stream",
            }
        ),
    ),
    ("offline", frozenset({"offline"})),
    ("privacy", frozenset({"privacy"})),
    ("deployment", frozenset({"deployment"})),
    ("serving", frozenset({"serving"})),
    (
        "top",
        frozenset({"__main__", "cli", "cli_support", "client", "datadir", "demo", "testing"}),
    ),
]
LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tastemaker"


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC.parent / rel).with_suffix(".py").is_file() or (SRC.parent / rel).is_dir()


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, imported tastemaker module) for every import in `tree`, relative ones resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                # `from tastemaker import metrics` imports a module, not a name of the root.
                full = f"{base}.{alias.name}"
                yield node.lineno, full if is_module(full) else base


def edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, 'file:line') for every import across units."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, target in imported(tree, module, path.name == "__init__.py"):
            if target != "tastemaker" and not target.startswith("tastemaker."):
                continue
            src, dst = unit_of(module), unit_of(target)
            if src != dst:
                out.append((src, dst, f"{path.relative_to(SRC.parent)}:{line}"))
    return out


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert sorted(units - set(LAYER_OF)) == [], "add the new unit to LAYERS (and the docs)"
    assert sorted(set(LAYER_OF) - units) == [], "LAYERS names a unit that no longer exists"


def test_no_arrow_points_up() -> None:
    up = [
        f"{where}: {src} ({LAYERS[LAYER_OF[src]][0]}) imports {dst} ({LAYERS[LAYER_OF[dst]][0]})"
        for src, dst, where in edges()
        if LAYER_OF[dst] > LAYER_OF[src]
    ]
    assert up == []


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_between_units() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst, _ in edges():
        graph.setdefault(src, set()).add(dst)
    assert cycle(graph) is None


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b"}}, ["b", "b"]),
    ],
)
def test_cycle_finds_cycles(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert cycle(graph) == expected


def test_imports_are_read_inside_functions_and_relative() -> None:
    tree = ast.parse(
        "def f():\n    from tastemaker.serving import api\n"
        "from . import layout\nfrom .base import Fact\n"
    )
    got = [t for _, t in imported(tree, "tastemaker.features.items", is_package=False)]
    assert got == [
        "tastemaker.features.layout",
        "tastemaker.features.base",
        "tastemaker.serving.api",
    ]
