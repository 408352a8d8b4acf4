"""``natlab bench leases``: a benchmark, not a test.

1. Lease operations per second in the sans-IO server: whole request frames
   through ``NatCore.packet_in`` (parse, decide, answer), no OpenFlow.
2. End to end: lease round trips per second from several hosts at once,
   through r1's packet-in and the os-ken controller.
3. Demultiplexing by SPI with 1, 3 and 8 clients leasing ESP on one global IP
   toward one peer (srv1): ESP packets per second h1 receives of srv1's flood
   to h1's SPI. One client is the fast path (r1's flows); from two on the
   controller demultiplexes (the slow path).
4. The framework's ceiling in the same run, on the same switch and the same
   flood: the NAT controller stopped, a minimal os-ken app
   (``nat_app/ceiling_app.py``: packet-in -> PacketOut, nothing else) in its
   place; the slow path's rate over it is issue 16's ratio (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conformance import apps
from conformance.bench import save_result
from conformance.scenarios.leases import ESP_DEF, ask, lease
from netwire.plan import GATEWAY_IP, R1_INSIDE_MAC, R1_OUTSIDE_MAC, client_ip, server_ip
from topo.testbed import Testbed, TestbedError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=3, help="length of each timed part (default 3)")
    p.add_argument("--out", default="reports", help="where bench-leases.json goes (default reports/)")
    p.add_argument("--clients", default="1,3,8", help="client counts for the demultiplexing part (default 1,3,8)")


def sans_io_rate(seconds: float) -> dict:
    """Allocate + release cycles through NatCore.packet_in, counted as two operations each."""
    from nat_app.config import NatConfig
    from nat_app.decide import NatCore
    from netwire import pcp
    from netwire.ethernet import ETH_TYPE_IPV4, EthernetHeader
    from netwire.ipv4 import build_udp

    core = NatCore(NatConfig(lease_quota=10**6))
    core.switch_connected(0.0)

    eth = EthernetHeader(R1_INSIDE_MAC, "00:00:00:00:00:01", ETH_TYPE_IPV4).build()

    def frame(req) -> bytes:
        return eth + build_udp(client_ip(1), GATEWAY_IP, pcp.CLIENT_PORT, pcp.SERVER_PORT, pcp.encode_request(req))

    define = pcp.GpnDefinition(os.urandom(12), **ESP_DEF)
    core.packet_in(1, frame(pcp.Request(pcp.Opcode.DEFINE, 600, client_ip(1), define)), 0.0)
    nonce = os.urandom(12)
    ops, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        spi = 0x1000 + ops
        for lifetime in (600, 0):
            info = pcp.LeaseInfo(nonce, 50, spi, spi, None, server_ip(1))
            core.packet_in(1, frame(pcp.Request(pcp.Opcode.LEASE, lifetime, client_ip(1), info)), 1.0)
            ops += 1
    elapsed = time.perf_counter() - start
    return {"operations": ops, "seconds": round(elapsed, 2), "per_second": ops / elapsed}


def bench(seconds: float, counts: tuple[int, ...] = (1, 3, 8), log=print) -> dict:
    result: dict[str, Any] = {"sans_io": sans_io_rate(seconds)}
    log(f"  sans-IO server: {result['sans_io']['per_second']:.0f} lease operations/s")
    with Testbed(clients=max(3, *counts), servers=1, globals=1) as tb:
        clients = [tb.host(f"h{i}") for i in range(1, max(3, *counts) + 1)]
        ask(clients[0], "DEFINE", **ESP_DEF)
        result["end_to_end"] = lease_rate(clients[:3], seconds)
        log(f"  end to end, 3 hosts at once: {result['end_to_end']['per_second']:.0f} lease operations/s")
        result["demux"] = demux_by_clients(tb, clients, counts, seconds, log)
        result["ceiling"] = ceiling(tb, clients[0], seconds)
        log(f"  ceiling, a minimal os-ken app on r1 (packet-in -> PacketOut): {result['ceiling']['per_second']:.0f}"
            f" ESP packets/s delivered ({result['ceiling']['sent']} sent)")
    slow = [r for r in result["demux"] if r["path"] == "slow"]
    result["slow_over_ceiling"] = {str(r["clients"]): r["per_second"] / max(result["ceiling"]["per_second"], 1)
                                   for r in slow}
    result["slow_path"] = slow[0] if slow else None  # the figure the README quoted before (now: the fewest clients)
    log("  slow path / ceiling: " + ", ".join(f"{n} clients {v:.2f}" for n, v in result["slow_over_ceiling"].items())
        + " (goal >= 0.8)")
    return result


def lease_rate(hosts: list, seconds: float) -> dict:
    """Sequential LEASE round trips from each host at once, through r1's packet-in and the controller."""
    floods = [h.popen([sys.executable, "-m", "conformance.probes", "lease-flood", h.IP(), "--seconds",
                       str(seconds)], stdout=-1, text=True) for h in hosts]
    counts = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in floods]
    total = sum(c["operations"] for c in counts)
    return {"hosts": len(hosts), "operations": total, "per_second": total / seconds, "per_host": counts}


