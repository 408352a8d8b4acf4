"""The repository carries its own documents (issue 14, item 5): a user who clones it has no
work tree around it, so nothing may point outside it, and every relative link in the
Markdown documents must resolve inside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\.\./shared|shared/seed|shared/(CLAIMS|DESIGN|ENVIRONMENT)\.md|/work/")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def repository_files() -> list[Path]:
    """Tracked files and new ones git does not ignore (what a commit would carry)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.stdout.splitlines() if (ROOT / name).is_file()]


def test_nothing_in_the_repository_points_outside_it():
    offenders = []
    for path in repository_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE.search(line) and path.name != "test_self_contained.py"]
    assert offenders == []


def test_every_relative_link_of_the_documents_resolves():
    broken = []
    for path in [p for p in repository_files() if p.suffix == ".md"]:
        for target in LINK.findall(path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_the_documents_the_readme_names_are_in_the_repository():
    for name in ("docs/CLAIMS.md", "docs/DESIGN.md", "docs/ENVIRONMENT.md"):
        assert (ROOT / name).is_file(), name
