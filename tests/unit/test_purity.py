"""Sans-IO cores import no sockets, no os-ken, no Mininet (DESIGN.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"socket", "os_ken", "mininet", "subprocess", "select", "asyncio"}
PURE = [*sorted((ROOT / "netwire").glob("*.py")),
        *(ROOT / "nat_app" / n for n in ("config.py", "table.py", "ports.py", "decide.py", "translate.py",
                                        "neighbours.py", "messages.py", "savi.py", "lease_server.py",
                                        "allocate.py", "gpn.py", "client_alg.py", "state.py", "reconcile.py",
                                        "natpmp_server.py")),
        *(ROOT / "conformance" / n for n in ("fuzz.py", "marker.py", "portscan.py")),
        *sorted((ROOT / "client_agent" / "ipsec").glob("*.py"))]


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_does_no_io(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & FORBIDDEN, f"{path.name} imports {names & FORBIDDEN}"
