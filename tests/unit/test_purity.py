"""Sans-IO cores import no sockets, no os-ken, no Mininet (DESIGN.md).

A module declares itself pure with a top-level ``__pure__ = True``; in a package's ``__init__.py`` the
marker covers every module of that package (netwire, client_agent.ipsec). The list below is derived
from the declarations, never written by hand, and a pure module may import only pure modules of the house.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOUSE = ("natlab", "netwire", "nat_app", "client_agent", "topo", "conformance")
FORBIDDEN = {"socket", "os_ken", "mininet", "subprocess", "select", "asyncio"}
# Modules that must stay declared (a marker deleted by mistake would otherwise shrink the list silently).
CORES = {"conformance/scale_report.py", "netwire/pcp.py", "netwire/plan.py", "nat_app/decide.py", "nat_app/lease_server.py", "nat_app/gpn.py",
         "nat_app/client_alg.py", "client_agent/lease_client.py", "client_agent/compensate.py",
         "client_agent/traversal.py", "client_agent/ipsec/esp.py",
         "client_agent/ipsec/udpencap.py",
         "topo/strongswan.py"}


def declares_pure(tree: ast.Module) -> bool:
    """A top-level ``__pure__ = True``."""
    return any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__pure__" for t in node.targets)
               and isinstance(node.value, ast.Constant) and node.value.value is True for node in tree.body)


def is_pure(path: Path) -> bool:
    init = path.parent / "__init__.py"
    return declares_pure(ast.parse(path.read_text())) or (init.exists() and declares_pure(ast.parse(init.read_text())))


def house_modules() -> list[Path]:
    return [p for package in HOUSE for p in sorted((ROOT / package).rglob("*.py"))]


PURE = [p for p in house_modules() if is_pure(p)]


def imports(path: Path) -> set[str]:
    """Dotted names of every absolute import, also inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def module_path(name: str) -> Path | None:
    """The house's file for a dotted name (module or package), None for names outside the house."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if name.split(".")[0] in HOUSE and candidate.exists():
            return candidate
    return None


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_does_no_io(path: Path) -> None:
    tops = {name.split(".")[0] for name in imports(path)}
    assert not tops & FORBIDDEN, f"{path.name} imports {tops & FORBIDDEN}"


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_only_pure_modules_of_the_house(path: Path) -> None:
    impure = {name for name in imports(path) if (m := module_path(name)) and not is_pure(m)}
    assert not impure, f"{path.relative_to(ROOT)} imports {impure}, which are not declared pure"


def test_the_cores_are_declared_pure() -> None:
    assert {str(p.relative_to(ROOT)) for p in PURE} >= CORES


def test_a_declared_module_that_opens_a_socket_is_caught(tmp_path: Path) -> None:
    """The control: the marker is read, and the check bites."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""A core."""\n\nimport socket\n\n__pure__ = True\n')
    assert is_pure(bad) and "socket" in imports(bad)
    bad.write_text('"""Not a core."""\n\n__pure__ = False\n')
    assert not is_pure(bad)
