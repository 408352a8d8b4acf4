"""``natlab demo``, ``natlab bench`` and ``natlab fuzz``."""

from __future__ import annotations

import argparse
import importlib

# natlab bench WHAT -> (module, what it measures)
BENCHMARKS = {
    "nat": ("conformance.bench", "iperf3 through the NAT vs plain forwarding; new connections/s"),
    "leases": ("conformance.bench_leases", "lease operations/s (sans-IO and end to end); slow-path demux pps"),
    "ipsec": ("conformance.bench_ipsec", "iperf3 cleartext vs ESP/AH; sans-IO encrypt/decrypt pps"),
    "e2e": ("conformance.bench_e2e", "iperf3 over ESP through the extensible NAT vs no NAT; compensation us/packet"),
    "core": ("conformance.bench_core", "the agent's per-packet sans-IO core, us/packet (--baseline REV: side by side)"),
    "nat-core": ("conformance.bench_nat_core", "the controller's steps per new NAPT connection, sans-IO, as the table grows"),
    "ike": ("conformance.bench_ike", "IKEv2 IKE_SA + CHILD_SA setups/s per key-exchange group (sans-IO)"),
}


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the conformance suite on a fresh testbed and write reports/",
                       description="Build a fresh testbed, run every conformance scenario, and write reports/ "
                                   "(HTML, Markdown, CSV, and each run's evidence).")
    p.add_argument("--out", default="reports", help="report folder (default reports/)")
    p.set_defaults(func=run_demo)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (not tests): " + ", ".join(BENCHMARKS),
                       description="Benchmarks, not tests: each measures side by side in one run and prints ratios.")
    benches = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    for name, (module, what) in BENCHMARKS.items():
        b = benches.add_parser(name, help=what, description=what)
        importlib.import_module(module).add_arguments(b)
        b.set_defaults(func=lambda args, module=module: importlib.import_module(module).run(args))


def add_fuzz_parser(sub) -> None:
    p = sub.add_parser("fuzz", help="hostile lease frames and ESP/AH packets through the sans-IO cores (not a test)",
                       description="Lease frames from honest and forging hosts through NatCore, and malformed ESP/AH "
                                   "through the agent's inbound processing, with every invariant checked after each "
                                   "step. Exits 1 on any unhandled exception or broken invariant.")
    importlib.import_module("conformance.fuzz").add_arguments(p)
    p.set_defaults(func=lambda args: importlib.import_module("conformance.fuzz").run(args))


def run_demo(args: argparse.Namespace) -> int:
    from conformance.runner import main as runner_main

    return runner_main(args)
