"""``natlab bench leases``: a benchmark, not a test.

1. Lease operations per second in the sans-IO server: whole request frames
   through ``NatCore.packet_in`` (parse, decide, answer), no OpenFlow.
2. End to end: lease round trips per second from several hosts at once,
   through r1's packet-in and the os-ken controller.
3. Slow-path demultiplexing: ESP packets per second that the controller
   delivers by SPI when two clients share (ESP, global IP).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime

from conformance import apps
from conformance.bench import save_result
from conformance.scenarios.leases import ESP_DEF, ask, lease
from netwire.plan import GATEWAY_IP, R1_INSIDE_MAC, client_ip, server_ip
from topo.testbed import Testbed, TestbedError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=3, help="length of each timed part (default 3)")
    p.add_argument("--out", default="reports", help="where bench-leases.json goes (default reports/)")


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


def bench(seconds: float, log=print) -> dict:
    result = {"sans_io": sans_io_rate(seconds)}
    log(f"  sans-IO server: {result['sans_io']['per_second']:.0f} lease operations/s")
    with Testbed(clients=3, servers=1, globals=1) as tb:
        clients = [tb.host(f"h{i}") for i in (1, 2, 3)]
        ask(clients[0], "DEFINE", **ESP_DEF)
        floods = [h.popen([sys.executable, "-m", "conformance.probes", "lease-flood", h.IP(), "--seconds",
                           str(seconds)], stdout=-1, text=True) for h in clients]
        counts = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in floods]
        total = sum(c["operations"] for c in counts)
        result["end_to_end"] = {"hosts": len(clients), "operations": total, "per_second": total / seconds,
                                "per_host": counts}
        log(f"  end to end, {len(clients)} hosts at once: {total / seconds:.0f} lease operations/s")
        spis = [lease(h, 50)["info"]["global_gpn"] for h in clients[:2]]
        sink = clients[0].popen([sys.executable, "-m", "conformance.probes", "esp-count", "--seconds",
                                 str(seconds + 1)], stdout=-1, text=True)
        time.sleep(0.3)
        sent = apps.probe(tb.host("srv1"), "esp-flood", tb.table()["globals"][0], "--spi", spis[0],
                          "--seconds", seconds)
        received = json.loads(sink.communicate()[0].strip().splitlines()[-1])
        result["slow_path"] = {"sent": sent["sent"], "received": received["received"],
                               "per_second": received["received"] / seconds}
        log(f"  slow-path demultiplexing: {received['received'] / seconds:.0f} ESP packets/s delivered "
            f"({sent['sent']} sent)")
    return result


def run(args: argparse.Namespace) -> int:
    print(f"natlab bench leases: {args.seconds:.0f} s per part")
    try:
        result = bench(args.seconds)
    except TestbedError as exc:
        print(f"natlab bench: {exc}", file=sys.stderr)
        return 1
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"written to {save_result('leases', result, args.out)}")
    return 0
