"""The extensible NAT (FIG. 6 and FIG. 7): definitions, leases, and the
client-ALG translation and demultiplexing of ESP, AH and ISAKMP.

Clients speak the lease protocol from inside the Mininet hosts with kernel
sockets; srv1 runs a reflector that answers each ESP/AH probe with the SPI
the probe names (standing in for an IPsec peer) and each ISAKMP probe with
its cookie. Verdicts come from the protocol answers, from the receiving
hosts' kernels (the probes count what they got) and from tshark reading
captures taken inside the hosts on both sides of r1.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

from conformance import apps
from conformance.context import Context
from conformance.evidence import captures, read_pcap
from conformance.results import ScenarioResult
from conformance.scenario import scenario
from netwire import pcp
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, MIN_SPI
from netwire.plan import OFF_PLAN_IP, server_ip

SRV1, SRV2 = server_ip(1), server_ip(2)
def _wire_fields(definition: pcp.GpnDefinition) -> dict:
    """A codec definition as probe arguments (the probe draws its own nonce)."""
    return {f.name: getattr(definition, f.name) for f in dataclasses.fields(definition) if f.name != "nonce"}


ESP_DEF, AH_DEF, ISAKMP_DEF = (_wire_fields(d) for d in (pcp.ESP_DEFINITION, pcp.AH_DEFINITION,
                                                          pcp.ISAKMP_DEFINITION))
TCP_DEF = {**ESP_DEF, "protocol": 6, "range_min": 1, "range_max": 65535, "length_bits": 16, "dst_offset_bits": 16}
REFLECT_S = 25
UNLEASED_SPI = 0x0BADBAD


def ask(host, opcode: str, **fields) -> dict:
    fields.setdefault("client_ip", host.IP())
    return apps.probe(host, "lease", opcode, f"'{json.dumps(fields)}'")


def lease(host, protocol: int, foreign: str | None = SRV1, **fields) -> dict:
    args = {"private_gpn": None, "global_gpn": None, "global_ip": None, "foreign_ip": foreign, **fields}
    return ask(host, "LEASE", protocol=protocol, **args)


def _ok(answer: dict) -> bool:
    return answer.get("result") == "SUCCESS"


# The lease scenarios come after the client scenarios (order 30-70): their long leases would pin h1 to a
# global IP (CL-SPI: "keeping the same global IP") other than the one the clients' manual-key configs name.
@scenario(covers=("NAT-DEF", "NAT-HASALG", "NAT-ALLOC", "NAT-UNIQ", "CL-UNIQ", "NAT-ENTRY"), order=80)
def lease_protocol(ctx: Context) -> list[ScenarioResult]:
    """NAT-DEF, NAT-HASALG, NAT-ALLOC, NAT-UNIQ, NAT-ENTRY, CL-UNIQ: the protocol's answers and the table."""
    tb, clients = ctx.testbed, ctx.clients()
    g1 = tb.table()["globals"][0]
    with ctx.recorded("leases") as rec:
        define_esp = ask(clients[0], "DEFINE", **ESP_DEF)
        define_ah = ask(clients[0], "DEFINE", **AH_DEF)
        define_ike = ask(clients[0], "DEFINE", **ISAKMP_DEF)
        bad_range = ask(clients[0], "DEFINE", **{**ESP_DEF, "range_min": 1})  # SPIs 1-255 are reserved
        has_alg = ask(clients[0], "DEFINE", **TCP_DEF)
        chosen = lease(clients[0], 50, lifetime=0xFFFFFFFF)  # everything unspecified
        outside_pool = lease(clients[0], 50, global_ip=OFF_PLAN_IP)
        shared = [lease(h, 50, global_ip=g1) for h in clients]
        spis = [a["info"]["global_gpn"] for a in shared if _ok(a)]
        taken = lease(clients[1], 50, global_ip=g1, global_gpn=spis[0]) if spis else {}
        table = tb.table()
    results = []
    results.append(rec.result("NAT-DEF", "define", [
        (_ok(define_esp) and _ok(define_ah) and _ok(define_ike), f"DEFINE ESP/AH/ISAKMP answered {define_esp.get('result')}"
                                                                 f"/{define_ah.get('result')}/{define_ike.get('result')}"),
        (bad_range.get("result") == "MALFORMED_REQUEST",
         f"an ESP definition reaching into the reserved SPIs answered {bad_range.get('result')}"),
    ], positive="GPN definitions for ESP (IP 50, 32 bits at 0, no source), AH (IP 51, 32 bits at 32) and ISAKMP "
                "(UDP 500, 64 bits at 0) accepted",
        negative=f"a definition whose range holds reserved SPIs 1-255 is refused: {bad_range.get('result')}"))
    results.append(rec.result("NAT-HASALG", "tcp", [
        (has_alg.get("result") == "HAS_ALG", f"DEFINE TCP answered {has_alg.get('result')}"),
        (has_alg.get("lifetime") == 1800, f"with PCP's long error lifetime ({has_alg.get('lifetime')} s)"),
        (_ok(define_esp), "ESP, which the NAT has no ALG for, is accepted"),
    ], positive="DEFINE for TCP, which the NAT translates itself, answered HAS_ALG (step 703) with a 1800 s lifetime",
        negative="DEFINE for ESP is not refused"))
    info = chosen.get("info") or {}
    results.append(rec.result("NAT-ALLOC", "unspecified", [
        (_ok(chosen), f"LEASE with nothing specified answered {chosen.get('result')}"),
        (info.get("global_ip") in table["globals"], f"the NAT chose global IP {info.get('global_ip')}"),
        ((info.get("global_gpn") or 0) >= MIN_SPI, f"and SPI {info.get('global_gpn')} (never 0-255)"),
        (info.get("private_gpn") == info.get("global_gpn"), "unspecified private GPN = global GPN"),
        (chosen.get("lifetime") == 3600, f"unspecified lifetime -> default 3600 s ({chosen.get('lifetime')})"),
        (outside_pool.get("result") == "CANNOT_PROVIDE_EXTERNAL",
         f"a global IP outside the pool answered {outside_pool.get('result')}"),
    ], positive=f"unspecified global IP/SPI/private SPI/expiry chosen: {info}",
        negative=f"a global IP outside the pool is refused ({outside_pool.get('result')})"))
    uniq = [(len(set(spis)) == len(clients) == 3, f"SPIs leased on {g1} by three clients: {spis}"),
            (taken.get("result") == "GPN_IN_USE", f"asking for another client's SPI answered {taken.get('result')}")]
    for behaviour in ("NAT-UNIQ", "CL-UNIQ"):
        results.append(rec.result(behaviour, "three-clients-one-global", uniq,
                                  positive=f"three clients behind {g1} hold distinct SPIs {spis}",
                                  negative=f"a request for an SPI in use is refused: {taken.get('result')}"))
    results.append(judge_nat_entry(rec, table, clients, shared))
    return results


