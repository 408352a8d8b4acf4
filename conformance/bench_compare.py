"""``natlab bench compare``: a benchmark, not a test. The seed's method beside NAT-T, side by side (issue 15 item 4).

On one testbed, h1 -> s1 -> r1 -> s2 -> srv1, the same applications (iperf3 TCP and UDP), the same suite
(ESP AES-GCM-128) and the same inner MTU (1400: libipsec's ``ipsec0``; TCP MSS 1360, UDP datagrams of
1372 bytes), variants in alternating rounds with fresh peers each time:

- ``seed``: (a) the extensible NAT and the client module: raw ESP, transport mode, leases, compensation;
- ``natt-napt``: (b) natlab's NAT-T (tunnel mode, ESP in UDP/4500) through natlab's NAPT, no leases;
- ``swan-napt``: (d) strongSwan's charon (kernel-libipsec) on both ends, NAT-T tunnel through the NAPT;
- ``clear-napt``: (e) cleartext through the NAPT;

and in each round after those, on a testbed whose r1 is a Linux conntrack masquerade (one testbed at a time,
each round starting both afresh), ``natt-classic`` (c) beside ``clear-classic``. Per variant and round: TCP and UDP goodput (iperf3), bytes on the wire per
payload byte (from a capture of srv1's link during a fixed TCP transfer, both directions, never computed),
time from starting the peers to the first protected packet on srv1's wire, CPU per packet of each peer
(its process's CPU time over the packets through its TUN); in the first round, a quiet spell captured for
keepalives and lease frames per client per hour. Then which of {ESP, AH} x {transport, tunnel} each
method sets up at all, 1/3/8 clients behind one global IP (aggregate goodput; r1's fast path vs the
controller), and natlab NAT-T / strongSwan with a cProfile of natlab's agents if they are the slower.
Writes ``bench-compare.json``, ``.txt`` and ``.png`` in ``reports/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client_agent.agent_cli import AgentProcess
from conformance import wirecount
from conformance.bench import save_result
from conformance.bench_e2e import nat_path
from conformance.evidence import captures
from conformance.matrix import Cell, behind_nat, clients
from conformance.natt_peers import PSK, TUN_MTU, wait_for_child, write_config
from netwire.checksum import ip_bytes
from netwire.plan import server_ip
from topo.charon import INNER, CharonError, charon_in, initiate, inner_addresses, installed_sas, peering
from topo.testbed import Testbed, TestbedError

SEED, NATT, SWAN, CLEAR = "seed", "natt-napt", "swan-napt", "clear-napt"
NATT_CLASSIC, CLEAR_CLASSIC = "natt-classic", "clear-classic"
EXTENSIBLE = (SEED, NATT, SWAN, CLEAR)
CLASSIC = (NATT_CLASSIC, CLEAR_CLASSIC)
LABELS = {
    SEED: "(a) seed: extensible NAT + compensation, raw ESP transport, leases",
    NATT: "(b) natlab NAT-T tunnel through natlab's NAPT",
    NATT_CLASSIC: "(c) natlab NAT-T tunnel through the classic Linux NAT",
    SWAN: "(d) strongSwan libipsec NAT-T tunnel through natlab's NAPT",
    CLEAR: "(e) cleartext through natlab's NAPT",
    CLEAR_CLASSIC: "cleartext through the classic Linux NAT (the reference for (c))",
}
CELL = Cell("esp", "transport")  # (a)'s suite: ESP AES-GCM-128, what every NAT-T variant proposes too
MSS = TUN_MTU - 40  # TCP's segments as a 1400-byte MTU makes them, in every variant
UDP_LEN = TUN_MTU - 28
IPERF_PORT = 5201
PROBE_PORT = 9  # discard: the probe's datagrams need no answer
TRANSFER = "4M"  # the captured fixed TCP transfer (bytes on the wire per payload byte)
TRANSFER_PACE = "40M"  # paced, so that the captures keep every frame (at line rate tcpdump dropped ~20%)
SNAPLEN = 128  # enough for the headers, the UDP/4500 payload's first bytes and a capture marker
KEEPALIVE_S = 20  # RFC 3948 section 4's default, natlab's and charon's
STATS_S = 2.5  # r1's flow counters are read every 2 s
KEEPALIVE_IP_BYTES = 29  # IPv4 20 + UDP 8 + the 0xFF octet (RFC 3948 section 2.3); counted frames carry it


def _rounds_count(text: str) -> int:
    """--rounds: a whole number from 1 (every figure is a median over the rounds)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"rounds {text!r}: a whole number of at least 1")
    return int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=3, help="length of each iperf3 run (default 3)")
    p.add_argument("--rounds", type=_rounds_count, default=2, help="alternating rounds over the variants (default 2)")
    p.add_argument("--clients", default="1,3,8", help="client counts behind one global IP (default 1,3,8; '' none)")
    p.add_argument("--udp-rate", default="400M", help="iperf3 UDP offered rate (default 400M)")
    p.add_argument("--quiet", type=float, default=41,
                   help="idle capture for keepalives, round 1 of the NAT-T variants (default 41 s: two 20 s intervals)")
    p.add_argument("--no-classic", action="store_true", help="skip (c), the classic-NAT testbed")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled run of the slower NAT-T datapath")
    p.add_argument("--out", default="reports", help="where bench-compare.json, .txt and .png go (default reports/)")


