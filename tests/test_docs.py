"""The docs name only files that exist: every path in backticks in
docs/design.md, docs/upstream.md and README.md is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["docs/design.md", "docs/upstream.md", "README.md"]
TOP = ("jobs/", "tests/", "bench/", "chaos/", "deploy/", "docs/", "examples/", ".ci/")
FILE = re.compile(r"^[\w./*-]+\.(py|lua|md|yml|yaml|json|html|css|js|toml|sh|lock)$")


def paths_in(text: str) -> set[str]:
    out: set[str] = set()
    for token in re.findall(r"`([^`\s]+)`", text):
        token = token.rstrip(".,:;")
        if token.startswith(("../", "/", "http")) or "{" in token:
            continue
        if token.startswith(TOP) or (FILE.match(token) and "/" in token):
            out.add(token.split("::")[0])
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_file_a_doc_names_exists(doc: str) -> None:
    missing = sorted(
        p for p in paths_in((ROOT / doc).read_text()) if not any(ROOT.glob(p.rstrip("/")))
    )
    assert missing == []