def demux_by_clients(tb: Testbed, clients: list, counts: tuple[int, ...], seconds: float, log=print) -> list[dict]:
    """For each count, that many clients hold an ESP lease toward srv1 on the one global IP; srv1 floods h1's SPI."""
    rows: list[dict] = []
    spi, leased = 0, 0
    for n in sorted(counts):
        for h in clients[leased:n]:
            answer = lease(h, 50)
            spi = int(answer["info"]["global_gpn"]) if h is clients[0] else spi
        leased = n
        path = "fast" if n == 1 else "slow"
        rows.append({"clients": n, "path": path, **flood_and_count(tb, clients[0], spi, seconds)})
        log(f"  demultiplexing, {n} client(s) on one global IP ({path} path): {rows[-1]['per_second']:.0f} ESP "
            f"packets/s delivered ({rows[-1]['sent']} sent)")
    return rows


def flood_and_count(tb: Testbed, receiver, spi: int, seconds: float) -> dict:
    """srv1 sends ESP with ``spi`` to the global IP as fast as it can; what ``receiver`` gets per second."""
    sink = receiver.popen([sys.executable, "-m", "conformance.probes", "esp-count", "--seconds",
                           str(seconds + 1)], stdout=-1, text=True)
    time.sleep(0.3)
    sent = apps.probe(tb.host("srv1"), "esp-flood", tb.table()["globals"][0], "--spi", spi, "--seconds", seconds)
    received = json.loads(sink.communicate()[0].strip().splitlines()[-1])
    return {"sent": sent["sent"], "received": received["received"], "per_second": received["received"] / seconds}


def ceiling(tb: Testbed, receiver, seconds: float) -> dict:
    """The NAT controller stopped, the minimal app in its place on r1's controller port; the same flood."""
    assert tb.controller is not None
    global_ip = tb.table()["globals"][0]
    srv1 = tb.host("srv1")
    srv1.cmd(f"ip neigh replace {global_ip} lladdr {R1_OUTSIDE_MAC} dev {srv1.defaultIntf()} nud permanent")
    tb.controller.stop()
    with tempfile.TemporaryDirectory(prefix="natlab-ceiling-") as tmp:
        ready = Path(tmp) / "ready"
        app = subprocess.Popen([sys.executable, "-m", "nat_app.ceiling_app", "--listen-port", str(tb.controller.port),
                                "--client-ip", receiver.IP(), "--client-mac", receiver.MAC(), "--ready", str(ready)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_for(ready, 30)
            return _ceiling_flood(srv1, global_ip, receiver, seconds)
        finally:
            app.terminate()
            app.wait(timeout=10)


def _ceiling_flood(srv1, global_ip: str, receiver, seconds: float) -> dict:
    sink = receiver.popen([sys.executable, "-m", "conformance.probes", "esp-count", "--seconds",
                           str(seconds + 1)], stdout=-1, text=True)
    time.sleep(0.3)
    sent = apps.probe(srv1, "esp-flood", global_ip, "--spi", 0x1000, "--seconds", seconds)
    received = json.loads(sink.communicate()[0].strip().splitlines()[-1])
    return {"sent": sent["sent"], "received": received["received"], "per_second": received["received"] / seconds}


def _wait_for(path: Path, timeout: float) -> None:
    """r1 reconnects with OVS's backoff (up to 8 s between tries)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TestbedError(f"r1 did not connect to the ceiling app within {timeout:.0f} s")
        time.sleep(0.2)


def run(args: argparse.Namespace) -> int:
    print(f"natlab bench leases: {args.seconds:.0f} s per part")
    try:
        result = bench(args.seconds, tuple(int(n) for n in args.clients.split(",")))
    except TestbedError as exc:
        print(f"natlab bench: {exc}", file=sys.stderr)
        return 1
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"written to {save_result('leases', result, args.out)}")
    return 0