@dataclass
class Peer:
    """One IPsec peer process: its host, pid (for CPU time) and TUN device (for packet counts)."""

    side: str
    host: Any  # a Mininet host
    pid: int
    tun: str = "ipsec0"


@dataclass
class Session:
    """A variant's peers, up: where the applications send, from which address, and who does the work."""

    target: str
    bind: str | None = None
    peers: list[Peer] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.clients.split(",") if n.strip()]
    print(f"natlab bench compare: {args.rounds} alternating rounds of {', '.join(EXTENSIBLE)} "
          f"({args.seconds:g} s iperf3 TCP and UDP each)" + ("" if args.no_classic else f", then {', '.join(CLASSIC)}")
          + (f"; clients {counts}" if counts else ""))
    try:
        result = bench_compare(args, counts)
    except (TestbedError, RuntimeError, CharonError) as exc:
        print(f"natlab bench compare: {exc}", file=sys.stderr)
        return 1
    path = save_result("compare", result, args.out)
    table = format_table(result)
    path.with_suffix(".txt").write_text(table + "\n")
    from conformance.plots import compare as compare_plot

    path.with_suffix(".png").write_bytes(compare_plot(result))
    print(table)
    print(f"written to {path}, {path.with_suffix('.txt')} and {path.with_suffix('.png')}")
    return 0


def bench_compare(args: argparse.Namespace, counts: list[int], log=print) -> dict:
    """Round after round, the extensible testbed's variants and then the classic testbed's, so that (c) alternates
    with the others as they do with each other (one testbed at a time: each round starts both afresh). The
    modes, scaling and profile steps run once, on the last round's extensible testbed."""
    variants = EXTENSIBLE + (() if args.no_classic else CLASSIC)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="natlab-bench-compare-") as tmp:
        work = Path(tmp)
        for r in range(1, args.rounds + 1):
            with Testbed(clients=max([1, *counts]), servers=1, globals=1) as tb:
                _round(tb, r, EXTENSIBLE, runs, args, work / "extensible", log)
                if r == args.rounds:
                    modes = supported_modes(tb, work / "modes", log)
                    scaling = {n: _scaling(tb, n, args.seconds, work / f"clients-{n}", log) for n in counts}
                    profile = _profile_slower(tb, runs, args, work / "profile", log)
            if not args.no_classic:
                with Testbed(clients=1, servers=1, globals=1, nat="classic") as tb:
                    _round(tb, r, CLASSIC, runs, args, work / "classic", log)
    return summarise(runs, modes, scaling, profile, args)


def _round(tb: Testbed, r: int, variants: tuple[str, ...], runs: dict[str, list[dict]], args: argparse.Namespace,
           work: Path, log) -> None:
    """Round ``r`` of ``variants`` on ``tb``, each with fresh peers; the quiet spell for keepalives in round 1."""
    from conformance.apps import iperf3_server

    with iperf3_server(tb.host("srv1"), IPERF_PORT):
        for variant in variants:
            quiet = args.quiet if r == 1 and variant in (NATT, SWAN, NATT_CLASSIC) else 0
            runs[variant].append(one_run(tb, variant, args, work / f"r{r}-{variant}", quiet))
    log(f"  round {r}/{args.rounds}: " + ", ".join(
        f"{v} TCP {runs[v][-1]['tcp_bps'] / 1e6:.0f} UDP {runs[v][-1]['udp_bps'] / 1e6:.0f}" for v in variants)
        + " Mbit/s")


