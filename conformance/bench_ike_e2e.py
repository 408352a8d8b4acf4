"""``natlab bench ike --e2e``: the agent's start to its first protected packet, keyed by IKE vs by hand.

A benchmark, not a test. On one testbed (h1 behind the extensible NAT, srv1),
alternating rounds (IKE, manual, IKE, manual ...) so that drift hits both
alike, the ESP transport cell of the client matrix with one client: srv1's
agent and a UDP echo run first, then ``natlab agent`` starts in h1 and the
clock runs from its launch:

- ``running``: the agent says it is running (TUN, routes, every lease granted;
  keyed by IKE, IKE_SA_INIT has just been sent with the leased SPIi);
- ``child``: keyed by IKE, the agent wrote its first CHILD_SA's keys (the
  SA is in its SAD then); it comes within milliseconds of ``running``, which
  is read by polling, so the IKE exchange itself is timed from the agent's
  own log (``ike_setup``): from "leases granted" (IKE_SA_INIT goes out next,
  with the leased SPIi) to ChildEstablished, IKE_SA_INIT + IKE_AUTH through
  the NAT, the controller demultiplexing the answers by SPIi;
- ``first``: the first UDP datagram answered across the path, sent every
  10 ms from ``running`` on (the route into the TUN exists then, so any answer
  was protected both ways).

IKE's cost per agent is the difference of the medians of ``first``; setups
per second end to end, through the NAT, is one over the median of
``ike_setup`` (one initiator at a time).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from conformance.apps import Service
from conformance.keying import await_keys
from conformance.matrix import Cell, behind_nat, clients, ike_behind_nat
from topo.testbed import Testbed

CELL = Cell("esp", "transport")
ECHO_PORT = 9999  # outside the clients' leased blocks and the test ALG's port
KEYINGS = ("ike", "manual")


def one_round(tb: Testbed, keying: str, folder: Path) -> dict:
    """One agent start in h1, timed from its launch (seconds, wall clock of the machine)."""
    members = clients(1, 1)
    configs, peer = ike_behind_nat(CELL, members) if keying == "ike" else behind_nat(CELL, members)
    h1, srv1 = tb.host("h1"), tb.host(CELL.peer)
    echo = [sys.executable, "-m", "conformance.probes", "udp-echo", CELL.peer_ip, str(ECHO_PORT), "--seconds", "60"]
    with ExitStack() as stack:
        stack.enter_context(AgentProcess(srv1, peer, folder / "agent-srv1"))
        stack.enter_context(Service(srv1, echo, settle=0.3))
        launched = time.time()
        agent = stack.enter_context(AgentProcess(h1, configs[0], folder / "agent-h1"))
        running = time.time()
        probe = h1.popen([sys.executable, "-m", "conformance.probes", "first-reply", CELL.peer_ip, str(ECHO_PORT)],
                         stdout=subprocess.PIPE, text=True)
        child = None
        if keying == "ike":
            await_keys({"h1": agent.run_dir}, CELL.protocol, CELL.mode, CELL.peer_ip)
            child = (agent.run_dir / "esp_sa").stat().st_mtime
        out, _ = probe.communicate(timeout=30)
    first = json.loads(out.strip().splitlines()[-1])["first_reply"]
    return {"running": running - launched, "child": None if child is None else child - launched,
            "first": None if first is None else first - launched, "ike_setup": ike_setup(agent.log)}


def ike_setup(log: Path) -> float | None:
    """Seconds from the agent's "leases granted" to its first ChildEstablished, by its log's clock (ms)."""
    stamps: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        for key, needle in (("leased", " leases granted "), ("child", '"ChildEstablished"')):
            if needle in line and key not in stamps:
                stamps[key] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return round(stamps["child"] - stamps["leased"], 4) if len(stamps) == 2 else None


def e2e(rounds: int, workdir: Path, log=print) -> dict:
    """``rounds`` alternating rounds of each keying on a fresh testbed; the rounds and their medians."""
    figures: dict[str, list[dict]] = {k: [] for k in KEYINGS}
    with Testbed(clients=1, servers=1, globals=1, workdir=workdir / "testbed") as tb:
        for i in range(rounds):
            for keying in KEYINGS:
                figure = one_round(tb, keying, workdir / f"{keying}-{i}")
                figures[keying].append(figure)
                log(f"  round {i + 1} {keying:6s} " + ", ".join(f"{k} {v:.3f} s" for k, v in figure.items()
                                                                if v is not None))
    medians = {k: {m: _median([f[m] for f in rows]) for m in ("running", "child", "first", "ike_setup")}
               for k, rows in figures.items()}
    return {"rounds": figures, "medians": medians, **_derived(medians)}


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 4) if known else None


def _derived(medians: dict) -> dict:
    """IKE's cost per agent (first packet, IKE minus manual) and end-to-end setups/s (1 / the IKE exchange)."""
    ike, manual = medians["ike"], medians["manual"]
    cost = None if ike["first"] is None or manual["first"] is None else round(ike["first"] - manual["first"], 3)
    setup = ike.get("ike_setup")
    return {"ike_cost_s": cost, "e2e_setups_per_s": None if not setup or setup <= 0 else round(1 / setup, 1)}
