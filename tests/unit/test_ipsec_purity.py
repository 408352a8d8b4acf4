"""The IPsec core is sans-IO: no sockets, files, clocks, scapy, os-ken or Mininet (DESIGN.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import client_agent.ipsec

PACKAGE = Path(client_agent.ipsec.__file__).parent
FORBIDDEN_IMPORTS = {"socket", "select", "selectors", "asyncio", "subprocess", "time", "scapy", "os_ken", "mininet"}
FORBIDDEN_CALLS = {"open"}
NOT_CORE = {"bench.py"}  # times loops on purpose; it is not on the datapath


def core_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*.py") if p.name not in NOT_CORE)


def test_core_modules_import_no_io_or_clock() -> None:
    for path in core_modules():
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & FORBIDDEN_IMPORTS, f"{path.name} imports {imported & FORBIDDEN_IMPORTS}"
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not called & FORBIDDEN_CALLS, f"{path.name} calls {called & FORBIDDEN_CALLS}"


def test_importing_the_package_pulls_in_no_network_stack() -> None:
    names = ", ".join(f"client_agent.ipsec.{p.stem}" for p in core_modules() if p.stem != "__init__")
    code = (
        f"import sys, client_agent.ipsec, {names}\n"
        "print(sorted(m for m in ('socket', 'scapy', 'os_ken', 'mininet') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
