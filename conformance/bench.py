"""``natlab bench nat``: a benchmark, not a test.

In one run on one testbed, alternating so that drift hits both sides alike:
iperf3 TCP h1 -> srv1 through the NAT, and through the same r1 turned into a
plain two-port L2 switch (the controller's bypass flows, with on-link routes
in h1 and srv1); then new TCP connections per second, each of whose first
packet takes the controller. Prints medians and ratios; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from conformance import apps
from conformance.environment import collect
from netwire.plan import client_ip, server_ip
from topo.testbed import Testbed, TestbedError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=5, help="length of each iperf3 run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="NAT/plain pairs of iperf3 runs (default 3)")
    p.add_argument("--out", default="reports", help="where bench-nat.json goes (default reports/)")


class PlainForwarding:
    """r1 as a plain L2 switch: bypass flows, and on-link routes so h1 and srv1 ARP for each other."""

    def __init__(self, testbed: Testbed, client, server) -> None:
        self.tb, self.client, self.server = testbed, client, server

    def __enter__(self):
        self.tb.set_bypass(True)
        self.client.cmd(f"ip route add {self.server.IP()}/32 dev {self.client.defaultIntf()}")
        self.server.cmd(f"ip route add {self.client.IP()}/32 dev {self.server.defaultIntf()}")
        return self

    def __exit__(self, *exc) -> None:
        self.client.cmd(f"ip route del {self.server.IP()}/32; ip neigh flush dev {self.client.defaultIntf()}")
        self.server.cmd(f"ip route del {self.client.IP()}/32; ip neigh flush dev {self.server.defaultIntf()}")
        if self.tb.controller is not None:  # an extensible testbed: r1 forwards by itself again
            self.tb.set_bypass(False)


def bench_nat(seconds: float = 5, rounds: int = 3, log=print) -> dict:
    with Testbed(clients=1, servers=1, globals=1) as tb:
        h1, srv1 = tb.host("h1"), tb.host("srv1")
        nat, plain = [], []
        with apps.iperf3_server(srv1, 5201):
            for r in range(1, rounds + 1):
                nat.append(apps.iperf3(h1, server_ip(1), seconds=seconds)["bps"])
                with PlainForwarding(tb, h1, srv1):
                    plain.append(apps.iperf3(h1, server_ip(1), seconds=seconds)["bps"])
                log(f"  round {r}/{rounds}: NAT {nat[-1] / 1e6:.0f} Mbit/s, plain {plain[-1] / 1e6:.0f} Mbit/s")
        cps = {}
        for mode in ("nat", "plain"):
            sink = srv1.popen([sys.executable, "-m", "conformance.probes", "tcp-sink", "7000", "--seconds", "6"])
            time.sleep(0.5)
            if mode == "plain":
                with PlainForwarding(tb, h1, srv1):
                    cps[mode] = apps.probe(h1, "connect-rate", server_ip(1), 7000, "--seconds", 3)
            else:
                before = (tb.table()["counters"], meter_drops())
                cps[mode] = apps.probe(h1, "connect-rate", server_ip(1), 7000, "--seconds", 3)
                cps[mode]["controller"] = per_connection(before, (tb.table()["counters"], meter_drops()),
                                                         cps[mode]["connections"])
            sink.wait()
            log(f"  new TCP connections/s ({mode}): {cps[mode]['per_second']:.0f}, {cps[mode]['failed']} failed"
                + (f"; per connection {cps[mode]['controller']}" if mode == "nat" else ""))
        packet_ins = tb.table()["counters"].get("packet_in", 0)
    result = {
        "command": "natlab bench nat " + " ".join(sys.argv[3:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "iperf3_tcp_bps": {"nat": nat, "plain": plain},
        "median_bps": {"nat": statistics.median(nat), "plain": statistics.median(plain)},
        "throughput_ratio": statistics.median(nat) / statistics.median(plain),
        "connections_per_second": {k: v["per_second"] for k, v in cps.items()},
        "connections_failed": {k: v["failed"] for k, v in cps.items()},  # a 2 s connect timeout each
        "connections_ratio": cps["nat"]["per_second"] / cps["plain"]["per_second"],
        "controller_per_connection": cps["nat"]["controller"],
        "controller_packet_ins": packet_ins,
        "path": f"{client_ip(1)} -> s1 -> r1 -> s2 -> {server_ip(1)}, OVS userspace datapath",
    }
    return result


def meter_drops() -> int:
    """Packets r1's meters dropped so far (the outside-miss meter also meters punted SYN, FIN and RST
    from outside: a connection's SYN-ACK and FIN are two of its packet-ins)."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "meter-stats", "r1"], capture_output=True, text=True).stdout
    return sum(int(n) for n in re.findall(r"\d+: packet_count:(\d+)", out))


def per_connection(before: tuple[dict, int], after: tuple[dict, int], connections: int) -> dict[str, float]:
    """What each new connection cost the controller: packet-ins, entries, phase changes, meter drops."""
    n = max(connections, 1)
    keys = ("packet_in", "entries_created", "tcp_established", "tcp_transitory")
    spent = {k: (after[0].get(k, 0) - before[0].get(k, 0)) / n for k in keys}
    return {**{k: round(v, 2) for k, v in spent.items()}, "meter_drops": round((after[1] - before[1]) / n, 2)}


def save_result(name: str, result: dict, out: str | Path) -> Path:
    """``<out>/bench-<name>.json``: the figures with the command that made them and the machine they ran on."""
    result.setdefault("command", f"natlab bench {name} " + " ".join(sys.argv[3:]))
    result["environment"] = collect()
    path = Path(out) / f"bench-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


def run(args: argparse.Namespace) -> int:
    print(f"natlab bench nat: {args.rounds} rounds of {args.seconds:.0f} s iperf3, NAT vs plain forwarding")
    try:
        result = bench_nat(args.seconds, args.rounds)
    except TestbedError as exc:
        print(f"natlab bench: {exc}", file=sys.stderr)
        return 1
    path = save_result("nat", result, args.out)
    m = result["median_bps"]
    print(f"iperf3 TCP h1->srv1, median of {args.rounds}: NAT {m['nat'] / 1e6:.0f} Mbit/s, "
          f"plain forwarding {m['plain'] / 1e6:.0f} Mbit/s, ratio {result['throughput_ratio']:.2f}")
    c = result["connections_per_second"]
    print(f"new TCP connections/s: NAT {c['nat']:.0f} (first packet via the controller), plain {c['plain']:.0f}, "
          f"ratio {result['connections_ratio']:.2f}")
    print(f"written to {path}")
    return 0
