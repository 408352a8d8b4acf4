"""``natlab demo``, ``natlab bench`` and ``natlab fuzz``."""

from __future__ import annotations

import argparse
import importlib
import textwrap

# natlab bench WHAT -> (module, what it measures)
BENCHMARKS = {
    "nat": ("conformance.bench", "iperf3 through the NAT vs plain forwarding; new connections/s"),
    "leases": ("conformance.bench_leases", "lease operations/s (sans-IO and end to end); slow-path demux pps"),
    "ipsec": ("conformance.bench_ipsec", "iperf3 cleartext vs ESP/AH; sans-IO encrypt/decrypt pps"),
    "e2e": ("conformance.bench_e2e", "iperf3 over ESP through the extensible NAT vs no NAT; compensation us/packet"),
    "core": ("conformance.bench_core", "the agent's per-packet sans-IO core, us/packet (--baseline REV: side by side)"),
    "nat-core": ("conformance.bench_nat_core", "the controller's steps per new NAPT connection, sans-IO, as the table grows"),
    "compare": ("conformance.bench_compare", "the seed's method vs NAT-T (natlab's, strongSwan's) vs cleartext, side by side"),
    "ike": ("conformance.bench_ike", "IKEv2 IKE_SA + CHILD_SA setups/s per key-exchange group (sans-IO)"),
    "scale": ("conformance.bench_scale", "1..64 clients leasing and sending ESP at once: leases/s, table, controller, "
                                         "goodput, fast path, first protected packet"),
}


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the conformance suite on a fresh testbed and write reports/",
                       description="Build a fresh testbed, run every conformance scenario, and write reports/ "
                                   "(HTML, Markdown, CSV, and each run's evidence).", formatter_class=_DemoHelp)
    p.add_argument("--out", default="reports", help="report folder (default reports/)")
    p.add_argument("--only", type=scenario_names, metavar="NAME[,NAME]",
                   help="run only these scenarios (names below); the report's environment says which ran, and "
                        "behaviours no scenario of the run covered show as not implemented")
    p.set_defaults(func=run_demo)


def registered_names() -> list[str]:
    """The scenario names of the registry, in run order (importing them all takes about a second)."""
    from conformance.scenario import registered

    return [r.name for r in registered()]


def scenario_names(text: str) -> tuple[str, ...]:
    """``--only``'s value: registered scenario names, comma-separated; an unknown one is named, with the valid ones."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    valid = registered_names()
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        what = f"unknown scenario {', '.join(map(repr, unknown))}" if unknown else "no scenario named"
        raise argparse.ArgumentTypeError(f"{what} (valid: {', '.join(valid)})")
    return names


class _DemoHelp(argparse.HelpFormatter):
    """``natlab demo --help`` lists the scenarios; only when help is asked for, as the registry is slow to load."""

    def format_help(self) -> str:
        text = super().format_help()
        if "options:" not in text:  # a usage line for an error message, not the help
            return text
        names = textwrap.fill(", ".join(registered_names()), width=100, initial_indent="  ", subsequent_indent="  ",
                              break_on_hyphens=False)
        return f"{text}\nscenarios, in run order (for --only):\n{names}\n"


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
