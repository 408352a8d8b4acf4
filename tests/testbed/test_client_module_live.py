"""Module 109 end to end with three clients on TWO global IPs (the demo shares one): every matrix cell.

h1 and h3 share 203.0.113.1, h2 is alone on 203.0.113.2, all at once, with
unmodified curl, iperf3 (TCP, UDP) and nc (TCP, UDP through the test ALG), to
srv1 in transport mode and to ih1 behind sgw1 in tunnel mode. The same judges
as the conformance report (conformance.scenarios.client) must pass every
behaviour; afterwards the agents have released every lease and left nothing
in their hosts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.context import Context
from conformance.matrix import CELLS, clients
from conformance.scenarios.client import judge_cell, read_views, run_cell


@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
def test_three_clients_on_two_global_ips(make_testbed, tmp_path: Path, cell) -> None:
    tb = make_testbed(clients=3, servers=1, globals=2)
    members = clients(3, 2)
    assert {c.global_ip for c in members} == {"203.0.113.1", "203.0.113.2"}
    ctx = Context(tb, tmp_path)
    with ctx.recorded(cell.name) as rec:
        run = run_cell(ctx, cell, members, rec.folder)
    results = judge_cell(rec, run, read_views(run))
    failed = [f"{r.behaviour} {r.scenario}: {r.reason}" for r in results if r.verdict != "pass"]
    assert not failed, "\n".join(failed)
    assert len({r.behaviour for r in results}) >= 9
    leftover = [e for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG"]
    assert not leftover, f"leases not released: {leftover[:3]}"
    for c in members:
        host = tb.host(c.name)
        assert "ipsec0" not in host.cmd("ip -o link") and "fwmark" not in host.cmd("ip rule")
