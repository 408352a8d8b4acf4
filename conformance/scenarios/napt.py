"""NAT-AUTO and NAT-DROP: the NAT's own translation of TCP, UDP and ICMP, and
what it refuses. Verdicts come from the applications themselves (curl,
iperf3, ping exit status and counts) and from tshark reading captures taken
inside the hosts on both sides of r1."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from conformance import apps
from conformance.context import Context
from conformance.evidence import captures, read_pcap
from conformance.results import ScenarioResult
from conformance.scenario import scenario
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_UDP
from netwire.plan import INSIDE_NET, server_ip

PRIVATE = ipaddress.IPv4Network(INSIDE_NET)
SRV1, SRV2 = server_ip(1), server_ip(2)
PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP"}


def _private(ip: str) -> bool:
    return ipaddress.IPv4Address(ip) in PRIVATE


@scenario(covers=("NAT-AUTO",), order=10)
def nat_auto(ctx: Context) -> list[ScenarioResult]:
    """Unmodified curl, iperf3 (TCP and UDP) and ping from every client at once."""
    tb, clients = ctx.testbed, ctx.clients()
    srv1, srv2 = tb.host("srv1"), tb.host("srv2")
    globals_ = set(tb.table()["globals"])
    with ctx.recorded("nat-auto") as rec:
        intfs = [(srv1, "srv1-eth0"), (srv2, "srv2-eth0")] + [(h, f"{h.name}-eth0") for h in clients]
        with (apps.http_server(srv1, SRV1), apps.iperf3_server(srv1, 5201), apps.iperf3_server(srv2, 5202),
              captures(intfs, rec.folder) as pcaps):
            codes = {h.name: apps.curl(h, f"http://{SRV1}:8000/") for h in clients}
            tcp = apps.iperf3(clients[0], SRV1, 5201, seconds=2)
            udp = apps.iperf3(clients[-1], SRV2, 5202, seconds=2, udp_rate="20M")
            refused = {h.name: apps.probe(h, "udp-refused", SRV2, 9)["refused"] for h in clients}
            pings = {(h.name, dst): apps.ping(h, dst) for h in clients for dst in (SRV1, SRV2)}
    server_side = read_pcap(pcaps["srv1-eth0"]) + read_pcap(pcaps["srv2-eth0"])
    client_side = {h.name: read_pcap(pcaps[f"{h.name}-eth0"]) for h in clients}
    leaked = [p for p in server_side if _private(p.src) or _private(p.dst)]
    bad_sums = [p for p in server_side if p.checksum_bad]
    created = {e["protocol"] for e in rec.table_after["entries"] if e["kind"] == "NAT-ALG"}
    evidence = list(pcaps.values())
    results = []
    for proto, name in PROTO_NAMES.items():
        seen = {p.src for p in server_side if p.proto == proto and p.src in globals_}
        sent_private = all(any(p.proto == proto and p.src == client_ip(h) for p in client_side[h.name])
                           for h in clients)
        if proto == 6:
            app_ok = [(all(c == 200 for c in codes.values()), f"curl status per client {codes}"),
                      (tcp["received"] > 0, f"iperf3 TCP h1->srv1 moved {tcp['received']} bytes")]
            story = f"curl 200 from {len(codes)} clients; iperf3 TCP {tcp['bps'] / 1e6:.0f} Mbit/s"
        elif proto == 17:
            app_ok = [(udp["received"] > 0, f"iperf3 UDP {clients[-1].name}->srv2 delivered {udp['received']} packets")]
            story = f"iperf3 UDP delivered {udp['received']} packets; every client sent UDP to srv2"
        else:
            misdelivered = {h.name: [p for p in client_side[h.name] if p.icmp_type == 0 and p.icmp_id not in
                                     {q.icmp_id for q in client_side[h.name] if q.icmp_type == 8}] for h in clients}
            app_ok = [(all(s > 0 and r == s for s, r in pings.values()), f"ping (sent, received) {pings}"),
                      (not any(misdelivered.values()), f"echo replies reached a client that did not ask: {misdelivered}")]
            story = (f"ping {sum(r for _, r in pings.values())}/{sum(s for s, _ in pings.values())} replies, "
                     "none delivered to another client")
        checks = app_ok + [
            (bool(seen), f"servers saw {name} from global addresses {sorted(seen)}"),
            (sent_private, f"every client's capture shows its own private address sending {name}"),
            (not [p for p in leaked if p.proto == proto], f"{name} packets with private addresses on the server side"),
            (not [p for p in bad_sums if p.proto == proto], f"{name} checksums tshark found bad on the server side"),
            (proto in created, f"NAT-ALG entries for protocol {proto} in the table"),
        ]
        results.append(rec.result(
            "NAT-AUTO", name.lower(), checks, cell={"transport": name},
            positive=f"{story}; server captures show {name} only from globals {sorted(seen)}; "
                     f"NAT-ALG {name} entries made by the NAT itself",
            negative=f"0 of {len(server_side)} server-side packets carry a private address; "
                     f"{len(bad_sums)} bad TCP/UDP/ICMP checksums (tshark)", extra_evidence=evidence))
    results.append(rec.result(
        "NAT-AUTO", "icmp-error", [(all(refused.values()), f"ECONNREFUSED per client {refused}")],
        cell={"transport": "ICMP error"},
        positive="each client's UDP to a closed port of srv2 came back as ECONNREFUSED: the port-unreachable and "
                 "the header it quotes were translated back (RFC 5508 REQ-3)",
        negative="a wrong quoted header would not match the client's socket, and recv would time out",
        extra_evidence=evidence))
    return results


@scenario(covers=("NAT-DROP",), order=20)
def nat_drop(ctx: Context) -> list[ScenarioResult]:
    """Unsolicited inbound traffic and outbound ESP/AH without an entry go nowhere."""
    tb, clients = ctx.testbed, ctx.clients()
    h1, srv1, srv2 = clients[0], tb.host("srv1"), tb.host("srv2")
    globals_ = tb.table()["globals"]
    with ctx.recorded("nat-drop") as rec:
        intfs = [(h, f"{h.name}-eth0") for h in clients] + [(srv1, "srv1-eth0"), (srv2, "srv2-eth0")]
        with captures(intfs, rec.folder) as pcaps:
            # A mapping that srv1 may use (h1 sent to it) and srv2 may not (RFC 4787 REQ-8).
            apps.probe(h1, "udp", SRV1, 9, "--sport", 47000, "--count", 1, "--wait", 0.2)
            mapped = [e for e in tb.table()["entries"] if e["private_ip"] == client_ip(h1)
                      and e["private_gpn"] == 47000 and e["protocol"] == IPPROTO_UDP]
            target = (mapped[0]["global_ip"], mapped[0]["global_gpn"]) if mapped else (globals_[0], 47000)
            apps.probe(srv1, "udp", target[0], target[1], "--count", 2, "--wait", 0.2)
            attempts = [apps.probe(srv2, "udp", target[0], target[1], "--count", 2, "--wait", 0.2)]
            for g in globals_:
                attempts.append(apps.probe(srv2, "tcp-syn", g, 80, "--wait", 0.5))
                attempts.append(apps.probe(srv2, "tcp-syn", g, 22, "--wait", 0.5))
                attempts.append(apps.probe(srv2, "udp", g, 53, "--count", 2, "--wait", 0.2))
                attempts.append(apps.probe(srv1, "tcp-syn", g, 8080, "--wait", 0.5))
            apps.probe(h1, "raw", SRV1, 50, "--count", 3)
            apps.probe(h1, "raw", SRV1, 51, "--count", 3)
    caps = {name: read_pcap(path) for name, path in pcaps.items()}
    connected = [a for a in attempts if a.get("connected")]
    return [_judge_inbound(rec, caps, clients, globals_, target, mapped, list(pcaps.values()), connected),
            _judge_outbound(rec, caps, h1, rec.counter_delta("drop:unsupported-protocol"), list(pcaps.values()))]


def unsolicited_expected(globals_: list[str], target: tuple[str, int]) -> dict[str, tuple]:
    """What each unsolicited probe puts on its sender's wire: (sender capture, predicate, at least how many)."""
    want = {f"srv2 UDP to h1's mapping {target[0]}:{target[1]}": (
        "srv2-eth0", lambda p: p.proto == 17 and p.src == SRV2 and (p.dst, p.dport) == target, 2)}
    for g in globals_:
        for port in (80, 22):
            want[f"srv2 SYN to {g}:{port}"] = ("srv2-eth0", _syn(SRV2, g, port), 1)
        want[f"srv2 UDP to {g}:53"] = ("srv2-eth0", _udp(SRV2, g, 53), 2)
        want[f"srv1 SYN to {g}:8080"] = ("srv1-eth0", _syn(SRV1, g, 8080), 1)
    return want