# ----------------------------------------------------------------------------- one variant's peers


@contextmanager
def session(tb: Testbed, variant: str, work: Path, n: int = 1) -> Iterator[Session]:
    """The peers of ``variant`` up (SAs installed) for clients h1..hn; torn down on leaving."""
    makers = {SEED: _seed, NATT: _natt, NATT_CLASSIC: _natt, SWAN: _swan, CLEAR: _clear, CLEAR_CLASSIC: _clear}
    with makers[variant](tb, work, n) as s:
        yield s


@contextmanager
def _clear(tb: Testbed, work: Path, n: int) -> Iterator[Session]:
    yield Session(server_ip(1))


@contextmanager
def _seed(tb: Testbed, work: Path, n: int) -> Iterator[Session]:
    members, peer = behind_nat(CELL, clients(n, 1))
    with ExitStack() as stack:
        receiver = stack.enter_context(AgentProcess(tb.host("srv1"), replace(peer, mtu=TUN_MTU), work / "srv1"))
        senders = [stack.enter_context(AgentProcess(tb.host(c.name), replace(c, mtu=TUN_MTU), work / c.name))
                   for c in members]
        yield Session(server_ip(1), peers=[_agent_peer(a) for a in (*senders, receiver)])


@contextmanager
def _natt(tb: Testbed, work: Path, n: int) -> Iterator[Session]:
    hosts = [f"h{i}" for i in range(1, n + 1)]
    with ExitStack() as stack:
        responder = stack.enter_context(AgentProcess(
            tb.host("srv1"), write_config(work, "srv1", keepalive=KEEPALIVE_S, clients=n), work / "srv1"))
        initiators = [stack.enter_context(AgentProcess(
            tb.host(h), write_config(work, h, keepalive=KEEPALIVE_S), work / h)) for h in hosts]
        for agent in (*initiators, responder):
            if not wait_for_child(agent):
                raise RuntimeError(f"NAT-T: no CHILD_SA in {agent.host.name}: {agent.log_tail()}")
        yield Session(server_ip(1), peers=[_agent_peer(a) for a in (*initiators, responder)])


@contextmanager
def _swan(tb: Testbed, work: Path, n: int) -> Iterator[Session]:
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    inner_addresses(h1, srv1)
    try:
        with ExitStack() as stack:
            responder, rpid = stack.enter_context(charon_in(srv1, work / "srv1", peering("srv1", PSK, initiator=False)))
            initiator, ipid = stack.enter_context(charon_in(h1, work / "h1", peering("h1", PSK, initiator=True)))
            initiate(h1, initiator)
            if "INSTALLED" not in installed_sas(srv1, responder):
                raise RuntimeError("strongSwan: no CHILD_SA installed")
            yield Session(INNER["srv1"], INNER["h1"], [Peer("h1", h1, ipid), Peer("srv1", srv1, rpid)])
    finally:
        for host in (h1, srv1):
            host.cmd(f"ip addr del {INNER[host.name]}/32 dev lo")


def _agent_peer(agent: AgentProcess) -> Peer:
    if agent.proc is None:
        raise RuntimeError(f"agent in {agent.host.name} is not running")
    return Peer(agent.host.name, agent.host, agent.proc.pid, agent.config.tun if agent.config else "ipsec0")


# ----------------------------------------------------------------------------- one run


def one_run(tb: Testbed, variant: str, args: argparse.Namespace, work: Path, quiet: float) -> dict:
    """Peers up under capture (time to first protected packet), a captured fixed transfer (wire bytes per
    payload byte), TCP and UDP goodput with CPU per packet, and a captured quiet spell (keepalives)."""
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    out: dict = {}
    if variant == SWAN:
        inner_addresses(h1, srv1)  # the probe's source; the session takes them away again
    with ExitStack() as stack:
        pcaps = stack.enter_context(captures([(srv1, "srv1-eth0"), (h1, "h1-eth0")], work / "pcap", SNAPLEN))
        t0 = time.time()
        probe = _probe(h1, _probe_target(variant), INNER["h1"] if variant == SWAN else None)
        stack.callback(probe.kill)
        s = stack.enter_context(session(tb, variant, work))
        out["setup_s"] = round(time.time() - t0, 3)
        a = time.time()
        transfer = iperf3(h1, s.target, s.bind, count=TRANSFER, pace=TRANSFER_PACE)
        b = time.time()
        probe.kill()  # from here on only the applications and the peers' own traffic
        out |= goodput(s, h1, args)
        quiet_from = time.time()
        time.sleep(quiet)
        quiet_to = time.time()
        stack.close()
        ended = time.time()
    out |= wire_figures(pcaps, t0, (a, b), transfer, (quiet_from, quiet_to) if quiet else None)
    out["lease_frames_per_session"] = wirecount.count(pcaps["h1-eth0"].read_bytes(), t0, ended).lease_frames
    return out


