"""``natlab demo`` and ``natlab bench``."""

from __future__ import annotations

import argparse


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the conformance suite on a fresh testbed and write reports/")
    p.add_argument("--out", default="reports", help="report folder (default reports/)")
    p.set_defaults(func=run_demo)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (not tests): nat")
    p.add_argument("what", choices=["nat"], help="nat: iperf3 through the NAT vs plain forwarding, connections/s")
    from conformance.bench import add_arguments

    add_arguments(p)
    p.set_defaults(func=run_bench)


def run_demo(args: argparse.Namespace) -> int:
    from conformance.runner import main as runner_main

    return runner_main(args)


def run_bench(args: argparse.Namespace) -> int:
    from conformance.bench import run

    return run(args)
