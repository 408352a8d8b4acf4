"""Set-up shared by the live IKE tests: two agents keyed by IKE, and a web fetch across them.

Each test used to start the responder agent, then the initiator, wait for both CHILD_SAs, serve the
marker file and curl it, then stop both agents and check they exited cleanly: the same dozen lines.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from conformance import apps
from topo.natlab import server_ip


def wait_for_child(agent: AgentProcess, timeout: float = 15) -> dict:
    """Until the agent's status shows a negotiated CHILD_SA installed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads((agent.run_dir / "status.json").read_text())
        if (status.get("ike") or {}).get("children", 0) >= 1:
            return status
        time.sleep(0.2)
    raise AssertionError(f"no CHILD_SA within {timeout}s: {agent.log_tail()}")


@contextmanager
def ike_agents(h1, srv1, h1_config: Path, srv1_config: Path, folder: Path) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    """srv1's responder agent, then h1's initiator, each with its CHILD_SA up; (initiator, responder).

    Leaving the block normally stops both, each of which must exit 0; on an error they are stopped anyway."""
    with ExitStack() as stack:
        responder = stack.enter_context(AgentProcess(srv1, srv1_config, folder / "agent-srv1"))
        initiator = stack.enter_context(AgentProcess(h1, h1_config, folder / "agent-h1"))
        wait_for_child(initiator)
        wait_for_child(responder)
        yield initiator, responder
        assert all(apps.closes_acknowledged(host) for host in (h1, srv1)), "a TCP close was never acknowledged"
        for agent in (initiator, responder):
            assert agent.stop() == 0, agent.log_tail()


def fetch_marker(h1, srv1, www: Path) -> str:
    """Unmodified curl on h1 fetching srv1's marker file over whatever protects the path."""
    serve = [sys.executable, "-m", "http.server", "8000", "--bind", server_ip(1), "--directory", str(www)]
    with apps.Service(srv1, serve, settle=0.8):
        return h1.cmd(f"curl -s --max-time 10 http://{server_ip(1)}:8000/secret.txt")