def _probe_target(variant: str) -> str:
    return INNER["srv1"] if variant == SWAN else server_ip(1)


def _probe(host, target: str, source: str | None):
    """A UDP datagram to ``target`` every 10 ms for up to 30 s, from ``source``: the first protected packet on
    the wire comes as soon as the peers can protect one. (Before that, what leaves in clear is not counted.)"""
    code = ("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            + (f"s.bind(('{source}',0))\n" if source else "")
            + "end=time.time()+30\nwhile time.time()<end:\n"
            + f" try: s.sendto(b'p',('{target}',{PROBE_PORT}))\n except OSError: pass\n time.sleep(0.01)\n")
    return host.popen([sys.executable, "-c", code])


def goodput(s: Session, h1, args: argparse.Namespace) -> dict:
    """iperf3 TCP with the peers' CPU and TUN packets read around it, then iperf3 UDP."""
    before = [_cpu_and_packets(p) for p in s.peers]
    tcp = iperf3(h1, s.target, s.bind, seconds=args.seconds)
    after = [_cpu_and_packets(p) for p in s.peers]
    udp = iperf3(h1, s.target, s.bind, seconds=args.seconds, udp_rate=args.udp_rate)
    cpu = {p.side: round((a[0] - b[0]) / max(a[1] - b[1], 1) * 1e6, 1) for p, b, a in zip(s.peers, before, after,
                                                                                          strict=True)}
    return {"tcp_bps": tcp["bps"], "udp_bps": udp["bps"], "udp_loss": udp.get("loss"), "cpu_us_per_packet": cpu,
            **({"errors": [e for e in (tcp.get("error"), udp.get("error")) if e]}
               if tcp.get("error") or udp.get("error") else {})}


def _cpu_and_packets(p: Peer) -> tuple[float, int]:
    """(user + system CPU seconds of the peer's process, packets through its TUN both ways)."""
    from conformance.bench_ipsec import TICKS

    fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
    stats = p.host.cmd(f"cat /sys/class/net/{p.tun}/statistics/rx_packets /sys/class/net/{p.tun}/statistics/tx_packets")
    packets = sum(int(x) for x in stats.split() if x.isdigit())
    return (int(fields[11]) + int(fields[12])) / TICKS, packets


def iperf3(host, target: str, bind: str | None, *, seconds: float = 0, count: str = "",
           udp_rate: str | None = None, pace: str = "") -> dict:
    """iperf3 client from ``host``: TCP (MSS :data:`MSS`) or UDP (``udp_rate``, :data:`UDP_LEN`-byte datagrams);
    ``bps`` is the goodput the receiver saw, ``bytes`` what it received."""
    length = f"-u -b {udp_rate} -l {UDP_LEN}" if udp_rate else f"-M {MSS}" + (f" -b {pace}" if pace else "")
    span = f"-n {count}" if count else f"-t {seconds:g}"
    out = host.cmd(f"iperf3 -c {target} -p {IPERF_PORT} {span} {length} {'-B ' + bind if bind else ''} -J")
    try:
        end = json.loads(out[out.index("{"):])["end"]
    except (ValueError, KeyError):
        return {"bps": 0.0, "bytes": 0, "error": _iperf3_error(out)}
    if udp_rate:
        s = end["sum"]
        got = s.get("packets", 0) - s.get("lost_packets", 0)
        return {"bps": got * UDP_LEN * 8 / max(s.get("seconds", seconds), 1e-9), "bytes": got * UDP_LEN,
                "loss": round(s.get("lost_percent", 0.0), 1)}
    r = end["sum_received"]
    return {"bps": r["bits_per_second"], "bytes": r["bytes"], "sent": end["sum_sent"]["bytes"]}


def _iperf3_error(out: str) -> str:
    """iperf3's own error message (its JSON's "error" field), else the output's tail."""
    try:
        return str(json.loads(out[out.index("{"):]).get("error", ""))[:300] or out.strip()[-300:]
    except ValueError:
        return out.strip()[-300:]