def _syn(src: str, dst: str, dport: int) -> Callable[[Any], bool]:
    """A bare SYN from ``src`` to ``dst``:``dport`` (a packet of conformance.evidence.read_pcap)."""
    return lambda p: p.src == src and p.dst == dst and p.tcp_syn_only and p.dport == dport


def _udp(src: str, dst: str, dport: int) -> Callable[[Any], bool]:
    return lambda p: p.src == src and p.dst == dst and p.proto == 17 and p.dport == dport


def _judge_inbound(rec, caps: dict, clients: list, globals_: list[str], target: tuple[str, int], mapped: list,
                   evidence: list, connected: list) -> ScenarioResult:
    """NAT-DROP inbound: every unsolicited probe is on its sender's wire, none on any client's (RFC 4787 REQ-8)."""
    h1 = clients[0]
    inside = [p for h in clients for p in caps[f"{h.name}-eth0"]]
    from_srv2_inside = [p for p in inside if p.src == SRV2]
    unsolicited_srv1 = [p for p in inside if p.src == SRV1 and p.tcp_syn_only]
    opened = [p for p in caps[f"{h1.name}-eth0"] if p.src == client_ip(h1) and p.sport == 47000 and p.dst == SRV1]
    srv1_replied = [p for p in caps["srv1-eth0"] if p.src == SRV1 and (p.dst, p.dport) == target]
    allowed_seen = [p for p in caps[f"{h1.name}-eth0"] if p.src == SRV1 and p.dport == 47000]
    sent = {what: sum(1 for p in caps[cap] if pred(p)) for what, (cap, pred, _) in
            unsolicited_expected(globals_, target).items()}
    unsent = {what: n for what, n in sent.items() if n < unsolicited_expected(globals_, target)[what][2]}
    checks = [
        (bool(opened) and bool(mapped), f"h1's UDP from port 47000 ({len(opened)} on h1's wire) made a mapping {target}"),
        (len(srv1_replied) >= 2, f"srv1 sent {len(srv1_replied)} datagrams to the mapping (its own wire)"),
        (len(allowed_seen) >= 2, f"control: srv1's datagrams to the mapping reached h1 ({len(allowed_seen)} seen)"),
        (not unsent, f"probes missing from their sender's own capture: {unsent}"),
        (not from_srv2_inside, f"packets from srv2 reached clients: {from_srv2_inside[:3]}"),
        (not unsolicited_srv1, f"unsolicited SYNs from srv1 reached clients: {unsolicited_srv1[:3]}"),
        (not connected, f"unsolicited TCP connects succeeded: {connected}"),
    ]
    return rec.result(
        "NAT-DROP", "inbound-unsolicited", checks,
        positive=f"{sum(sent.values())} unsolicited packets on their senders' wires ({len(sent)} kinds, each seen: "
                 f"{not unsent}); srv1's {len(srv1_replied)} datagrams on h1's mapping reached h1 ({len(allowed_seen)})",
        negative=f"{len(from_srv2_inside)} packets from srv2 and {len(unsolicited_srv1)} unsolicited SYNs in "
                 f"{len(clients)} client captures; {len(connected)} connects succeeded", extra_evidence=evidence)


def _judge_outbound(rec, caps: dict, h1, dropped: int, evidence: list) -> ScenarioResult:
    """NAT-DROP outbound: ESP and AH without a lease are on h1's wire, not on srv1's, and counted as drops."""
    esp = [p for p in caps[f"{h1.name}-eth0"] if p.proto == IPPROTO_ESP and p.src == client_ip(h1) and p.dst == SRV1]
    ah = [p for p in caps[f"{h1.name}-eth0"] if p.proto == IPPROTO_AH and p.src == client_ip(h1) and p.dst == SRV1]
    arrived = [p for p in caps["srv1-eth0"] if p.proto in (IPPROTO_ESP, IPPROTO_AH)]
    return rec.result(
        "NAT-DROP", "outbound-unsupported", [
            (len(esp) >= 3 and len(ah) >= 3, f"h1's wire shows {len(esp)} ESP and {len(ah)} AH to srv1 (3 each sent)"),
            (not arrived, f"ESP/AH packets reached srv1: {arrived[:3]}"),
            (dropped >= len(esp) + len(ah), f"controller counted {dropped} unsupported-protocol drops for "
                                            f"{len(esp) + len(ah)} packets"),
        ],
        positive=f"h1's wire shows {len(esp)} ESP and {len(ah)} AH packets to srv1 with no entry; the controller "
                 f"counted {dropped} drop:unsupported-protocol",
        negative=f"srv1's capture holds {len(arrived)} ESP/AH packets", extra_evidence=evidence)


def client_ip(host) -> str:
    return host.IP()
