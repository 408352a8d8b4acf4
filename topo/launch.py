"""``natlab up``: OVS, the controller, the network, and the Mininet CLI."""

from __future__ import annotations

import argparse
import sys

from nat_app.config import DEFAULT_CONTROL_SOCKET
from topo.natlab import LIMITS, NAT_KINDS
from topo.testbed import Testbed, TestbedError


def add_up_parser(sub) -> None:
    p = sub.add_parser("up", help="start the testbed and open the Mininet CLI",
                       description="Start Open vSwitch if needed, the NAT controller and the Mininet testbed, "
                                   "then open the Mininet CLI. Leaving the CLI (exit, Ctrl-D), Ctrl-C or an "
                                   "error stops everything and leaves nothing behind.")
    for name, default, what in (("clients", 3, "private hosts h1..hN"), ("servers", 2, "servers srv1..srvM"),
                                ("globals", 2, "global addresses 203.0.113.1..k")):
        low, high = LIMITS[name]
        p.add_argument(f"--{name}", type=int, default=default, help=f"{what} ({low}..{high}, default {default})")
    p.add_argument("--bw", type=float, help="rate limit of the access link r1-s2 in Mbit/s (HTB)")
    p.add_argument("--nat", choices=NAT_KINDS, default="extensible",
                   help="r1: the extensible NAT (OpenFlow + controller, default) or a classic Linux "
                        "masquerade (RFC 3022, nftables, no controller) as a control")
    p.add_argument("--script", help="run these Mininet CLI commands (one a line) and stop, instead of the CLI")
    p.add_argument("--workdir", help="where the controller log goes (default: a new temporary folder)")
    p.set_defaults(func=run_up)


def run_up(args: argparse.Namespace) -> int:
    from mininet.cli import CLI

    try:
        classic = args.nat == "classic"
        testbed = Testbed(clients=args.clients, servers=args.servers, globals=args.globals, bw=args.bw,
                          workdir=args.workdir, control_socket=None if classic else DEFAULT_CONTROL_SOCKET,
                          log_level="info", nat=args.nat)
        with testbed:
            print(f"natlab: testbed up. {_nat_hint(testbed)} Try: h1 curl http://203.0.113.100:8000/ (after "
                  "`srv1 python3 -m http.server &`), h1 ping -c3 srv1.")
            CLI(testbed.net, script=args.script)
    except (TestbedError, ValueError) as exc:
        print(f"natlab up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("natlab up: interrupted; testbed stopped", file=sys.stderr)
        return 130
    return 0


def _nat_hint(testbed: Testbed) -> str:
    """Where to look at the NAT's state: the controller's table, or r1's conntrack rules."""
    if testbed.controller is None:
        return "r1 is a classic NAT (nftables masquerade, no controller): `r1 nft list ruleset`."
    return f"Controller log: {testbed.controller.log}. In another shell: `natlab table`."
