"""The layout rules a newcomer relies on, checked: modules under ~400 lines,
functions under ~60, and no import cycle inside the ``jobs`` package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["jobs", "tests", "bench", "chaos", "api.py", "worker.py"]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def python_files() -> list[Path]:
    out: list[Path] = []
    for s in SOURCES:
        p = ROOT / s
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


def test_no_module_over_the_limit() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in python_files()}
    long = {name for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert long == set(), "modules over the limit: split them"


def test_no_function_over_the_limit() -> None:
    long: set[str] = set()
    for p in python_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.add(f"{p.relative_to(ROOT)} {node.name}")
    assert long == set(), "functions over the limit: split them"


def module_name(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(p: Path, known: set[str]) -> set[str]:
    """The ``jobs`` modules a module imports at load time (not under
    ``TYPE_CHECKING``, not inside functions)."""
    out: set[str] = set()
    tree = ast.parse(p.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jobs"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
    return out


def test_no_import_cycle() -> None:
    files = {module_name(p): p for p in (ROOT / "jobs").rglob("*.py")}
    known = set(files)
    graph = {m: imports_of(p, known) - {m} for m, p in files.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []
