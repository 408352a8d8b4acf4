"""``natlab bench nat-core``: where a new NAPT connection's first packet spends its time in the controller,
without OVS; a benchmark, not a test.

Each new TCP connection's SYN reaches the controller as a packet-in; the os-ken
shell (``nat_app/app.py``) then runs, in this order: ``NatCore.packet_in``
(parse, decide: an entry, two flows, a PacketOut), the state journal's
change detection (``state.Journal.changes``) and one SQLite transaction
(``Store.write``, when the controller keeps state, as the testbed's does),
and the conversion of each message into an os-ken OpenFlow message and its
serialisation. This benchmark runs those same steps on SYNs of new
connections (one private host, one server, new source ports) while the
table grows, and reports microseconds per connection for each step at
several table sizes: the controller's own cost per new connection, and how
it grows. What it leaves out is os-ken's event loop and the socket to r1.

``--baseline REV`` runs the same steps in a git revision of this checkout too
(``git archive``, a fresh interpreter per round, alternating with this tree,
as ``natlab bench core`` does), and prints both side by side with the ratio
of their totals (baseline / current: how many times cheaper a connection is
now). The measuring code is this file, run in either tree, so it uses only
APIs both have.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nat_app.messages import Message

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("decide", "journal", "store", "openflow")
# "openflow": the messages as the shell sends them (nat_app.ofwire, os-ken for the rest); "os-ken": the same
# messages built and serialised by os-ken, as the shell did before ofwire (not part of the total)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=int, default=4000, help="new connections in all (default 4000)")
    p.add_argument("--window", type=int, default=200, help="connections averaged per reported row (default 200)")
    p.add_argument("--table", type=int, default=100_000, help="entries for the table-scale figures (default 100000)")
    p.add_argument("--out", default="reports", help="where bench-nat-core.json goes (default reports/)")
    p.add_argument("--baseline", metavar="REV", help="also run a git revision's controller steps, alternating (e.g. main)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds with --baseline (default 2)")


class _Datapath:
    """What os-ken's message classes need of a datapath to serialise: the protocol modules."""

    def __init__(self) -> None:
        from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

        self.ofproto, self.ofproto_parser = ofproto_v1_3, ofproto_v1_3_parser


def syn(eth: bytes, src: str, dst: str, sport: int, dport: int) -> bytes:
    """An Ethernet frame with a TCP SYN (checksums right)."""
    from netwire.checksum import internet_checksum, ip_bytes, pseudo_header_sum
    from netwire.ipv4 import IPPROTO_TCP, build_ipv4_header

    tcp = bytearray(sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (1).to_bytes(4, "big") + bytes(4)
                    + bytes([5 << 4, 0x02]) + (64240).to_bytes(2, "big") + bytes(4))
    tcp[16:18] = internet_checksum(bytes(tcp), pseudo_header_sum(ip_bytes(src), ip_bytes(dst), IPPROTO_TCP,
                                                                 len(tcp))).to_bytes(2, "big")
    return eth + build_ipv4_header(src=src, dst=dst, protocol=IPPROTO_TCP, payload_len=len(tcp)) + bytes(tcp)


