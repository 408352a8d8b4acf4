"""The ``natlab`` command: one entry point, each subcommand registered by the package that implements it.

This is the only place that knows every package (the composition root); the testbed (``topo``) knows
neither the conformance suite nor this command."""

from __future__ import annotations

import argparse
import signal
import sys

from nat_app.cli import add_controller_parser, add_table_parser
from topo.launch import add_up_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natlab",
        description="Testbed and conformance suite for end-to-end IPsec through an extensible NAT. "
                    "Run as root.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_up_parser(sub)
    add_controller_parser(sub)
    add_table_parser(sub)
    from client_agent.lease_cli import add_lease_parser

    add_lease_parser(sub)
    from client_agent.agent_cli import add_agent_parser

    add_agent_parser(sub)
    from conformance.cli import add_bench_parser, add_demo_parser, add_fuzz_parser

    add_demo_parser(sub)
    add_bench_parser(sub)
    add_fuzz_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so a testbed being torn down leaves nothing behind.
    signal.signal(signal.SIGTERM, _terminate)
    return args.func(args) or 0


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