def wire_figures(pcaps: dict[str, Path], t0: float, transfer_span: tuple[float, float], transfer: dict,
                 quiet: tuple[float, float] | None) -> dict:
    """From the captures: first protected packet, wire bytes per payload byte, keepalives and leases per hour."""
    srv1, h1 = pcaps["srv1-eth0"].read_bytes(), pcaps["h1-eth0"].read_bytes()
    setup = wirecount.count(srv1, t0)
    moved = wirecount.count(srv1, *transfer_span)
    out = {
        "first_protected_s": round(setup.first_protected - t0, 3) if setup.first_protected else None,
        "wire_bytes_per_payload_byte": round(moved.ip_bytes / max(transfer.get("sent", 0), 1), 4),
        "wire_frame_bytes_per_payload_byte": round(moved.frame_bytes / max(transfer.get("sent", 0), 1), 4),
        "data_packet_ip_bytes": wirecount.largest(moved.sizes),
        "transfer_frames": moved.frames,
    }
    if quiet:
        span = quiet[1] - quiet[0]
        at_srv1, at_h1 = wirecount.count(srv1, *quiet), wirecount.count(h1, *quiet)  # keepalives; lease renewals
        from_client = sum(n for src, n in at_srv1.keepalive_sources.items() if src != ip_bytes(server_ip(1)))
        out["quiet"] = {"seconds": round(span, 1), "keepalives": at_srv1.keepalives,
                        "keepalives_from_client": from_client, "keepalives_from_srv1": at_srv1.keepalives - from_client,
                        "keepalives_per_hour": round(from_client * 3600 / span, 1),
                        "keepalive_bytes_per_hour": round(from_client * KEEPALIVE_IP_BYTES * 3600 / span),
                        "lease_frames": at_h1.lease_frames, "frames_at_srv1": at_srv1.frames,
                        "frames_at_srv1_per_hour": round(at_srv1.frames * 3600 / span, 1)}
    return out


# ----------------------------------------------------------------------------- which modes work at all

METHODS = (SEED, NATT, SWAN)
SUITE_OF = {"esp": "aes128gcm16", "ah": "sha256"}  # natlab's and strongSwan's keywords for the matrix's suites


def supported_modes(tb: Testbed, work: Path, log) -> dict[str, dict[str, str]]:
    """For each method, each of {ESP, AH} x {transport, tunnel}: "works", or how it failed (never skipped)."""
    from conformance.matrix import CELLS

    attempts = {SEED: _seed_cell, NATT: _natt_cell, SWAN: _swan_cell}
    table: dict[str, dict[str, str]] = {}
    for method in METHODS:
        for cell in CELLS:
            try:
                verdict = attempts[method](tb, cell, work / f"{method}-{cell.name}")
            except (RuntimeError, CharonError, OSError) as exc:
                verdict = f"fails: {str(exc).splitlines()[0][:160]}"
            table.setdefault(method, {})[cell.name] = verdict
        log(f"  modes, {method}: " + ", ".join(f"{c} {v.split(':')[0]}" for c, v in table[method].items()))
    return table


def _moved(host, target: str, bind: str | None, server) -> str:
    """One second of iperf3 TCP through the protected path: "works" if the receiver got data."""
    from conformance.apps import Service

    with Service(server, ["iperf3", "-s", "-p", str(IPERF_PORT + 1)]):
        out = host.cmd(f"iperf3 -c {target} -p {IPERF_PORT + 1} -t 1 {'-B ' + bind if bind else ''} "
                       "--connect-timeout 3000 -J")
    try:
        got = json.loads(out[out.index("{"):])["end"]["sum_received"]["bytes"]
    except (ValueError, KeyError):
        return f"fails: iperf3 moved nothing ({_iperf3_error(out)[:120]})"
    return f"works ({got / 1e6:.1f} MB in 1 s)" if got else "fails: 0 bytes arrived"


def _seed_cell(tb: Testbed, cell: Cell, work: Path) -> str:
    (member,), peer = behind_nat(cell, clients(1, 1))
    with AgentProcess(tb.host(cell.peer), peer, work / cell.peer), AgentProcess(tb.host("h1"), member, work / "h1"):
        return _moved(tb.host("h1"), cell.target[1], None, tb.host(cell.target[0]))