def judge_nat_entry(rec, table: dict, clients: list, shared: list[dict]) -> ScenarioResult:
    """NAT-ENTRY: each granted lease stands in the NAT's table with every FIG. 6 field; refusals left none."""
    rows = [e for e in table["entries"] if e["kind"] == "CLIENT-ALG" and e["protocol"] == IPPROTO_ESP]
    fig6 = ("protocol", "private_ip", "private_gpn", "global_ip", "global_gpn", "foreign", "expires_in")
    matches = all(any(r["private_ip"] == h.IP() and r["global_gpn"] == a["info"]["global_gpn"] for r in rows)
                  for h, a in zip(clients, shared, strict=True) if _ok(a))
    return rec.result("NAT-ENTRY", "table", [
        (len(rows) == 4 and matches, f"{len(rows)} ESP entries in natlab table match the answers"),
        (all(all(r.get(k) is not None for k in fig6 if k != "foreign") for r in rows), "every FIG. 6 field set"),
        (bool(rows) and all(r.get("foreign") == SRV1 for r in rows),
         f"foreign per entry {[r.get('foreign') for r in rows]}, asked for {SRV1}"),
        (not any(r["global_ip"] == OFF_PLAN_IP for r in rows), "the refused lease made no entry"),
    ], positive="each answer's values stand in natlab table with protocol, private IP/GPN, global IP/GPN, foreign, "
                "expiry", negative="refused requests left no entry")


@dataclass
class TrafficRun:
    """What leased_traffic's block did and read, for its judges: protocol answers, table readings, captures."""

    clients: list
    g1: str
    g2: str
    leases: dict = field(default_factory=dict)  # client -> its ESP lease's answer
    spi: dict = field(default_factory=dict)  # client -> the SPI it leased on g1
    ike_replies: dict = field(default_factory=dict)  # client -> ISAKMP replies it got by its cookie
    ike_released: dict = field(default_factory=dict)  # client -> the answer to releasing its cookie
    fast: dict = field(default_factory=dict)  # h1's AH lease alone on g2
    slow: tuple[int, int] = (0, 0)  # slow-path packets before and after AH flowed on g2
    fast_flows: list = field(default_factory=list)
    wrong: dict = field(default_factory=dict)  # h1's renewal with a wrong nonce
    renewed: dict = field(default_factory=dict)
    expiry: tuple = (None, None)  # h1's lease's expiry before and after its renewal
    stolen: dict = field(default_factory=dict)  # h2's release of h1's lease
    survived: bool = False
    released: dict = field(default_factory=dict)
    short: dict = field(default_factory=dict)  # h2's 2 s AH lease
    expired_entry: bool = True
    pcaps: dict = field(default_factory=dict)

    @property
    def h1(self):
        return self.clients[0]

    @property
    def h2(self):
        return self.clients[1]


@scenario(covers=("NAT-OUT", "NAT-IN", "NAT-RENEW", "NAT-DEALLOC", "NAT-EXPIRE", "NAT-DROP"), order=90)
def leased_traffic(ctx: Context) -> list[ScenarioResult]:
    """NAT-OUT, NAT-IN, NAT-RENEW, NAT-DEALLOC, NAT-EXPIRE, NAT-DROP on leased protocols, with captures."""
    tb, clients = ctx.testbed, ctx.clients()
    srv1, srv2 = tb.host("srv1"), tb.host("srv2")
    run = TrafficRun(clients, *tb.table()["globals"][:2])
    with ctx.recorded("leased-traffic") as rec:
        intfs = [(h, f"{h.name}-eth0") for h in clients] + [(srv1, "srv1-eth0"), (srv2, "srv2-eth0")]
        reflector = srv1.popen([apps.sys.executable, "-m", "conformance.probes",
                                "reflect", "--seconds", str(REFLECT_S)])
        try:
            with captures(intfs, rec.folder) as pcaps:
                time.sleep(0.3)
                _esp_and_isakmp(tb, run)
                _fast_path(tb, run)
                _renew_and_release(tb, run)
                _expiry(tb, run)
        finally:
            reflector.terminate()
            reflector.wait()
    run.pcaps = pcaps
    seen = _seen(run)
    return [judge(rec, run, seen) for judge in TRAFFIC_JUDGES]


def _esp_and_isakmp(tb, run: TrafficRun) -> None:
    """Each client leases an SPI on g1 and asks srv1 to answer it; ESP to srv2 (no entry) and to an unleased
    SPI (no lease); ISAKMP leased by cookie."""
    clients, g1, srv2 = run.clients, run.g1, tb.host("srv2")
    run.leases = {h.name: lease(h, 50, global_ip=g1) for h in clients}
    run.spi = {name: a["info"]["global_gpn"] for name, a in run.leases.items()}
    for h in clients:  # each client asks srv1 to answer to its own SPI
        apps.probe(h, "raw", SRV1, 50, "--count", 2, "--spi", 0x10000 + int(h.IP().split(".")[-1]),
                   "--reply-spi", run.spi[h.name])
    apps.probe(clients[0], "raw", SRV2, 50, "--count", 2, "--reply-spi", run.spi[clients[0].name])
    apps.probe(srv2, "raw", g1, 50, "--count", 2, "--spi", UNLEASED_SPI)
    ike = {h.name: lease(h, 17, port=500, global_ip=g1) for h in clients}
    run.ike_replies = {h.name: apps.probe(h, "isakmp", SRV1, "--cookie", ike[h.name]["info"]["global_gpn"],
                                          "--count", 2, "--wait", 0.5)["replies"] for h in clients}
    # The cookies go back (lifetime 0): a later IKE SA from port 500 (BASE-NATT) must not meet a stale lease.
    run.ike_released = {h.name: lease(h, 17, port=500, global_ip=g1, private_gpn=ike[h.name]["info"]["global_gpn"],
                                      nonce=ike[h.name]["nonce"], lifetime=0).get("result") for h in clients}


def _fast_path(tb, run: TrafficRun) -> None:
    """One client alone on (AH, g2): r1's flows translate it, the controller sees none of it."""
    g2 = run.g2
    run.fast = lease(run.h1, 51, global_ip=g2)
    slow_before = tb.table()["counters"].get("slow_path_packets", 0)
    apps.probe(run.h1, "raw", SRV1, 51, "--count", 3, "--reply-spi", run.fast["info"]["global_gpn"])
    time.sleep(0.5)
    run.slow = (slow_before, tb.table()["counters"].get("slow_path_packets", 0))
    run.fast_flows = [line for line in tb.dump_flows().splitlines() if f"nw_dst={g2}" in line
                      and "nw_proto=51" in line and "priority=30000" in line]


def _renew_and_release(tb, run: TrafficRun) -> None:
    """Renewal and release, by the owner and by another client; then srv1 sends straight to the old SPI."""
    h1, h2, g1, spi = run.h1, run.h2, run.g1, run.spi[run.h1.name]
    nonce = run.leases[h1.name]["nonce"]
    run.wrong = lease(h1, 50, global_ip=g1, private_gpn=spi, nonce="00" * 12, lifetime=900)
    before = _expires(tb, spi)
    run.renewed = lease(h1, 50, global_ip=g1, private_gpn=spi, nonce=nonce, lifetime=7200)
    run.expiry = (before, _expires(tb, spi))
    run.stolen = lease(h2, 50, global_ip=g1, global_gpn=spi, nonce=nonce, lifetime=0)
    run.survived = _expires(tb, spi) is not None
    run.released = lease(h1, 50, global_ip=g1, private_gpn=spi, nonce=nonce, lifetime=0)
    apps.probe(tb.host("srv1"), "raw", g1, 50, "--count", 2, "--spi", spi)  # straight to the old SPI


def _expiry(tb, run: TrafficRun) -> None:
    """A 2 s lease: answered before its expiry, gone after it."""
    run.short = lease(run.h2, 51, global_ip=run.g1, lifetime=2)
    apps.probe(run.h2, "raw", SRV1, 51, "--count", 1, "--reply-spi", run.short["info"]["global_gpn"])
    time.sleep(3.5)
    run.expired_entry = any(e["global_gpn"] == run.short["info"]["global_gpn"] and e["protocol"] == IPPROTO_AH
                            for e in tb.table()["entries"])
    apps.probe(tb.host("srv1"), "raw", run.g1, 51, "--count", 2, "--spi", run.short["info"]["global_gpn"])
    time.sleep(0.5)  # what a NAT that kept the entry would deliver reaches h2 well within this


@dataclass
class Seen:
    """The captures of leased_traffic as its judges read them."""

    caps: dict
    evidence: list
    got: dict  # client -> SPIs of the ESP it received from srv1 (read from the raw bytes: tshark does not
    #            dissect a made-up ESP body)
    stray: list  # h1's ESP to srv2 (no entry) on h1's wire
    unleased: int  # ESP to an unleased SPI on srv2's wire
    to_srv2: list  # ESP that reached srv2 (must be none)


def _seen(run: TrafficRun) -> Seen:
    pcaps, h1 = run.pcaps, run.h1
    caps = {name: read_pcap(path) for name, path in pcaps.items()}
    return Seen(
        caps=caps, evidence=list(pcaps.values()),
        got={h.name: _spis_received(pcaps[f"{h.name}-eth0"], 50) for h in run.clients},
        stray=[p for p in caps[f"{h1.name}-eth0"] if p.proto == IPPROTO_ESP and p.src == h1.IP() and p.dst == SRV2],
        unleased=_count(pcaps["srv2-eth0"], 50, UNLEASED_SPI, src=SRV2, dst=run.g1),
        to_srv2=[p for p in caps["srv2-eth0"] if p.proto == IPPROTO_ESP and p.dst == SRV2],
    )


def judge_nat_out(rec, run: TrafficRun, seen: Seen) -> ScenarioResult:
    """NAT-OUT: ESP reached srv1 from g1 with its SPIs unchanged, none from a private source."""
    g1 = run.g1
    at_srv1 = [p for p in seen.caps["srv1-eth0"] if p.proto == IPPROTO_ESP and p.dst == SRV1]
    from_private = [p for p in seen.caps["srv1-eth0"] if p.src.startswith("10.")]
    return rec.result("NAT-OUT", "esp-source-rewrite", [
        (len(at_srv1) >= 6 and all(p.src == g1 for p in at_srv1), f"{len(at_srv1)} ESP packets reached srv1, all "
                                                                  f"from {g1}"),
        (not from_private, f"{len(from_private)} packets with private sources on srv1's wire"),
        (_spis_sent(run.pcaps["srv1-eth0"], 50) >= {0x10001, 0x10002, 0x10003}, "SPIs arrive unchanged"),
        (not seen.to_srv2, "ESP to srv2, a foreign with no entry, is dropped"),
        (len(seen.stray) >= 2, f"h1's wire shows {len(seen.stray)} ESP to srv2 (2 sent)"),
    ], positive=f"ESP from three clients reached srv1 from {g1} with their SPIs unchanged (steps 706-707)",
        negative="ESP to a foreign host without an entry never reached it", extra_evidence=seen.evidence)


