"""``natlab bench core``: the agent's per-packet sans-IO core, timed; a benchmark, not a test.

Microseconds per 1400-byte packet (best of several timeit runs, the rest
is noise) of what the agent does to each packet behind the extensible NAT,
built as the agent builds it (:func:`client_agent.agent.traversal_of`,
:func:`client_agent.agent_config.databases`): compensation each way
(``Traversal.before_protect``/``after_unprotect``), ESP AES-GCM-128
``encapsulate``/``decapsulate``, and the whole RFC 4301 path each way
(``processing.outbound``: SPD, compensation, ESP; ``processing.inbound``:
SAD, ESP, compensation, SPD), for TCP and UDP. The issue's goal: compensation
at most 1 us and at most a third of encapsulation.

``--baseline REV`` measures a git revision of this checkout too (extracted
with ``git archive``), alternating rounds with the current tree in fresh
processes, so both see the same machine; it prints each figure's ratio
(baseline / current: how many times faster the current tree is). The
measuring code is this file, run in either tree, so it must use only APIs
both have.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = 1400
REPEAT = 7  # timeit repetitions per figure; the minimum is kept
BATCH = 512  # inbound packets need fresh sequence numbers: one batch through a fresh SAD per call
FIGURES = ("before_protect", "encapsulate", "outbound", "decapsulate", "after_unprotect", "inbound")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", metavar="REV", help="also measure this git revision, alternating (e.g. main)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline (default 3)")
    p.add_argument("--budget", type=float, default=0.05, help="seconds per timeit run (default 0.05)")
    p.add_argument("--out", default="reports", help="where bench-core.json goes (default reports/)")


def measure(budget: float = 0.05) -> dict[str, dict[str, float]]:
    """{protocol: {figure: us per packet}} for TCP and UDP; uses only APIs the baseline has too."""
    from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP

    return {name: _figures(protocol, budget) for name, protocol in (("tcp", IPPROTO_TCP), ("udp", IPPROTO_UDP))}


def _figures(protocol: int, budget: float) -> dict[str, float]:
    from client_agent.agent import traversal_of
    from client_agent.agent_config import OUTBOUND, databases
    from client_agent.ipsec.processing import decapsulate, encapsulate, inbound, outbound
    from client_agent.ipsec.sa import SAState
    from conformance.bench_e2e import CELL, IPERF_PORT, PRIVATE_PORT, transport_packet, with_destination
    from conformance.matrix import behind_nat, clients
    from topo.natlab import server_ip

    (client,), peer = behind_nat(CELL, clients(1, 1))
    if client.address is None or client.nat is None:
        raise ValueError(f"bench_core: client {client.name} behind the NAT needs an address and a [nat] table")
    address, global_ip = client.address, client.nat.global_ip
    traversal = traversal_of(client)
    sad, spd = databases(client)
    sent = next(p.outbound for p in spd.policies if p.outbound is not None)
    received = next(p.inbound for p in spd.policies if p.inbound is not None)
    peer_sends = SAState(next(s.sa for s in peer.sas if s.direction == OUTBOUND))
    private = transport_packet(protocol, address, server_ip(1), PRIVATE_PORT, IPERF_PORT, SIZE)
    compensated = traversal.before_protect(private, sent)
    global_port = int.from_bytes(compensated[20:22], "big")
    from_srv1 = transport_packet(protocol, server_ip(1), global_ip, IPERF_PORT, global_port, SIZE)
    arriving = with_destination(from_srv1, address)
    wire = [with_destination(encapsulate(from_srv1, peer_sends), address) for _ in range(BATCH)]
    icv_src, before, icv_dst, after = traversal.icv_src, traversal.before_protect, traversal.icv_dst, traversal.after_unprotect

    def unprotect(whole: bool) -> Callable[[], None]:
        def run() -> None:
            received.window.top = received.window.bitmap = 0  # the batch's sequence numbers are new again
            for packet in wire:
                if whole:
                    inbound(packet, sad, spd, icv_dst=icv_dst, after=after)
                else:
                    decapsulate(packet, sad, icv_dst=traversal.icv_dst)
        return run

    us = {
        "before_protect": _us(lambda: traversal.before_protect(private, sent), budget),
        "encapsulate": _us(lambda: encapsulate(compensated, sent), budget),
        "outbound": _us(lambda: outbound(private, spd, icv_src=icv_src, before=before), budget),
        "decapsulate": _us(unprotect(False), budget) / BATCH,
        "after_unprotect": _us(lambda: traversal.after_unprotect(arriving, received), budget),
        "inbound": _us(unprotect(True), budget) / BATCH,
    }
    return {k: round(v, 3) for k, v in us.items()}


def _us(call: Callable[[], object], budget: float) -> float:
    """Best of :data:`REPEAT` timeit runs of about ``budget`` seconds, in microseconds of this process's CPU per call.

    CPU time, not wall time: on a 2-core machine shared with other work the
    wall clock counts the time others held the core.
    """
    timer = timeit.Timer(call, timer=time.process_time)
    number, elapsed = timer.autorange()
    number = max(1, round(number * budget / max(elapsed, 1e-9)))
    return min(timer.repeat(REPEAT, number)) / number * 1e6


def measure_in(tree: Path, budget: float) -> dict[str, dict[str, float]]:
    """:func:`measure` in a fresh interpreter whose imports resolve to ``tree`` (its working directory)."""
    code = (f"import json, runpy; m = runpy.run_path({str(Path(__file__).resolve())!r}, run_name='bench_core')"
            f"['measure']; print(json.dumps(m({budget!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The minimum of each figure over the rounds."""
    return {proto: {fig: min(r[proto][fig] for r in rounds) for fig in rounds[0][proto]} for proto in rounds[0]}


