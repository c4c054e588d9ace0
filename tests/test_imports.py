"""The direction of imports between the packages of ``jobs/``, as each package's
docstring states it: the HTTP side, the ops page and the CLI sit on top and
nothing below imports them; the domain's model, the upstream client and
observability sit at the bottom; the dev tools are never imported by the
service except by the CLI that starts them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("jobs.http", "jobs.ui", "jobs.cli")

# module (or package) prefix -> import prefixes it must not use
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "jobs.domain.statuses": ("jobs.storage", "jobs.work", "jobs.delivery", "jobs.upstream"),
    "jobs.domain.records": ("jobs.storage", "jobs.work", "jobs.delivery", "jobs.upstream"),
    "jobs.domain.requests": ("jobs.storage", "jobs.work", "jobs.delivery", "jobs.upstream"),
    "jobs.domain": ("jobs.work", *TOP, "jobs.dev"),
    "jobs.upstream": ("jobs.domain", "jobs.storage", "jobs.work", "jobs.delivery", "jobs.services"),
    "jobs.observe": ("jobs.work", "jobs.delivery", "jobs.upstream", "jobs.domain.lifecycle"),
    "jobs.storage": ("jobs.work", "jobs.delivery", "jobs.upstream", *TOP, "jobs.dev"),
    "jobs.delivery": ("jobs.work.steps", "jobs.work.dispatch", *TOP, "jobs.dev"),
    "jobs.work": (*TOP, "jobs.dev"),
    "jobs.client": ("jobs.http", "jobs.work", "jobs.storage", "jobs.domain.lifecycle"),
    "jobs.http": ("jobs.cli", "jobs.dev"),
    "jobs.ui": ("jobs.cli", "jobs.dev"),
}

# debts, each to be paid by moving the shared piece down a layer; a paid one
# must leave this list (the test says so)
KNOWN: set[tuple[str, str]] = {
    ("jobs.delivery.engine", "jobs.work.steps"),  # fault guard: belongs in work.engine
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ``jobs.*`` module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {m for m in found if m == "jobs" or m.startswith("jobs.")}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rules_for(module: str) -> tuple[str, ...]:
    return tuple(p for key, ps in FORBIDDEN.items() if under(module, key) for p in ps)


def test_imports_go_one_way() -> None:
    wrong: list[str] = []
    seen: set[tuple[str, str]] = set()
    for path in sorted((ROOT / "jobs").rglob("*.py")):
        module = module_name(path)
        banned = rules_for(module)
        for imported in sorted(imports_of(path)):
            hit = next((b for b in banned if under(imported, b)), None)
            known = next((k for k in KNOWN if k[0] == module and under(imported, k[1])), None)
            if known is not None:
                seen.add(known)
            elif hit is not None:
                wrong.append(f"{module} imports {imported} (no {hit} from here)")
    assert wrong == []
    assert KNOWN - seen == set(), "paid debts: take them off KNOWN"


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """The check sees an import that breaks a rule, inside a function too."""
    assert any(under("jobs.work.steps", b) for b in rules_for("jobs.storage.store"))
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from jobs.http.deps import Svc\n")
    assert "jobs.http.deps" in imports_of(probe)