def judge_nat_in_demux(rec, run: TrafficRun, seen: Seen) -> ScenarioResult:
    """NAT-IN (slow path): each client got ESP to its own SPI only; ISAKMP by cookie; an unleased SPI nobody."""
    spi, got, unleased = run.spi, seen.got, seen.unleased
    right = all(spi[h.name] in got[h.name] for h in run.clients)
    crossed = {h.name: sorted(got[h.name] - {spi[h.name]}) for h in run.clients}
    return rec.result("NAT-IN", "esp-demux", [
        (right, f"each client received ESP to its own SPI: {{name: sorted(spis)}} = {got}"),
        (not any(crossed.values()), f"SPIs delivered to the wrong client: {crossed}"),
        (unleased >= 2 and not any(UNLEASED_SPI in s for s in got.values()),
         f"an unleased SPI ({unleased} on srv2's wire) reached no one"),
        (all(n >= 1 for n in run.ike_replies.values()), f"ISAKMP replies demultiplexed by cookie: {run.ike_replies}"),
        (set(run.ike_released.values()) == {"SUCCESS"}, f"cookie leases released: {run.ike_released}"),
    ], positive=f"srv1's ESP to {run.g1} reached the client that leased each SPI {spi}; ISAKMP by cookie "
                f"{run.ike_replies}", negative="no client received another's SPI; an unleased SPI was dropped",
        extra_evidence=seen.evidence)


def judge_nat_in_fast(rec, run: TrafficRun, seen: Seen) -> ScenarioResult:
    """NAT-IN (fast path): one client alone on (AH, g2) is translated by a flow in r1."""
    g2, fast, (slow_before, slow_after) = run.g2, run.fast, run.slow
    return rec.result("NAT-IN", "fast-path", [
        (_ok(fast) and fast["info"]["global_ip"] == g2, f"an AH lease alone on {g2}: {fast.get('result')}"),
        (slow_after == slow_before, f"slow-path packets {slow_before} -> {slow_after} while AH flowed on {g2}"),
        (bool(run.fast_flows), "a flow in r1 translates AH to the client"),
    ], positive=f"one client alone on (AH, {g2}): translated by a flow in r1", negative="the controller saw none of it",
        extra_evidence=seen.evidence)


def judge_nat_renew(rec, run: TrafficRun, seen: Seen) -> ScenarioResult:
    """NAT-RENEW: the owner's renewal extends the lease; a wrong nonce is refused."""
    wrong, renewed, (before, after) = run.wrong, run.renewed, run.expiry
    return rec.result("NAT-RENEW", "owner-renews", [
        (wrong.get("result") == "NOT_AUTHORIZED", f"renewal with a wrong nonce answered {wrong.get('result')}"),
        (_ok(renewed) and renewed.get("lifetime") == 7200, f"renewal by the owner answered {renewed.get('result')}"
                                                          f" {renewed.get('lifetime')} s"),
        (after is not None and before is not None and after > before + 3000, f"expiry {before} -> {after} s"),
    ], positive="the owner's renewal (same nonce, same origin) extended the lease", negative="a wrong nonce was refused")


def judge_nat_dealloc(rec, run: TrafficRun, seen: Seen) -> ScenarioResult:
    """NAT-DEALLOC: the owner's release (lifetime 0) ends the entry at once; another client's is refused."""
    h1, g1, spi, stolen, released = run.h1, run.g1, run.spi[run.h1.name], run.stolen, run.released
    srv1_to_old = _count(run.pcaps["srv1-eth0"], 50, spi, src=SRV1, dst=g1)
    h1_got_old = _count(run.pcaps[f"{h1.name}-eth0"], 50, spi, src=SRV1)
    return rec.result("NAT-DEALLOC", "release", [
        (stolen.get("result") == "NOT_AUTHORIZED", f"release by another client answered {stolen.get('result')}"),
        (run.survived, "h1's entry survived h2's attempt"),
        (_ok(released) and released.get("lifetime") == 0, f"release by the owner answered {released.get('result')}"),
        (gone_after(srv1_to_old, h1_got_old, before=2, after=2), f"srv1's wire shows {srv1_to_old} ESP to h1's SPI on {g1} (2 answers "
                                               f"before the release, 2 after); h1 got {h1_got_old}, the 2 before"),
    ], positive=f"the owner released its lease with lifetime 0: srv1 sent {srv1_to_old} ESP to the SPI, h1 got "
                f"{h1_got_old}", negative=f"another client could not: {stolen.get('result')}",
        extra_evidence=seen.evidence)