def compare(baseline: str, rounds: int, budget: float, log=print) -> dict:
    """Alternate :func:`measure_in` the baseline revision and this tree; the best of each, and their ratios."""
    runs: dict[str, list] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="natlab-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        for r in range(1, rounds + 1):
            runs["baseline"].append(measure_in(Path(tmp), budget))
            runs["current"].append(measure_in(ROOT, budget))
            log(f"  round {r}/{rounds} done")
    base, cur = best(runs["baseline"]), best(runs["current"])
    ratio = {p: {f: round(base[p][f] / cur[p][f], 2) for f in cur[p]} for p in cur}
    return {"baseline": baseline, "us_per_packet": {"baseline": base, "current": cur}, "speedup": ratio,
            "rounds": runs}


def goals(us: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Compensation against the issue's goals: microseconds, and its share of encapsulation / decapsulation."""
    return {p: {"compensation_out_us": f["before_protect"], "compensation_in_us": f["after_unprotect"],
                "out_over_encapsulate": round(f["before_protect"] / f["encapsulate"], 3),
                "in_over_decapsulate": round(f["after_unprotect"] / f["decapsulate"], 3)} for p, f in us.items()}


def format_table(result: dict) -> str:
    lines = [f"sans-IO core, one {SIZE}-byte packet, ESP AES-GCM-128 transport behind the extensible NAT "
             f"(us per packet, best of {REPEAT} x {result['rounds_run']} round(s))"]
    columns = result["us_per_packet"]
    lines.append(f"  {'':5s} {'figure':16s} " + " ".join(f"{c:>9s}" for c in columns)
                 + ("   speedup" if "speedup" in result else ""))
    for proto in columns["current"]:
        for fig in FIGURES:
            row = " ".join(f"{columns[c][proto][fig]:9.2f}" for c in columns)
            speed = f"   {result['speedup'][proto][fig]:6.2f}x" if "speedup" in result else ""
            lines.append(f"  {proto:5s} {fig:16s} {row}{speed}")
    for proto, g in result["goals"].items():
        lines.append(f"  {proto}: compensation out {g['compensation_out_us']:.2f} us "
                     f"({g['out_over_encapsulate']:.0%} of encapsulate), in {g['compensation_in_us']:.2f} us "
                     f"({g['in_over_decapsulate']:.0%} of decapsulate); goal <= 1 us and <= 33%")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from conformance.bench import save_result

    if args.baseline:
        print(f"natlab bench core: {args.rounds} alternating rounds, {args.baseline} vs this tree")
        result = compare(args.baseline, args.rounds, args.budget)
        result["rounds_run"] = args.rounds
    else:
        result = {"us_per_packet": {"current": measure(args.budget)}, "rounds_run": 1}
    result["goals"] = goals(result["us_per_packet"]["current"])
    table = format_table(result)
    print(table)
    path = save_result("core", result, args.out)
    path.with_suffix(".txt").write_text(table + "\n")
    print(f"written to {path}")
    return 0
