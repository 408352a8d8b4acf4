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
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nat_app.messages import Message

STEPS = ("decide", "journal", "store", "openflow")
# "openflow": the messages as the shell sends them (nat_app.ofwire, os-ken for the rest); "os-ken": the same
# messages built and serialised by os-ken, as the shell did before ofwire (not part of the total)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=int, default=4000, help="new connections in all (default 4000)")
    p.add_argument("--window", type=int, default=200, help="connections averaged per reported row (default 200)")
    p.add_argument("--table", type=int, default=100_000, help="entries for the table-scale figures (default 100000)")
    p.add_argument("--out", default="reports", help="where bench-nat-core.json goes (default reports/)")


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


def _os_ken(dp: _Datapath, message: Message, xid: int) -> None:
    from nat_app.flows import to_openflow

    msg = to_openflow(dp, message)
    msg.xid = xid
    msg.serialize()


def format_table(rows: list[dict]) -> str:
    lines = ["controller cost per new NAPT TCP connection, sans-IO (us; os-ken's loop and r1's socket excluded)",
             f"  {'entries':>8s} " + " ".join(f"{s:>9s}" for s in STEPS) + f" {'total':>9s} {'conn/s':>8s}"
             f"   {'os-ken':>8s} (the openflow step as os-ken builds it)"]
    for row in rows:
        total = sum(row[s] for s in STEPS)
        lines.append(f"  {row['entries']:8d} " + " ".join(f"{row[s]:9.1f}" for s in STEPS)
                     + f" {total:9.1f} {1e6 / total:8.0f}   {row['os-ken']:8.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from conformance.bench import save_result

    print(f"natlab bench nat-core: {args.connections} new connections through the controller's steps, sans-IO")
    with tempfile.TemporaryDirectory(prefix="natlab-nat-core-") as tmp:
        rows = first_packets(args.connections, args.window, Path(tmp))
    scale = table_scale(args.table)
    table = format_table(rows) + (f"\ntranslation table with {scale['entries']:,d} NAPT entries: "
                                  f"{scale['bytes_per_entry']:,d} bytes per entry (indexes included), lookups/s "
                                  f"out {scale['lookups_per_second']['out']:,d}, in {scale['lookups_per_second']['in']:,d}")
    print(table)
    path = save_result("nat-core", {"rows": rows, "steps": list(STEPS), "table": scale,
                                    "command": "natlab bench nat-core " + " ".join(sys.argv[3:])}, args.out)
    path.with_suffix(".txt").write_text(table + "\n")
    print(f"written to {path}")
    return 0
