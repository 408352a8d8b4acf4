"""The house has one direction: natlab (the composition root) on top, conformance below it, then the
testbed, the NAT and the agent, netwire at the bottom. Nothing imports upward (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOWER = ("netwire", "nat_app", "client_agent", "topo")
UPPER = {"conformance", "natlab"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in ``path``, also those inside functions (lazy imports count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def lower_modules() -> list[Path]:
    return [p for package in LOWER for p in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("path", lower_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_lower_layers_import_neither_conformance_nor_the_composition_root(path: Path) -> None:
    assert not imported_packages(path) & UPPER, f"{path.relative_to(ROOT)} imports {imported_packages(path) & UPPER}"


def test_netwire_imports_no_other_package_of_the_house() -> None:
    house = {*LOWER, *UPPER}
    for path in sorted((ROOT / "netwire").rglob("*.py")):
        assert not imported_packages(path) & (house - {"netwire"}), path.name


def test_the_checker_sees_a_lazy_upward_import(tmp_path: Path) -> None:
    """The control: the former topo/cli.py imported conformance inside a function."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from conformance.cli import add_demo_parser\n    return add_demo_parser\n")
    assert imported_packages(bad) & UPPER == {"conformance"}