def first_packets(connections: int, window: int, state_dir: Path) -> list[dict]:
    """Per ``window`` connections: the table's size and mean microseconds of each step (:data:`STEPS`)."""
    from nat_app import ofwire
    from nat_app.config import NatConfig
    from nat_app.decide import NatCore
    from nat_app.state import Journal
    from nat_app.store import StateLost, Store
    from netwire.ethernet import ETH_TYPE_IPV4, EthernetHeader
    from topo.natlab import client_ip, server_ip

    config = NatConfig(napt_ports_per_host=65535)
    core, journal, dp = NatCore(config), Journal(), _Datapath()
    store = Store(state_dir / "state.db")
    with contextlib.suppress(StateLost):  # a new file: made, ready for saves
        store.load()
    core.switch_connected(0.0)
    core.neighbours.learn(server_ip(1), "00:00:00:00:01:00")
    eth = EthernetHeader("02:4e:41:54:00:01", "00:00:00:00:00:01", ETH_TYPE_IPV4).build()
    rows, totals = [], dict.fromkeys((*STEPS, "os-ken"), 0.0)
    for i in range(connections):
        frame, now = syn(eth, client_ip(1), server_ip(1), 1024 + i, 80), 1.0 + i * 1e-3
        t0 = time.perf_counter()
        messages = core.packet_in(config.inside_port, frame, now)
        t1 = time.perf_counter()
        upserts, deletes = journal.changes(core)
        t2 = time.perf_counter()
        store.write(upserts, deletes)
        t3 = time.perf_counter()
        for message in messages:
            if ofwire.encode(message, i) is None:
                _os_ken(dp, message, i)
        t4 = time.perf_counter()
        for message in messages:
            _os_ken(dp, message, i)
        t5 = time.perf_counter()
        for step, spent in zip((*STEPS, "os-ken"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            totals[step] += spent
        if (i + 1) % window == 0:
            rows.append({"entries": len(core.table), **{s: round(t / window * 1e6, 1) for s, t in totals.items()}})
            totals = dict.fromkeys((*STEPS, "os-ken"), 0.0)
    store.close()
    return rows


def table_scale(entries: int, lookups: int = 200_000) -> dict:
    """The translation table (FIG. 6) with ``entries`` NAPT entries (64 private hosts, two global IPs, four
    servers): memory per entry (tracemalloc, the table's indexes included) and lookups per second each way."""
    import random
    import tracemalloc

    from nat_app.table import DataPath, EntryKind, TranslationTable
    from netwire.ipv4 import IPPROTO_TCP
    from topo.natlab import client_ip, global_ips, server_ip

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table, keys, globs = TranslationTable(), [], global_ips(2)
    for i in range(entries):
        private, port, foreign = client_ip(1 + i % 64), 1024 + i // 64, server_ip(1 + i % 4)
        glob, gport = globs[i % 2], 1024 + i // 2
        table.add(kind=EntryKind.NAT_ALG, protocol=IPPROTO_TCP, private_ip=private, private_gpn=port,
                  global_ip=glob, global_gpn=gport, foreign=foreign, now=0.0, path=DataPath.FAST)
        keys.append(((IPPROTO_TCP, private, port, foreign), (IPPROTO_TCP, glob, gport, foreign)))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    sample = [random.choice(keys) for _ in range(lookups)]
    rates = {}
    for way, lookup, index in (("out", table.lookup_out, 0), ("in", table.lookup_in, 1)):
        start = time.process_time()
        found = sum(lookup(*k[index]) is not None for k in sample)
        rates[way] = round(lookups / (time.process_time() - start))
        assert found == lookups
    return {"entries": len(table), "bytes_per_entry": round(used / entries), "lookups_per_second": rates}


def slow_path(clients: int = 3, packets: int = 20_000) -> dict:
    """The slow path, sans-IO: CPU microseconds to demultiplex one inbound ESP packet by its SPI
    (``NatCore.packet_in``; ``clients`` hosts lease ESP toward srv1 on the one global IP, so no flow can)
    and to pack its PacketOut (``ofwire``): the controller's own share of ``natlab bench leases``'s rate."""
    from nat_app import ofwire

    core, frame = _shared_esp(clients)
    outside = core.config.outside_port
    assert len(core.packet_in(outside, frame, 2.0)) == 1  # delivered, by the controller
    start = time.process_time()
    for i in range(packets):
        for message in core.packet_in(outside, frame, 2.0):
            ofwire.encode(message, i)
    spent = (time.process_time() - start) / packets
    return {"clients": clients, "us_per_packet": round(spent * 1e6, 1), "packets_per_second": round(1 / spent)}


def _shared_esp(clients: int):
    """A core whose ``clients`` hosts each hold an ESP lease toward srv1 on one global IP, and an ESP
    frame from srv1 to the first one's SPI."""
    from nat_app.config import NatConfig, global_pool
    from nat_app.decide import NatCore
    from netwire import pcp
    from netwire.ethernet import ETH_TYPE_IPV4, EthernetHeader
    from netwire.ipv4 import IPPROTO_ESP, build_ipv4_header, build_udp
    from netwire.plan import GATEWAY_IP, R1_INSIDE_MAC, R1_OUTSIDE_MAC, client_ip, server_ip

    core = NatCore(NatConfig(globals=global_pool(1)))
    core.switch_connected(0.0)
    core.neighbours.learn(server_ip(1), "00:00:00:00:01:00")
    for i in range(1, clients + 1):
        mac = f"00:00:00:00:00:{i:02x}"
        core.neighbours.learn(client_ip(i), mac)
        info = pcp.LeaseInfo(bytes([i]) * 12, IPPROTO_ESP, None, None, None, server_ip(1))
        request = pcp.encode_request(pcp.Request(pcp.Opcode.LEASE, 600, client_ip(i), info))
        eth = EthernetHeader(R1_INSIDE_MAC, mac, ETH_TYPE_IPV4).build()
        lease = eth + build_udp(client_ip(i), GATEWAY_IP, pcp.CLIENT_PORT, pcp.SERVER_PORT, request)
        core.packet_in(core.config.inside_port, lease, 1.0)
    first = next(e for e in core.table if e.private_ip == client_ip(1))
    esp = int(first.global_gpn or 0).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(56)
    eth = EthernetHeader(R1_OUTSIDE_MAC, "00:00:00:00:01:00", ETH_TYPE_IPV4).build()
    return core, eth + build_ipv4_header(src=server_ip(1), dst=first.global_ip, protocol=IPPROTO_ESP,
                                         payload_len=len(esp)) + esp


def flow_stats_parse(flows: int = 300) -> dict:
    """os-ken parsing one flow-stats reply part of ``flows`` NAPT translation flows (as r1 sends them to
    the app's periodic read of its fast-path counters, ``nat_app/app.py``): microseconds per flow. The
    parse runs in os-ken's receive loop, so packet-ins wait behind it."""
    import struct

    from os_ken.ofproto import ofproto_parser

    from nat_app import ofwire
    from nat_app.messages import AddFlow, DecTtl, Output, SetField

    def stats(i: int) -> bytes:  # OpenFlow 1.3.5 7.4.5.1 ofp_flow_stats: the fixed part, then match and instructions
        m = AddFlow(30000, {"in_port": 1, "eth_type": 0x800, "ip_proto": 6, "ipv4_src": "10.0.0.1",
                            "ipv4_dst": "203.0.113.100", "tcp_src": 1024 + i},
                    (SetField("ipv4_src", "203.0.113.1"), SetField("tcp_src", 2048 + i),
                     SetField("eth_dst", "00:00:00:00:01:00"), DecTtl(), Output(2)), cookie=i, idle_timeout=240)
        body = (ofwire.encode(m, 0) or b"")[48:]  # after the flow_mod's header and fixed part
        return struct.pack("!HBxIIHHHH4xQQQ", 48 + len(body), 0, 1, 0, 30000, 240, 0, 1, i, 10, 1000) + body

    body = b"".join(stats(i) for i in range(flows))
    raw = struct.pack("!BBHIHH4x", 4, 19, 16 + len(body), 1, 1, 0) + body  # a multipart reply, OFPMP_FLOW
    start = time.process_time()
    reply = ofproto_parser.msg(_Datapath(), 4, 19, len(raw), 1, raw)
    spent = time.process_time() - start
    assert len(reply.body) == flows
    return {"flows": flows, "us_per_flow": round(spent / flows * 1e6), "ms": round(spent * 1e3, 1)}


def _os_ken(dp: _Datapath, message: Message, xid: int) -> None:
    from nat_app.flows import to_openflow

    msg = to_openflow(dp, message)
    msg.xid = xid
    msg.serialize()


def rows_in(tree: Path, connections: int, window: int) -> dict:
    """:func:`first_packets` and :func:`slow_path` in a fresh interpreter whose imports resolve to ``tree``
    (its working directory)."""
    code = (f"import json, runpy, tempfile, pathlib; m = runpy.run_path({str(Path(__file__).resolve())!r}, "
            f"run_name='bench_nat_core')\n"
            f"with tempfile.TemporaryDirectory() as t: rows = m['first_packets']({connections}, {window}, "
            f"pathlib.Path(t))\nprint(json.dumps({{'rows': rows, 'slow': m['slow_path']()}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_rows(rounds: list[list[dict]]) -> list[dict]:
    """Row by row, the minimum of each step over the rounds (the rest is other work on the machine)."""
    return [{k: min(r[i][k] for r in rounds) for k in rounds[0][i]} for i in range(len(rounds[0]))]


def compare(baseline: str, rounds: int, connections: int, window: int, log=print) -> dict[str, dict]:
    """The baseline revision's rows and slow path and this tree's, alternating rounds; the best of each."""
    runs: dict[str, list] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="natlab-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        for r in range(1, rounds + 1):
            runs["baseline"].append(rows_in(Path(tmp), connections, window))
            runs["current"].append(rows_in(ROOT, connections, window))
            log(f"  round {r}/{rounds} done")
    return {side: {"rows": best_rows([r["rows"] for r in rs]), "slow": min((r["slow"] for r in rs),
                                                                             key=lambda x: x["us_per_packet"])}
            for side, rs in runs.items()}


def format_comparison(baseline: str, sides: dict[str, dict]) -> str:
    lines = [f"total us per new connection, {baseline} vs this tree (best of the rounds)",
             f"  {'entries':>8s} {'baseline':>9s} {'current':>9s} {'ratio':>7s}   steps now: "
             + " ".join(f"{s:>8s}" for s in STEPS)]
    for base, cur in zip(sides["baseline"]["rows"], sides["current"]["rows"], strict=True):
        b, c = (sum(row[s] for s in STEPS) for row in (base, cur))
        lines.append(f"  {cur['entries']:8d} {b:9.1f} {c:9.1f} {b / c:6.1f}x   "
                     + " ".join(f"{cur[s]:8.1f}" for s in STEPS))
    b, c = (sides[side]["slow"]["us_per_packet"] for side in ("baseline", "current"))
    lines.append(f"  slow path, one ESP packet demultiplexed by SPI ({sides['current']['slow']['clients']} clients on "
                 f"one global IP): {b:.1f} -> {c:.1f} us ({b / c:.1f}x)")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    lines = ["controller cost per new NAPT TCP connection, sans-IO (us; os-ken's loop and r1's socket excluded)",
             f"  {'entries':>8s} " + " ".join(f"{s:>9s}" for s in STEPS) + f" {'total':>9s} {'conn/s':>8s}"
             f"   {'os-ken':>8s} (the openflow step as os-ken builds it)"]
    for row in rows:
        total = sum(row[s] for s in STEPS)
        lines.append(f"  {row['entries']:8d} " + " ".join(f"{row[s]:9.1f}" for s in STEPS)
                     + f" {total:9.1f} {1e6 / total:8.0f}   {row['os-ken']:8.1f}")
    return "\n".join(lines)


def _measure(args: argparse.Namespace) -> tuple[list[dict], dict[str, dict] | None]:
    """This tree's rows, and both sides' when ``--baseline`` asks for them."""
    if args.baseline:
        sides = compare(args.baseline, args.rounds, args.connections, args.window)
        return sides["current"]["rows"], sides
    with tempfile.TemporaryDirectory(prefix="natlab-nat-core-") as tmp:
        return first_packets(args.connections, args.window, Path(tmp)), None


def run(args: argparse.Namespace) -> int:
    from conformance.bench import save_result

    print(f"natlab bench nat-core: {args.connections} new connections through the controller's steps, sans-IO")
    rows, sides = _measure(args)
    scale, slow, stats = table_scale(args.table), slow_path(), flow_stats_parse()
    table = "\n".join([format_table(rows), *([format_comparison(args.baseline, sides)] if sides else []),
                       f"slow path: {slow['us_per_packet']:.1f} us per ESP packet demultiplexed by SPI "
                       f"({slow['clients']} clients on one global IP), {slow['packets_per_second']:,d}/s",
                       f"os-ken parsing a flow-stats reply of {stats['flows']} translation flows (r1's counters, "
                       f"read every 2 s): {stats['ms']} ms, {stats['us_per_flow']} us per flow",
                       f"translation table with {scale['entries']:,d} NAPT entries: {scale['bytes_per_entry']:,d} "
                       f"bytes per entry (indexes included), lookups/s out {scale['lookups_per_second']['out']:,d}, "
                       f"in {scale['lookups_per_second']['in']:,d}"])
    print(table)
    path = save_result("nat-core", {"rows": rows, "steps": list(STEPS), "table": scale, "baseline": args.baseline,
                                    "baseline_rows": sides["baseline"]["rows"] if sides else None, "slow_path": slow, "flow_stats_parse": stats,
                                    "baseline_slow_path": sides["baseline"]["slow"] if sides else None,
                                    "command": "natlab bench nat-core " + " ".join(sys.argv[3:])}, args.out)
    path.with_suffix(".txt").write_text(table + "\n")
    print(f"written to {path}")
    return 0