def _natt_cell(tb: Testbed, cell: Cell, work: Path) -> str:
    """natlab's agents negotiate ``cell`` by IKE through the NAPT (NAT-D finds the NAT); does traffic cross?"""
    refused = _check_refuses(cell, work)
    kw = {"ah": SUITE_OF["ah"]} if cell.protocol == "ah" else {}
    with AgentProcess(tb.host("srv1"), write_config(work, "srv1", keepalive=KEEPALIVE_S, mode=cell.mode, **kw),
                      work / "srv1") as responder, \
            AgentProcess(tb.host("h1"), write_config(work, "h1", keepalive=KEEPALIVE_S, mode=cell.mode, **kw),
                         work / "h1") as initiator:
        if not wait_for_child(initiator, timeout=8):
            return f"fails: no CHILD_SA ({initiator.log_tail(1)[-140:]}){refused}"
        moved = _moved(tb.host("h1"), server_ip(1), None, tb.host("srv1"))
        encap = (initiator.status().get("ike") or {}).get("natt", {}).get("counters", {}).get("esp_sent", 0)
        responder.refresh()
    return f"{moved}{' (but not UDP-encapsulated)' if moved.startswith('works') and not encap else ''}{refused}"


def _check_refuses(cell: Cell, work: Path) -> str:
    """With AH, ``natlab agent --check`` on the same config with ``force_encap = true``: its refusal, quoted."""
    if cell.protocol != "ah":
        return ""
    import subprocess

    path = write_config(work / "check", "h1", keepalive=KEEPALIVE_S, mode=cell.mode, ah=SUITE_OF["ah"])
    path.write_text(path.read_text() + "force_encap = true\n")
    out = subprocess.run([sys.executable, "-m", "client_agent.agent_cli", "--check", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    said = (out.stdout + out.stderr).strip().splitlines()
    return f"; force_encap refused at --check: {said[-1][:140]}" if out.returncode and said else ""


def _swan_cell(tb: Testbed, cell: Cell, work: Path) -> str:
    """charon on both ends asked for ``cell``: libipsec installs only ESP-in-UDP tunnels; what it says otherwise."""
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    kw = {"mode": cell.mode, **({"ah": SUITE_OF["ah"]} if cell.protocol == "ah" else {})}
    inner_addresses(h1, srv1)
    try:
        with charon_in(srv1, work / "srv1", peering("srv1", PSK, initiator=False, **kw)) as (responder, _), \
                charon_in(h1, work / "h1", peering("h1", PSK, initiator=True, **kw)) as (initiator, _):
            said = initiate(h1, initiator)
            if "INSTALLED" not in installed_sas(srv1, responder, timeout=3):
                return "fails: " + _charon_refusal(said, initiator.log, responder.log)
            return _moved(h1, INNER["srv1"], INNER["h1"], srv1)
    finally:
        for host in (h1, srv1):
            host.cmd(f"ip addr del {INNER[host.name]}/32 dev lo")


def _charon_refusal(said: str, *logs: Path) -> str:
    """charon's own words for a refused CHILD_SA (libipsec: "unsupported mode", "protocol not supported")."""
    keys = ("unsupported", "not supported", "NO_PROPOSAL_CHOSEN", "failed to establish CHILD_SA", "only UDP")
    lines = [line.strip() for log in logs if log.exists() for line in log.read_text(errors="replace").splitlines()]
    found = [line for line in lines if any(k in line for k in keys)]
    return (found[0] if found else said.strip().splitlines()[-1] if said.strip() else "no CHILD_SA")[:160]


# ----------------------------------------------------------------------------- clients behind one global IP


def _scaling(tb: Testbed, n: int, seconds: float, work: Path, log) -> dict[str, dict]:
    """``n`` clients behind one global IP at once to srv1: aggregate TCP goodput, r1's fast vs slow path."""
    out = {}
    for variant in (SEED, NATT, CLEAR):
        try:
            with session(tb, variant, work / variant, n):
                out[variant] = _all_at_once(tb, n, seconds)
        except (RuntimeError, CharonError) as exc:
            out[variant] = {"error": str(exc)[:300]}
        row = out[variant]
        log(f"  {n} clients, {variant}: " + (f"{row['aggregate_bps'] / 1e6:.0f} Mbit/s, fast path "
                                              f"{row['path']['fast_path']}, slow path {row['path']['slow_path']} pkts"
                                              if "error" not in row else row["error"][:120]))
    return out


def _all_at_once(tb: Testbed, n: int, seconds: float) -> dict:
    from conformance.apps import Service

    srv1 = tb.host("srv1")
    ports = [IPERF_PORT + 100 + i for i in range(n)]
    with ExitStack() as stack:
        for port in ports:
            stack.enter_context(Service(srv1, ["iperf3", "-s", "-p", str(port)]))
        time.sleep(STATS_S)
        before = tb.table()
        procs = [tb.host(f"h{i + 1}").popen(f"iperf3 -c {server_ip(1)} -p {port} -t {seconds:g} -M {MSS} -J".split(),
                                            stdout=-1, stderr=-1, text=True) for i, port in enumerate(ports)]
        results = [_received_bps(p.communicate(timeout=seconds + 60)[0]) for p in procs]
        time.sleep(STATS_S)
        after = tb.table()
    return {"aggregate_bps": sum(results), "per_client_bps": [round(x) for x in results],
            "path": nat_path(before, after)}


def _received_bps(out: str) -> float:
    try:
        return float(json.loads(out[out.index("{"):])["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError):
        return 0.0


# ----------------------------------------------------------------------------- the slower datapath's profile


def _profile_slower(tb: Testbed, runs: dict[str, list], args: argparse.Namespace, work: Path, log) -> dict:
    """natlab NAT-T / strongSwan; if natlab's is the slower, one more run with both agents under cProfile."""
    tcp = {v: statistics.median(r["tcp_bps"] for r in runs[v]) for v in (NATT, SWAN)}
    slower = NATT if tcp[NATT] <= tcp[SWAN] else SWAN
    out: dict = {"slower": slower, "tcp_bps": tcp}
    if slower == SWAN:
        out["note"] = "strongSwan is the slower: no profiler for charon here (py-spy and perf are not installed)"
        return out
    if args.no_profile:
        return out
    from conformance.bench_ipsec import _profile_summary

    with _natt_profiled(tb, work) as (target, prof):
        out["bps_while_profiled"] = iperf3(tb.host("h1"), target, None, seconds=args.seconds)["bps"]
    out |= {side: _profile_summary(path) for side, path in prof.items()}
    log(f"  profiled natlab NAT-T: {out['bps_while_profiled'] / 1e6:.0f} Mbit/s under cProfile")
    return out


@contextmanager
def _natt_profiled(tb: Testbed, work: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    prof = {side: work / f"{side}.prof" for side in ("h1", "srv1")}
    from conformance.apps import iperf3_server

    with AgentProcess(tb.host("srv1"), write_config(work, "srv1", keepalive=KEEPALIVE_S), work / "srv1",
                      "--profile", str(prof["srv1"])) as responder, \
            AgentProcess(tb.host("h1"), write_config(work, "h1", keepalive=KEEPALIVE_S), work / "h1",
                         "--profile", str(prof["h1"])) as initiator, iperf3_server(tb.host("srv1"), IPERF_PORT):
        if not (wait_for_child(initiator) and wait_for_child(responder)):
            raise RuntimeError(f"profiled NAT-T run: no CHILD_SA: {initiator.log_tail()}")
        yield server_ip(1), prof


# ----------------------------------------------------------------------------- summary and table


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(runs: dict[str, list], modes: dict, scaling: dict, profile: dict, args: argparse.Namespace) -> dict:
    medians: dict[str, dict[str, Any]] = {v: {k: _median(rows, k) for k in ("tcp_bps", "udp_bps", "wire_bytes_per_payload_byte",
                                                   "first_protected_s", "setup_s", "data_packet_ip_bytes")}
               for v, rows in runs.items()}
    for v, rows in runs.items():
        sides = sorted({s for r in rows for s in r.get("cpu_us_per_packet", {})})
        medians[v]["cpu_us_per_packet"] = {s: statistics.median(r["cpu_us_per_packet"][s] for r in rows
                                                                if s in r.get("cpu_us_per_packet", {})) for s in sides}
        medians[v]["quiet"] = rows[0].get("quiet")
    per_round = [round(a["tcp_bps"] / b["tcp_bps"], 3) if b["tcp_bps"] else 0.0
                 for a, b in zip(runs.get(NATT, []), runs.get(SWAN, []), strict=False)]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": {v: LABELS[v] for v in runs},
        "settings": {"seconds": args.seconds, "rounds": args.rounds, "udp_rate": args.udp_rate, "tun_mtu": TUN_MTU,
                     "tcp_mss": MSS, "udp_len": UDP_LEN, "suite": "ESP AES-GCM-128 (RFC 4106)",
                     "quiet_s": args.quiet, "keepalive_s": KEEPALIVE_S},
        "order": "per round: " + ", ".join(EXTENSIBLE) + " on a fresh extensible testbed, then "
                 + ", ".join(CLASSIC) + " on a fresh classic one",
        "runs": runs, "medians": medians, "modes": modes,
        "natlab_natt_over_strongswan": {"per_round": per_round,
                                        "of_medians": _ratio(medians.get(NATT), medians.get(SWAN))},
        "scaling": {str(n): rows for n, rows in scaling.items()}, "profile": profile,
    }


def _ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or not a.get("tcp_bps") or not b.get("tcp_bps"):
        return None
    return round(a["tcp_bps"] / b["tcp_bps"], 3)


def _fmt(x: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if x is None else f"{x / scale:.{digits}f}"


def format_table(result: dict) -> str:
    med, s = result["medians"], result["settings"]
    lines = [f"natlab bench compare: {s['suite']}, inner MTU {s['tun_mtu']} (TCP MSS {s['tcp_mss']}, UDP "
             f"{s['udp_len']} B), {s['rounds']} rounds of {s['seconds']:g} s, medians",
             f"  {'variant':13s} {'TCP':>6s} {'UDP':>6s} {'wire/payload':>12s} {'data pkt':>8s} {'1st prot.':>9s} "
             f"{'keepalives/h':>12s} {'CPU us/pkt (peers)':>22s}"]
    for v, m in med.items():
        quiet = m.get("quiet") or {}
        cpu = ", ".join(f"{k} {x:.1f}" for k, x in m["cpu_us_per_packet"].items()) or "-"
        lines.append(f"  {v:13s} {_fmt(m['tcp_bps'], 1e6):>6s} {_fmt(m['udp_bps'], 1e6):>6s} "
                     f"{_fmt(m['wire_bytes_per_payload_byte'], digits=3):>12s} {_fmt(m['data_packet_ip_bytes']):>8s} "
                     f"{_fmt(m['first_protected_s'], digits=2):>9s} {_fmt(quiet.get('keepalives_per_hour')):>12s} "
                     f"{cpu:>22s}")
    ratio = result["natlab_natt_over_strongswan"]
    lines.append("  (Mbit/s; wire = IP bytes on srv1's link, both directions, per iperf3 payload byte; 1st prot. = "
                 "seconds from starting the peers to the first protected packet on srv1's wire; keepalives/h: the "
                 "client's, counted in the idle capture)")
    lines.append(f"  natlab NAT-T / strongSwan, TCP: {ratio['of_medians']} (rounds {ratio['per_round']})")
    lines += _modes_lines(result["modes"]) + _scaling_lines(result["scaling"]) + _profile_lines(result["profile"])
    return "\n".join(lines)


def _modes_lines(modes: dict) -> list[str]:
    lines = ["", "which {ESP, AH} x {transport, tunnel} each method sets up (an iperf3 transfer through it)"]
    for method, cells in modes.items():
        for cell, verdict in cells.items():
            lines.append(f"  {method:10s} {cell:14s} {verdict}")
    return lines


def _scaling_lines(scaling: dict) -> list[str]:
    lines = ["", "clients behind one global IP, all at once to srv1: aggregate TCP Mbit/s; r1 fast path / slow path pkts"]
    for n, rows in scaling.items():
        cells = [f"{v} " + (f"{r['aggregate_bps'] / 1e6:.0f} ({r['path']['fast_path']:,d} / {r['path']['slow_path']:,d})"
                            if "error" not in r else "error") for v, r in rows.items()]
        lines.append(f"  {n:>2s} clients: " + "; ".join(cells))
    return lines


def _profile_lines(profile: dict) -> list[str]:
    if not profile:
        return []
    lines = ["", f"slower NAT-T datapath: {profile.get('slower')} {profile.get('note', '')}".rstrip()]
    for side in ("h1", "srv1"):
        if side in profile:
            share = profile[side]["share"]
            lines.append(f"  {side}: busy {profile[side]['busy_seconds']:.1f} s: crypto {share['crypto']:.0%}, system "
                         f"calls {share['syscalls']:.0%}, Python {share['python']:.0%}; top: " + ", ".join(
                             f"{t['function'].rsplit('/', 1)[-1]} {t['share']:.0%}" for t in profile[side]["top"][:4]))
    return lines
