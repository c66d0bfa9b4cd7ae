"""Size limits for src/: no module over 600 lines, no function over 60 (docs/architecture.md).

A module past 600 lines holds more than one concept; a function past 60 lines does more than
one thing. ruff's PLR rules (pyproject.toml) count arguments, branches, returns and
statements; this counts lines, which is what a reader has to hold.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60

# Modules or functions let past the limits, each with its reason. None today.
ALLOWED: frozenset[str] = frozenset()


def oversized(path: Path, text: str) -> list[tuple[str, int]]:
    """(name, lines) for the module and for each function in it that is over its limit."""
    rel = path.relative_to(SRC).as_posix() if path.is_absolute() else path.as_posix()
    out = []
    lines = text.count("\n")
    if lines > MAX_MODULE_LINES:
        out.append((rel, lines))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append((f"{rel}:{node.name}", length))
    return out


def test_no_module_or_function_over_its_limit() -> None:
    found = {
        name: lines
        for path in sorted(SRC.rglob("*.py"))
        for name, lines in oversized(path, path.read_text(encoding="utf-8"))
    }
    over = {name: lines for name, lines in found.items() if name not in ALLOWED}
    assert over == {}, f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function"
    assert sorted(ALLOWED - set(found)) == [], "now within the limits: drop it from ALLOWED"


def test_oversized_counts_functions_and_modules() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    text = f"def long():\n{body}\n\ndef short():\n    return 1\n" + "\n" * MAX_MODULE_LINES
    assert oversized(Path("m.py"), text) == [
        ("m.py", MAX_MODULE_LINES + MAX_FUNCTION_LINES + 4),
        ("m.py:long", MAX_FUNCTION_LINES + 1),
    ]
