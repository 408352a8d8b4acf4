"""Module 109 when the NAT loses its state (CL-RENEW after a controller restart with its database gone).

The demo's conformance run (test_launchers) is the live test of every matrix
cell (three clients on one global IP) and, through its CTRL-NOVERIFY control,
of the AH transport cell on two global IPs (h1 and h3 share one, h2 is alone;
every judge but IN-AH must pass there).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from conformance import apps
from conformance.matrix import CELLS, behind_nat, clients


def test_agents_lease_again_within_5_s_of_the_announce_when_the_nat_lost_its_state(make_testbed,
                                                                                   tmp_path: Path) -> None:
    """Issue 9 (b), FIG. 8 / CL-RENEW: the controller is killed and its state database deleted; the
    restarted NAT starts empty, multicasts PCP ANNOUNCE (RFC 6887 14.1.3), and the agent, whose leases
    are far from their renewal point, sees the epoch (8.5), defines ESP again and leases everything
    again within 5 s; curl works again. A fresh testbed and its own leases: nothing from earlier tests."""
    tb = make_testbed(clients=1, servers=1, globals=1)
    cell = CELLS[0]
    configs, peer = behind_nat(cell, clients(1, 1), lifetime=600)  # no renewal due during the test
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    url = f"http://{cell.target[1]}:8000/"
    with ExitStack() as stack:
        stack.enter_context(AgentProcess(srv1, peer, tmp_path / "agent-srv1"))
        agent = stack.enter_context(AgentProcess(h1, configs[0], tmp_path / "agent-h1"))
        stack.enter_context(apps.http_server(srv1, cell.target[1]))
        assert apps.curl(h1, url) == 200
        wanted = agent.refresh()["leases"]["wanted"]
        tb.controller.restart(kill=True, lose_state=True)
        ready_at = time.monotonic()
        assert "started empty" in tb.table()["state"]
        while time.monotonic() < ready_at + 5:
            leases = agent.refresh()["leases"]
            leased = len([e for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG"])
            if leases["counters"].get("nat_restarts") and leases["ready"] and leased == wanted:
                break  # the agent's own "ready" still counts the leases it held before: the NAT's table decides
            time.sleep(0.2)
        took = time.monotonic() - ready_at
        print(f"re-leased {leases['wanted']} leases {took:.2f} s after the restarted controller was ready")
        assert leases["counters"].get("nat_restarts") == 1 and leases["ready"], leases
        assert took <= 5, f"leased again {took:.1f} s after the restart"
        assert len([e for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG"]) == wanted
        assert apps.curl(h1, url) == 200