def judge_nat_expire(rec, run: TrafficRun, seen: Seen) -> ScenarioResult:
    """NAT-EXPIRE: a 2 s lease's entry is erased at its expiry; what srv1 sends after it reaches nobody."""
    short, h2 = run.short, run.h2
    short_spi = (short.get("info") or {}).get("global_gpn")
    srv1_to_short = _count(run.pcaps["srv1-eth0"], 51, short_spi, src=SRV1, dst=run.g1)
    h2_got_short = _count(run.pcaps[f"{h2.name}-eth0"], 51, short_spi, src=SRV1)
    return rec.result("NAT-EXPIRE", "short-lease", [
        (_ok(short), f"a 2 s lease was granted ({short.get('lifetime')} s)"),
        (not run.expired_entry, "the entry was erased at its expiry"),
        (gone_after(srv1_to_short, h2_got_short, before=1, after=2), f"srv1's wire shows {srv1_to_short} AH to the short lease's SPI "
                                                   f"(1 before expiry, 2 after); h2 got {h2_got_short}, the 1 before"),
    ], positive=f"before expiry srv1's AH answer reached h2 ({h2_got_short})",
        negative=f"after expiry the entry was gone: {srv1_to_short - 1} more AH left srv1, none reached h2",
        extra_evidence=seen.evidence)


def judge_nat_drop(rec, run: TrafficRun, seen: Seen) -> ScenarioResult:
    """NAT-DROP on leased protocols: ESP to an unleased SPI, or to a foreign without an entry, goes nowhere."""
    unleased, stray = seen.unleased, seen.stray
    return rec.result("NAT-DROP", "leased-protocols", [
        (unleased >= 2 and not any(UNLEASED_SPI in s for s in seen.got.values()),
         f"ESP to an unleased SPI dropped ({unleased} on srv2's wire)"),
        (len(stray) >= 2 and not seen.to_srv2,
         f"ESP to a foreign without an entry dropped ({len(stray)} on h1's wire)"),
    ], positive=f"srv2 sent {unleased} ESP to an SPI nobody leased; h1 sent {len(stray)} ESP to srv2 without a lease",
        negative="neither reached its destination", extra_evidence=seen.evidence)


# leased_traffic's verdicts, in report order: one judge each.
TRAFFIC_JUDGES = (judge_nat_out, judge_nat_in_demux, judge_nat_in_fast, judge_nat_renew, judge_nat_dealloc,
                  judge_nat_expire, judge_nat_drop)


def gone_after(sent: int, received: int, *, before: int, after: int) -> bool:
    """An entry gone at an instant: the sender's own wire shows ``before`` + ``after`` packets to it,
    the receiver got exactly the ``before`` ones. Without the sender's count, "none after" proves nothing."""
    return sent >= before + after and received == before


def _expires(tb, spi: int) -> float | None:
    return next((e["expires_in"] for e in tb.table()["entries"] if e["global_gpn"] == spi), None)


def _raw_packets(path, proto: int):
    from scapy.layers.inet import IP
    from scapy.utils import rdpcap

    for pkt in rdpcap(str(path)):
        if IP in pkt and pkt[IP].proto == proto:
            yield pkt[IP]


def _spi(ip, proto: int) -> int:
    body = bytes(ip.payload)
    return int.from_bytes(body[4:8] if proto == IPPROTO_AH else body[0:4], "big")


def _spis_received(path, proto: int) -> set[int]:
    return {_spi(ip, proto) for ip in _raw_packets(path, proto) if ip.src == SRV1}


def _spis_sent(path, proto: int) -> set[int]:
    return {_spi(ip, proto) for ip in _raw_packets(path, proto) if ip.dst == SRV1}


def _count(path, proto: int, spi: int | None, src: str | None = None, dst: str | None = None) -> int:
    """ESP/AH packets of ``path`` with ``spi``, from ``src`` and to ``dst`` when given."""
    return sum(1 for ip in _raw_packets(path, proto) if _spi(ip, proto) == spi and src in (None, ip.src)
               and dst in (None, ip.dst))
