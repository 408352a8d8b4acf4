"""``natlab bench ike``: IKE_SA + CHILD_SA setups per second with natlab's IKEv2 (a benchmark, not a test).

Sans-IO: initiator and responder endpoints in one process, no sockets, each
key-exchange group side by side in one run (the ratio between groups is the
figure that travels between machines). With ``--e2e`` (root, the testbed):
the time from ``natlab agent`` start to its first protected packet through
the extensible NAT, keyed by IKE and by hand side by side, and IKE setups per
second end to end (:mod:`conformance.bench_ike_e2e`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

from client_agent.ike.config import IkeConfig
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ike.events import ChildEstablished

GROUPS = {"modp2048": "aes128-sha256-modp2048", "ecp256": "aes128-sha256-ecp256", "x25519": "aes128-sha256-x25519"}
LEFT, RIGHT = ("10.0.0.1", 500), ("203.0.113.100", 500)


def sans_io_setups(ike: str, seconds: float) -> dict:
    """IKE_SA_INIT + IKE_AUTH (with its CHILD_SA) between two in-memory endpoints, as many as fit."""
    build = functools.partial(IkeConfig.build, psk="bench pre-shared key", ike=(ike,), esp=("aes128gcm16",))
    left = build(local_id="h1.natlab", local_ts=("10.0.0.1",), remote_ts=("203.0.113.100",))
    right = build(local_id="srv1.natlab", local_ts=("203.0.113.100",), remote_ts=("10.0.0.0/24",))
    a, b = IkeEndpoint(None, LEFT), IkeEndpoint(right, RIGHT, cookie_threshold=10**9)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a.initiate(left, RIGHT, 0.0)
        for _ in range(4):
            for data, _ in a.datagrams_to_send():
                b.receive_datagram(data, LEFT, 0.0)
            for data, _ in b.datagrams_to_send():
                a.receive_datagram(data, RIGHT, 0.0)
        done += sum(isinstance(e, ChildEstablished) for _, e in a.next_events())
        b.next_events()
        a.sessions.clear()
        b.sessions.clear()
    elapsed = time.perf_counter() - start
    return {"setups": done, "seconds": round(elapsed, 3), "per_second": round(done / elapsed, 1)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=2, help="timing of each sans-IO figure (default 2)")
    p.add_argument("--out", default="reports", help="where bench-ike.json goes (default reports/)")
    p.add_argument("--e2e", type=int, default=0, metavar="ROUNDS",
                   help="also ROUNDS alternating rounds end to end on the testbed (root; default 0: sans-IO only)")


def run(args: argparse.Namespace) -> int:
    result: dict = {"command": "natlab bench ike " + " ".join(sys.argv[3:]), "sans_io": {}}
    print(f"natlab bench ike: sans-IO IKE_SA + CHILD_SA setups, {args.seconds:.0f} s per group, side by side")
    for name, ike in GROUPS.items():
        figure = sans_io_setups(ike, args.seconds)
        result["sans_io"][name] = figure
        print(f"  {name:9s} {figure['per_second']:8.1f} setups/s ({figure['setups']} in {figure['seconds']} s)")
    base = result["sans_io"]["modp2048"]["per_second"]
    for name in ("ecp256", "x25519"):
        print(f"  ratio {name}/modp2048: {result['sans_io'][name]['per_second'] / base:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.e2e:
        result["e2e"] = _e2e(args.e2e, out)
    (out / "bench-ike.json").write_text(json.dumps(result, indent=2))
    print(f"written {out / 'bench-ike.json'}")
    return 0


def _e2e(rounds: int, out: Path) -> dict:
    from conformance.bench_ike_e2e import e2e

    print(f"natlab bench ike: end to end through the extensible NAT, {rounds} alternating rounds "
          "(seconds from the agent's launch)")
    figure = e2e(rounds, out / "bench-ike-e2e")
    for keying, m in figure["medians"].items():
        print(f"  median {keying:6s} running {m['running']} s, CHILD_SA {m['child']} s, first packet {m['first']} s"
              + (f", IKE exchange {m['ike_setup']} s" if m["ike_setup"] is not None else ""))
    print(f"  IKE's cost per agent (first packet, IKE - manual): {figure['ike_cost_s']} s; "
          f"IKE_SA + CHILD_SA setups/s end to end: {figure['e2e_setups_per_s']}")
    return figure
