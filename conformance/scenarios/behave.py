"""The BEHAVE ledger on the live testbed (issue 14): RFC 4787, 5382, 5508, 6888, 7857.

Traffic first (``_udp``, ``_tcp``, ``_icmp``, ``_hairpin``, ``_fragments``, ``_oracle``: real
sockets in the hosts, scapy only for fragments and ICMP errors no application sends), each
block noting what it saw in ``Seen.facts``; then one small named check per requirement
(``CHECKS``), each judging from those facts with the peers' own logs (who reached them, from
which address and port), the kernels' answers (a reply, ECONNREFUSED, a timeout), r1's flow
table as OVS prints it, and coturn's ``turnutils_natdiscovery`` (RFC 5780), which nobody here
wrote. A block that fails leaves its facts missing: the checks that need them raise and their
rows are errors, never passes (``conformance/ledger.py``).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conformance import apps, ledger, natdiscovery
from conformance.context import Context
from conformance.ledger import Outcome
from conformance.results import ScenarioResult
from conformance.scenario import scenario
from nat_app.config import NatConfig
from netwire.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from topo.natlab import INSIDE_NET, server_ip

SRV1, SRV2 = server_ip(1), server_ip(2)
# coturn's second address on srv1 (RFC 5780 needs two): srv1's own plus 10, free in the testbed's plan.
SRV1_ALT = str(ipaddress.IPv4Address(SRV1) + 10)
ECHO = 7  # RFC 862
TCP_LOG = 8081
SERVICE_S = 240.0
LISTEN_TIMEOUT_S = 10.0
INSIDE_PORT, OUTSIDE_PORT = NatConfig().inside_port, NatConfig().outside_port  # r1's ports
IPERF_PORT, FRAG_DATAGRAM = 5210, 3000  # iperf3 UDP datagrams above the 1500-byte MTU: every one fragmented
UNSOLICITED_WAIT_S = 6.5  # RFC 5382 REQ-4: no answer to an unsolicited SYN for at least 6 s


@dataclass
class Seen:
    ctx: Context
    folder: Path
    facts: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)

    def host(self, name: str):
        return self.ctx.testbed.host(name)

    def table(self) -> dict:
        return self.ctx.testbed.table()


@scenario(covers=("NAT-AUTO",), order=92)
def behave(ctx: Context) -> list[ScenarioResult]:
    """Run the traffic, judge every ledger row, write the ledger beside the evidence."""
    rows = ledger.load()
    with ctx.recorded("behave") as rec:
        seen = Seen(ctx, rec.folder)
        for block in (_udp, _tcp, _icmp, _hairpin, _fragments, _oracle):
            try:
                block(seen)
            except Exception as exc:  # the rows needing this block's facts become errors
                seen.errors[block.__name__] = repr(exc)
        seen.facts["flows"] = ctx.testbed.dump_flows()
        log = _controller_log(ctx)
        seen.facts["controller_log"] = log.read_text(errors="replace") if log.exists() else ""
        kept = {k: v for k, v in seen.facts.items() if k != "controller_log"} | {"block_errors": seen.errors}
        (rec.folder / "facts.json").write_text(json.dumps(kept, indent=1, default=str) + "\n")
    outcomes = run_checks(seen)
    lines = ledger.judge(rows, outcomes, seen.facts.get("oracle"))
    ledger.write_json(lines, rec.folder / "ledger.json")
    extra = [rec.folder / "ledger.json", rec.folder / "facts.json", *sorted(rec.folder.glob("*.log"))]
    return [_result(rec, line, extra) for line in lines if line.verdict not in ("n/a", "not checked", "not met")]


def _controller_log(ctx: Context) -> Path:
    """The NAT controller's log: behave runs on the extensible-NAT testbed, which always has a controller."""
    controller = ctx.testbed.controller
    if controller is None:
        raise RuntimeError("behave: the testbed runs no NAT controller, so there is no controller log to read")
    return controller.log


def _result(rec, line: ledger.Line, extra: list[Path]) -> ScenarioResult:
    r = line.requirement
    checks = [(line.verdict == "pass", line.reason or f"{r.name} {line.verdict}")]
    oracle = f"; coturn natdiscovery: {r.oracle} {line.oracle}" if line.oracle else ""
    return rec.result(ledger.BEHAVIOUR, f"rfc{r.rfc}-{r.req.lower()}", checks,
                      cell={"ledger": r.name, "level": r.level},
                      positive=f"{r.name} ({r.level}, {r.text}): {line.positive}{oracle}",
                      negative=line.negative or line.reason, extra_evidence=extra)


def run_checks(seen: Seen) -> dict[str, Outcome | Exception]:
    """Every check once (several rows may share one); a check that raises is recorded as such."""
    outcomes: dict[str, Outcome | Exception] = {}
    for name, check in CHECKS.items():
        try:
            outcomes[name] = check(seen.facts)
        except Exception as exc:
            outcomes[name] = exc
    return outcomes


# ------------------------------------------------------------------------------------------- the hosts

def bprobe(host, *args: str | int | float) -> dict:
    """``python -m conformance.behave_probes ARGS`` in ``host``; its JSON answer."""
    out = host.cmd(f"{sys.executable} -m conformance.behave_probes "
                   + " ".join(str(a) for a in args))
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"behave probe {args} in {host.name} printed no answer: {out.strip()[-300:]}")
    return json.loads(lines[-1])


def listening(host, transport: str, port: int, argv: list[str]) -> apps.Service:
    """A server in ``host``, returned once ``ss`` shows it bound (no datagram may meet a closed port)."""
    service = apps.Service(host, argv, settle=0)
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while not host.cmd(f"ss -Hn{transport[0]}l 'sport = :{port}'").strip():
        if service.proc.poll() is not None or time.monotonic() > deadline:
            service.__exit__()
            raise RuntimeError(f"{argv} never listened in {host.name}")
        time.sleep(0.05)
    return service


def udp_echo(host, ip: str, port: int, log: Path) -> apps.Service:
    return listening(host, "udp", port, [sys.executable, "-m", "conformance.probes", "udp-echo", ip, str(port),
                                         "--seconds", str(SERVICE_S), "--log", str(log)])


def tcp_logger(host, ip: str, port: int, log: Path) -> apps.Service:
    return listening(host, "tcp", port, [sys.executable, "-m", "conformance.behave_probes", "tcp-log-server", ip,
                                         str(port), "--seconds", str(SERVICE_S), "--log", str(log)])


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def entries(table: dict, protocol: int, private_ip: str, port: int) -> list[dict]:
    return [e for e in table["entries"] if (e["protocol"], e["private_ip"], e["private_gpn"]) ==
            (protocol, private_ip, port)]


# ------------------------------------------------------------------------------------------- traffic

def _udp(seen: Seen) -> None:
    """Mapping, filtering, overloading, ALG, ICMP errors about UDP (RFC 4787)."""
    h1, srv1, srv2 = seen.host("h1"), seen.host("srv1"), seen.host("srv2")
    clients = seen.ctx.clients()
    f = seen.facts
    logs = {n: seen.folder / f"udp-echo-{n}.log" for n in ("srv1", "srv2")}
    with udp_echo(srv1, SRV1, ECHO, logs["srv1"]), udp_echo(srv2, SRV2, ECHO, logs["srv2"]):
        text = f"{h1.IP()}:40001"  # an address an ALG would rewrite
        f["eim_replies"] = [bprobe(h1, "udp-from", dst, ECHO, "--sport", 40001, "--text", text)["reply_len"]
                            for dst in (SRV1, SRV2, SRV1)]
        f["overload_sent"] = [bprobe(h, "udp-from", SRV1, ECHO, "--sport", 40005)["reply_len"] for h in clients]
        f["refused_in"] = bprobe(h1, "udp-from", SRV2, 9, "--sport", 40003).get("error")
        f["after_refused"] = bprobe(h1, "udp-from", SRV1, ECHO, "--sport", 40003)["reply_len"]
        f["after_refused_entries"] = entries(seen.table(), 17, h1.IP(), 40003)
        bprobe(h1, "udp-from", SRV1, 9999, "--sport", 40002, "--wait", 0.3)  # a mapping toward srv1 only
        mapping = entries(seen.table(), 17, h1.IP(), 40002)[0]
        target = (mapping["global_ip"], mapping["global_gpn"])
        f["filter_target"] = target
        f["filter_srv1"] = apps.probe(srv1, "udp-refused", *target)  # srv1, another port: passes ADF
        f["filter_srv2"] = apps.probe(srv2, "udp-refused", *target)  # srv2: filtered
    f["udp_logs"] = {n: read_log(p) for n, p in logs.items()}
    f["h1_ip"] = h1.IP()
    f["client_ips"] = [h.IP() for h in clients]


def _tcp(seen: Seen) -> None:
    """TCP mapping, filtering, unsolicited SYN, timers, simultaneous open (RFC 5382)."""
    h1, srv1, srv2 = seen.host("h1"), seen.host("srv1"), seen.host("srv2")
    f = seen.facts
    logs = {n: seen.folder / f"tcp-log-{n}.log" for n in ("srv1", "srv2")}
    with tcp_logger(srv1, SRV1, TCP_LOG, logs["srv1"]), tcp_logger(srv2, SRV2, TCP_LOG, logs["srv2"]):
        text = f"{h1.IP()}:41001"
        f["tcp_sends"] = [bprobe(h1, "tcp-send", dst, TCP_LOG, "--sport", 41001, "--text", text)
                          for dst in (SRV1, SRV2)]
        f["tcp_closed_entries"] = _wait_for(lambda: [e for e in entries(seen.table(), 6, h1.IP(), 41001)
                                                     if e.get("tcp_phase") == "transitory"], want=2)
        f["flows_after_close"] = seen.ctx.testbed.dump_flows()
        held = h1.popen([sys.executable, "-m", "conformance.behave_probes", "tcp-send", SRV1, str(TCP_LOG),
                         "--sport", "41002", "--text", "hold", "--hold", "20"], stdout=subprocess.PIPE, text=True)
        f["tcp_open_entries"] = _wait_for(lambda: [e for e in entries(seen.table(), 6, h1.IP(), 41002)
                                                   if e.get("tcp_phase") == "established"])
        f["flows_while_open"] = seen.ctx.testbed.dump_flows()
        held.terminate()
        held.wait()
        mapped = entries(seen.table(), 6, h1.IP(), 41002)[0]  # toward srv1 only (41001 went to both servers)
        target = (mapped["global_ip"], mapped["global_gpn"])
        f["tcp_target"] = target
        before = seen.table()["counters"].get("drop:unsolicited-syn", 0)
        f["syn_srv2"] = apps.probe(srv2, "tcp-syn", *target, "--wait", UNSOLICITED_WAIT_S)
        f["unsolicited_counted"] = seen.table()["counters"].get("drop:unsolicited-syn", 0) - before
        f["syn_srv1"] = apps.probe(srv1, "tcp-syn", *target, "--wait", 2)  # h1's kernel answers RST: it passed
    f["tcp_logs"] = {n: read_log(p) for n, p in logs.items()}
    _simultaneous_open(seen)


def _simultaneous_open(seen: Seen) -> None:
    """srv1 connects to h1's global address and port first (its SYNs are unsolicited until h1's goes out),
    then h1 to srv1: the SYNs cross, RFC 793's simultaneous open, with two real kernels."""
    h1, srv1 = seen.host("h1"), seen.host("srv1")
    paired = [e["global_ip"] for e in seen.table()["entries"] if e["private_ip"] == h1.IP()]
    peer = srv1.popen([sys.executable, "-m", "conformance.behave_probes", "simopen", paired[0], "42001",
                       "--sport", "42002", "--wait", "12"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    mine = bprobe(h1, "simopen", SRV1, 42002, "--sport", 42001, "--wait", 12)
    out, _ = peer.communicate(timeout=20)
    seen.facts["simopen"] = {"h1": mine, "srv1": json.loads(out.strip().splitlines()[-1])}


def _icmp(seen: Seen) -> None:
    """Queries, errors both ways, bad checksums, other error types, non-query messages (RFC 5508)."""
    h1, srv1 = seen.host("h1"), seen.host("srv1")
    f = seen.facts
    f["ping"] = apps.ping(h1, SRV1)
    f["icmp_entries"] = [e for e in seen.table()["entries"] if e["protocol"] == IPPROTO_ICMP]
    mapped = entries(seen.table(), 17, h1.IP(), 40003)
    if not mapped:
        bprobe(h1, "udp-from", SRV1, 9999, "--sport", 40003, "--wait", 0.3)
        mapped = entries(seen.table(), 17, h1.IP(), 40003)
    g, p = mapped[0]["global_ip"], mapped[0]["global_gpn"]
    before = seen.table()["counters"]
    sent = [(3, 3, 1), (3, 3, 0), (11, 0, 0), (12, 0, 0)]
    for icmp_type, code, bad in sent:
        bprobe(srv1, "icmp-error", g, g, SRV1, "--sport", p, "--dport", 9999, "--icmp-type", icmp_type,
               "--code", code, "--bad-checksum", bad)
    bprobe(srv1, "icmp-error", g, g, SRV1, "--sport", 65000, "--dport", 9999)  # about nothing mapped
    names = ("drop:icmp-error-bad-checksum", "icmp_errors_translated", "drop:icmp-error-no-entry")
    f["icmp_counters"] = _counted(seen, before, names, dict(zip(names, (1, 3, 1), strict=True)))
    f["icmp_entry_after_errors"] = entries(seen.table(), 17, h1.IP(), 40003)
    before = seen.table()["counters"]
    bprobe(srv1, "icmp-error", g, g, SRV1, "--icmp-type", 9, "--code", 0)  # a router advertisement: no error
    f["router_advert_counted"] = _counted(seen, before, ("drop:no-entry",), {"drop:no-entry": 1})["drop:no-entry"]


def _hairpin(seen: Seen) -> None:
    """h1 reaches h2 through h2's global address and port: UDP, TCP (MAP leases), and an ICMP error
    hairpinned back (a NAT-ALG mapping of h2 to a closed port)."""
    h1, h2 = seen.host("h1"), seen.host("h2")
    f = seen.facts
    udp_log, tcp_log = seen.folder / "hairpin-udp-h2.log", seen.folder / "hairpin-tcp-h2.log"
    lease = f"natlab lease alloc --state {seen.folder}/h2-leases.json"
    with udp_echo(h2, h2.IP(), 44001, udp_log), tcp_logger(h2, h2.IP(), 44003, tcp_log):
        f["map_udp_out"] = h2.cmd(f"{lease} --protocol udp --private-gpn 44001 --lifetime 600")
        f["map_tcp_out"] = h2.cmd(f"{lease} --protocol tcp --private-gpn 44003 --lifetime 600")
        table = seen.table()
        udp_map, tcp_map = entries(table, 17, h2.IP(), 44001)[0], entries(table, 6, h2.IP(), 44003)[0]
        f["hairpin_udp"] = bprobe(h1, "udp-from", udp_map["global_ip"], udp_map["global_gpn"], "--sport", 44002)
        f["hairpin_tcp"] = bprobe(h1, "tcp-send", tcp_map["global_ip"], tcp_map["global_gpn"], "--sport", 44004)
        f["hairpin_targets"] = {"udp": udp_map, "tcp": tcp_map}
    bprobe(h2, "udp-from", SRV1, 9999, "--sport", 44005, "--wait", 0.3)  # h2's mapping; nothing listens on it
    closed = entries(seen.table(), 17, h2.IP(), 44005)[0]
    f["hairpin_icmp"] = bprobe(h1, "udp-from", closed["global_ip"], closed["global_gpn"], "--sport", 44006)
    h2.cmd(f"natlab lease release --all --state {seen.folder}/h2-leases.json")
    f["hairpin_logs"] = {"udp": read_log(udp_log), "tcp": read_log(tcp_log)}
    f["h1_entries"] = [e for e in seen.table()["entries"] if e["private_ip"] == h1.IP()]


def _fragments(seen: Seen) -> None:
    """A 3000-byte datagram as scapy fragments in order, reversed, first last; a 4000-byte datagram
    the kernel fragments (any application's large UDP): the echo comes back fragmented by srv1."""
    h1, srv1 = seen.host("h1"), seen.host("srv1")
    f = seen.facts
    log = seen.folder / "fragments-srv1.log"
    before = seen.table()["counters"]
    with udp_echo(srv1, SRV1, ECHO, log):
        f["frag_orders"] = {order: bprobe(h1, "frag-udp", SRV1, ECHO, "--sport", 45001 + i, "--size", 3000,
                                          "--order", order)
                            for i, order in enumerate(("in", "reversed", "first-last"))}
        f["frag_kernel"] = bprobe(h1, "udp-from", SRV1, ECHO, "--sport", 45010, "--size", 4000)
        _ip_id_collision(seen)
    with apps.iperf3_server(srv1, IPERF_PORT):  # a real application's large datagrams, fragmented by h1's kernel
        f["frag_iperf3"] = _iperf3_udp(h1, SRV1, IPERF_PORT, FRAG_DATAGRAM)
    after = seen.table()["counters"]
    f["frag_counters"] = {k: after.get(k, 0) - before.get(k, 0) for k in after
                          if k.startswith(("drop:fragment", "fragments_"))}
    f["frag_log"] = [{k: v for k, v in e.items() if k != "text"} | {"len": len(e["text"])} for e in read_log(log)]


def _ip_id_collision(seen: Seen) -> None:
    """RFC 7857 3.9: h1 leaves an incomplete fragmented datagram in srv1's reassembly (all but its last
    fragment), then a client behind the same global address sends a whole one with the same IP ID. If
    the NAT kept the IDs, srv1 would see overlapping fragments under one key and drop both (Linux drops
    the whole queue); renumbered, the second is echoed whole."""
    h1 = seen.host("h1")
    table = seen.table()
    mine = {e["global_ip"] for e in table["entries"] if e["private_ip"] == h1.IP() and e["kind"] == "NAT-ALG"}
    mates = [h for h in seen.ctx.clients() if h is not h1 and any(
        e["private_ip"] == h.IP() and e["kind"] == "NAT-ALG" and e["global_ip"] in mine for e in table["entries"])]
    seen.facts["ip_id_mate"] = mates[0].name if mates else None
    if not mates:
        return
    bprobe(h1, "frag-udp", SRV1, ECHO, "--sport", 45020, "--order", "all-but-last", "--ident", 4242, "--wait", 0.2)
    seen.facts["ip_id_second"] = bprobe(mates[0], "frag-udp", SRV1, ECHO, "--sport", 45021, "--ident", 4242)


def _iperf3_udp(host, dst: str, port: int, length: int) -> dict:
    """iperf3 UDP for 1 s at 2 Mbit/s with ``length``-byte datagrams: what the server counted."""
    out = host.cmd(f"iperf3 -c {dst} -p {port} -u -b 2M -l {length} -t 1 -J")
    try:
        s = json.loads(out[out.index("{"):])["end"]["sum"]
    except (ValueError, KeyError):
        return {"packets": 0, "lost": 0, "error": out.strip()[-200:]}
    return {"packets": s.get("packets", 0), "lost": s.get("lost_packets", 0)}


def _oracle(seen: Seen) -> None:
    """coturn on srv1 with two addresses; turnutils_natdiscovery from h1 through the NAT."""
    outs = discover(seen.host("h1"), seen.host("srv1"))
    (seen.folder / "natdiscovery.log").write_text("\n".join(f"$ natdiscovery {t}\n{o}" for t, o in outs.items()))
    seen.facts["oracle"] = natdiscovery.classify(outs["-m"], outs["-f"], outs["-H"])


def discover(client, server) -> dict[str, str]:
    """turnutils_natdiscovery's mapping (-m), filtering (-f) and hairpinning (-H) runs from ``client``
    against coturn on ``server``, which gets its second address (RFC 5780 needs two) for the while."""
    server.cmd(f"ip addr add {SRV1_ALT}/24 dev {server.name}-eth0")
    try:
        with listening(server, "udp", natdiscovery.STUN_PORT, natdiscovery.server_argv((SRV1, SRV1_ALT))):
            return {t: client.cmd(" ".join(["timeout", "40", *natdiscovery.client_argv(SRV1, t)]))
                    for t in ("-m", "-f", "-H")}
    finally:
        server.cmd(f"ip addr del {SRV1_ALT}/24 dev {server.name}-eth0")


def _wait_for(get: Callable[[], list], want: int = 1, seconds: float = 5.0) -> list:
    """What ``get`` returns once it holds ``want`` items (the controller works asynchronously), or at the deadline."""
    deadline = time.monotonic() + seconds
    while len(got := get()) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def _counted(seen: Seen, before: dict, names: tuple[str, ...], want: dict[str, int]) -> dict[str, int]:
    """Counter deltas since ``before``, once each named in ``want`` reached its value (or at the deadline)."""
    def deltas() -> dict[str, int]:
        after = seen.table()["counters"]
        return {k: after.get(k, 0) - before.get(k, 0) for k in names}

    got = _wait_for(lambda: [d] if all((d := deltas())[k] >= n for k, n in want.items()) else [])
    return got[0] if got else deltas()


# ------------------------------------------------------------------------------------------- checks

def _private(ip: str) -> bool:
    return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(INSIDE_NET)


def _has_port(line: str, port_field: str, port: int) -> bool:
    """Whether a flow line of ovs-ofctl matches this port; OVS prints tcp_src/udp_src as tp_src (and _dst)."""
    generic = "tp_" + port_field.split("_")[1]
    return re.search(rf"\b({port_field}|{generic})={port}\b", line) is not None


def _flow_timeouts(flows: str, proto: str, port_field: str, port: int) -> list[int]:
    """idle_timeout of r1's outbound flows of one private port, as ovs-ofctl prints them."""
    return [int(m.group(1)) for line in flows.splitlines()
            if _has_port(line, port_field, port) and f",{proto}," in line.replace(" ", ",")
            for m in [re.search(r"idle_timeout=(\d+)", line)] if m]


def eim_udp(f: dict) -> Outcome:
    """RFC 4787 REQ-1: srv1, srv2 and srv1 again saw h1's port 40001 as one global (address, port)."""
    seen = [(e["src"], e["sport"]) for n in ("srv1", "srv2") for e in f["udp_logs"][n]
            if e["text"].startswith(f"{f['h1_ip']}:40001")]
    oracle = f.get("oracle", {}).get("mapping")
    ok = len(seen) == 3 and len(set(seen)) == 1 and not _private(seen[0][0]) and oracle in (None, "endpoint-independent")
    return Outcome(ok, f"the echo servers logged h1:40001 as {sorted(set(seen))} ({len(seen)} datagrams, 2 servers)",
                   f"{len(set(seen))} distinct external endpoints; coturn mapping: {oracle}")


def eim_tcp(f: dict) -> Outcome:
    """RFC 5382 REQ-1: srv1 and srv2 logged h1's TCP port 41001 from one global (address, port)."""
    seen = [(e["src"], e["sport"]) for n in ("srv1", "srv2") for e in f["tcp_logs"][n] if "41001" in e["text"]]
    ok = len(seen) == 2 and len(set(seen)) == 1 and not _private(seen[0][0])
    return Outcome(ok, f"the TCP loggers saw h1:41001 as {sorted(set(seen))}", f"{len(set(seen))} distinct endpoints")


def paired(f: dict) -> Outcome:
    """RFC 4787 REQ-2: every entry of h1 (UDP, TCP, ICMP) on one global address."""
    globals_ = {e["global_ip"] for e in f["h1_entries"] if e["kind"] == "NAT-ALG"}
    protos = {e["protocol"] for e in f["h1_entries"] if e["kind"] == "NAT-ALG"}  # a lease's UDP is no NAPT mapping
    return Outcome(len(globals_) == 1 and {IPPROTO_TCP, IPPROTO_UDP} <= protos, f"h1's entries of protocols {sorted(protos)} all on "
                   f"{sorted(globals_)}", f"{len(globals_)} global addresses for one host")


def no_overloading(f: dict) -> Outcome:
    """RFC 4787 REQ-3, RFC 5382 REQ-7: every client's port 40005 became a distinct external endpoint."""
    seen = [(e["src"], e["sport"]) for e in f["udp_logs"]["srv1"] if e["text"].startswith("natlab")
            and e["sport"] != ECHO]
    mine = [s for s in seen if s[1] != 40001]
    n = len(f["client_ips"])
    return Outcome(len(set(mine)) >= n and all(r > 0 for r in f["overload_sent"]),
                   f"{n} clients from port 40005: srv1 logged {sorted(set(mine))}",
                   f"{len(mine) - len(set(mine))} repeated endpoints")


def port_preservation(f: dict) -> Outcome:
    """RFC 4787 REQ-4 / RFC 7857 3.7 (MAY): the private port kept when free (parity with it)."""
    seen = {e["sport"] for e in f["udp_logs"]["srv1"] if e["text"].startswith(f"{f['h1_ip']}:40001")}
    return Outcome(seen == {40001}, f"h1's port 40001 reached srv1 as port(s) {sorted(seen)}", "no other port used")


def port_randomness(f: dict) -> Outcome:
    """RFC 6888 REQ-15, RFC 7857 3.8: a port not preserved is random, not the next one."""
    by_global: dict[str, list[int]] = {}
    for e in f["udp_logs"]["srv1"]:
        if e["text"].startswith("natlab") and e["sport"] != 40001:
            by_global.setdefault(e["src"], []).append(e["sport"])
    shared = {g: ports for g, ports in by_global.items() if len(set(ports)) > 1}
    moved = [p for ports in shared.values() for p in ports if p != 40005]
    ok = bool(moved) and all(abs(p - 40005) > 1 for p in moved)
    return Outcome(ok, f"clients sharing a global sent from 40005 and were given {shared}",
                   "no sequential neighbour of the taken port" if ok else "no shared global, or a sequential port")


def udp_timer(f: dict) -> Outcome:
    """RFC 4787 REQ-5: r1's outbound UDP flow idles out after at least 120 s."""
    t = _flow_timeouts(f["flows"], "udp", "udp_src", 40001)
    return Outcome(bool(t) and min(t) >= 120, f"r1's flow for h1:40001 has idle_timeout={t}", "none below 120 s")


def outbound_refresh(f: dict) -> Outcome:
    """RFC 4787 REQ-6 (and RFC 7857 3.6): the idle timer sits on the outbound flow only; inbound packets
    do not keep a mapping alive (the inbound flow carries no timeout and dies with the entry)."""
    lines = [ln for ln in f["flows"].splitlines() if ",udp," in ln.replace(" ", ",")]
    out = [ln for ln in lines if _has_port(ln, "udp_src", 40001) and f"in_port={INSIDE_PORT}," in ln and "idle_timeout" in ln]
    inbound = [ln for ln in lines if _has_port(ln, "udp_dst", 40001) and f"in_port={OUTSIDE_PORT}," in ln]
    ok = bool(out) and bool(inbound) and not any("idle_timeout" in ln for ln in inbound)
    return Outcome(ok, f"outbound flow with an idle timeout: {len(out)}; inbound flows: {len(inbound)}",
                   "no idle timeout on an inbound flow")


def filtering_udp(f: dict) -> Outcome:
    """RFC 4787 REQ-8: srv1 from another port reaches h1's mapping (h1's kernel answered port unreachable, which
    came back translated: ECONNREFUSED), srv2 does not (timeout): address-dependent filtering."""
    allowed, blocked = f["filter_srv1"], f["filter_srv2"]
    oracle = f.get("oracle", {}).get("filtering")
    ok = allowed.get("refused") is True and blocked.get("refused") is False and not blocked.get("reply") \
        and oracle in (None, "address-dependent")
    return Outcome(ok, f"srv1 (another port) to {f['filter_target']}: {allowed}", f"srv2: {blocked}; coturn: {oracle}")


def filtering_tcp(f: dict) -> Outcome:
    """RFC 5382 REQ-3: srv1's SYN from another port reaches h1 (its kernel's RST refuses it), srv2's does not."""
    ok = f["syn_srv1"].get("error") == "ConnectionRefusedError" and f["syn_srv2"].get("error") == "TimeoutError"
    return Outcome(ok, f"srv1 SYN to {f['tcp_target']}: {f['syn_srv1']}", f"srv2 SYN: {f['syn_srv2']}")


def unsolicited_syn(f: dict) -> Outcome:
    """RFC 5382 REQ-4: srv2's SYN got no answer for 6.5 s (no RST, no ICMP: a timeout), counted as dropped."""
    ok = f["syn_srv2"].get("error") in ("TimeoutError", "timeout") and f["unsolicited_counted"] >= 1
    return Outcome(ok, f"srv2's SYN to h1's mapping: {f['syn_srv2']} after {UNSOLICITED_WAIT_S} s",
                   f"{f['unsolicited_counted']} counted as drop:unsolicited-syn; no RST or ICMP came back")


def tcp_timers(f: dict) -> Outcome:
    """RFC 5382 REQ-5, RFC 7857 3.1: an open connection's flow idles after 7440 s, a closed one's after 240 s."""
    open_t = _flow_timeouts(f["flows_while_open"], "tcp", "tcp_src", 41002)
    closed_t = _flow_timeouts(f["flows_after_close"], "tcp", "tcp_src", 41001)
    phases = [e.get("tcp_phase") for e in f["tcp_closed_entries"]]
    ok = bool(open_t) and min(open_t) >= 7440 and bool(closed_t) and 240 <= min(closed_t) < 7440 \
        and set(phases) == {"transitory"} and bool(f["tcp_open_entries"])
    return Outcome(ok, f"r1's flow of an open connection: idle_timeout={open_t}; after FIN both ways: {closed_t} "
                   f"(phases {phases})", "the transitory timer never below 240 s, the established never below 7440 s")


def simultaneous_open(f: dict) -> Outcome:
    """RFC 5382 REQ-2: both kernels' connect() succeeded with their SYNs crossing."""
    s = f["simopen"]
    ok = s["h1"].get("connected") and s["srv1"].get("connected")
    return Outcome(bool(ok), f"h1: {s['h1']}; srv1: {s['srv1']}", "neither side refused or timed out")


def no_udp_alg(f: dict) -> Outcome:
    """RFC 4787 REQ-10: a private 'address:port' text in a UDP payload reaches srv1 unchanged."""
    texts = [e["text"] for e in f["udp_logs"]["srv1"] if e["text"].startswith(f"{f['h1_ip']}:40001")]
    return Outcome(bool(texts), f"srv1 read {texts[:1]!r}", "the payload was not rewritten")


def no_tcp_alg(f: dict) -> Outcome:
    """RFC 5382 REQ-6: the same for TCP."""
    texts = [e["text"] for e in f["tcp_logs"]["srv1"] if e["text"].startswith(f"{f['h1_ip']}:41001")]
    return Outcome(bool(texts), f"srv1 read {texts[:1]!r}", "the payload was not rewritten")


def deterministic(f: dict) -> Outcome:
    """RFC 4787 REQ-11: the same source port mapped the same way three times, and filtering kept its verdict."""
    mapping = eim_udp(f)
    return Outcome(mapping.ok and filtering_udp(f).ok, mapping.positive, "no change between repetitions")


def icmp_keeps_mapping(f: dict) -> Outcome:
    """RFC 4787 REQ-12, RFC 5382 REQ-10, RFC 5508 REQ-6: after port unreachable and four crafted errors about
    h1:40003, its mapping still stands and carries srv1's echo."""
    ok = f["after_refused"] > 0 and bool(f["icmp_entry_after_errors"])
    return Outcome(ok, f"echo after the errors: {f['after_refused']} bytes; entries {len(f['icmp_entry_after_errors'])}",
                   "no error removed the mapping")


def icmp_errors_in(f: dict) -> Outcome:
    """RFC 5508 REQ-4, RFC 5382 REQ-9: srv2's port unreachable came back as ECONNREFUSED on h1's socket."""
    ok = f["refused_in"] == "ConnectionRefusedError" and f["icmp_counters"]["drop:icmp-error-no-entry"] >= 1
    return Outcome(ok, f"h1's socket to srv2's closed port: {f['refused_in']}",
                   f"errors about nothing mapped dropped: {f['icmp_counters']['drop:icmp-error-no-entry']}")


def icmp_errors_out(f: dict) -> Outcome:
    """RFC 5508 REQ-5: h1's kernel's port unreachable reached srv1 translated (srv1's socket: ECONNREFUSED)."""
    return Outcome(f["filter_srv1"].get("refused") is True, f"srv1's socket: {f['filter_srv1']}",
                   "a wrong quoted header would not match srv1's socket (timeout)")


def icmp_error_checksum(f: dict) -> Outcome:
    """RFC 5508 REQ-3: a crafted error with a broken checksum dropped, the good ones translated."""
    c = f["icmp_counters"]
    ok = c["drop:icmp-error-bad-checksum"] >= 1 and c["icmp_errors_translated"] >= 3
    return Outcome(ok, f"translated {c['icmp_errors_translated']} good errors", f"dropped "
                   f"{c['drop:icmp-error-bad-checksum']} with a bad checksum (the NAT's counters)")


def icmp_error_types(f: dict) -> Outcome:
    """RFC 5508 REQ-10: Destination Unreachable, Time Exceeded and Parameter Problem about a mapping translated."""
    return Outcome(f["icmp_counters"]["icmp_errors_translated"] >= 3,
                   f"{f['icmp_counters']['icmp_errors_translated']} of 3 good errors (types 3, 11, 12) translated",
                   "none dropped")


def icmp_query(f: dict) -> Outcome:
    """RFC 5508 REQ-1: ping from h1 answered."""
    sent, got = f["ping"]
    return Outcome(sent > 0 and got == sent, f"ping h1 -> srv1: {got}/{sent}", "no echo lost")


def icmp_timer(f: dict) -> Outcome:
    """RFC 5508 REQ-2, RFC 7857 3.10: ICMP query sessions idle out after at least 60 s."""
    t = [e.get("idle_timeout") or e.get("expires_in") or 0 for e in f["icmp_entries"]] + \
        [int(m.group(1)) for ln in f["flows"].splitlines() if ",icmp," in ln.replace(" ", ",")
         for m in [re.search(r"idle_timeout=(\d+)", ln)] if m]
    return Outcome(bool(t) and min(t) >= 60, f"ICMP session timeouts {sorted(set(t))}", "none below 60 s")


def non_query_error(f: dict) -> Outcome:
    """RFC 5508 REQ-11 (MAY): a router advertisement from outside dropped and counted."""
    return Outcome(f["router_advert_counted"] >= 1, f"{f['router_advert_counted']} counted as drop:no-entry",
                   "not delivered to any client")


def hairpin_udp(f: dict) -> Outcome:
    """RFC 4787 REQ-9: h1 got h2's echo through h2's global address, and h2 logged h1's *global* address."""
    logged = f["hairpin_logs"]["udp"]
    oracle = f.get("oracle", {}).get("hairpinning")
    ok = f["hairpin_udp"]["reply_len"] > 0 and bool(logged) and not _private(logged[0]["src"]) \
        and oracle in (None, "yes")
    return Outcome(ok, f"h1 -> {f['hairpin_targets']['udp']['global_ip']}:{f['hairpin_targets']['udp']['global_gpn']}"
                   f" echoed ({f['hairpin_udp']}); h2 logged {logged[:1]}", f"source never private; coturn: {oracle}")


def hairpin_tcp(f: dict) -> Outcome:
    """RFC 5382 REQ-8: h1 connected to h2 through h2's global address, h2 saw h1's global address."""
    logged = f["hairpin_logs"]["tcp"]
    ok = f["hairpin_tcp"].get("connected") and bool(logged) and not _private(logged[0]["src"])
    return Outcome(bool(ok), f"h1 -> h2 via its global: {f['hairpin_tcp']}; h2 logged {logged[:1]}",
                   "source never private")


def hairpin_icmp_error(f: dict) -> Outcome:
    """RFC 5508 REQ-7, RFC 7857 3.11: h2's port unreachable about h1's hairpinned datagram came back to h1's
    socket as ECONNREFUSED."""
    got = f["hairpin_icmp"].get("error")
    return Outcome(got == "ConnectionRefusedError", f"h1's socket: {f['hairpin_icmp']}", "not a timeout")


def fragments(f: dict) -> Outcome:
    """RFC 4787 REQ-14: every fragmented datagram echoed whole, in any order; srv1 saw only global sources."""
    orders = {o: r["reply_len"] for o, r in f["frag_orders"].items()}
    big = f["frag_kernel"]["reply_len"]
    srcs = {e["src"] for e in f["frag_log"]}
    iperf = f["frag_iperf3"]
    app_ok = iperf["packets"] > 0 and iperf["lost"] <= iperf["packets"] // 20  # UDP: at most 5 % lost
    ok = all(v == 3000 for v in orders.values()) and big == 4000 and bool(srcs) and not any(map(_private, srcs)) \
        and app_ok
    return Outcome(ok, f"echoed bytes by order {orders}; kernel-fragmented 4000-byte datagram: {big}; iperf3 UDP "
                   f"3000-byte datagrams: {iperf}; counters {f['frag_counters']}", f"srv1 saw sources {sorted(srcs)}")


def admin_prohibited(f: dict) -> Outcome:
    """RFC 5508 REQ-8, RFC 6888 REQ-4/11: not exercised in this scenario (see the unit tests)."""
    raise ledger.NotChecked("a live check needs 4096 mappings from one host; the limit and the rate-limited ICMP "
                            "are unit-tested (tests/unit/test_lease_attacks.py)")


def derived_transport(f: dict) -> Outcome:
    """RFC 6888 REQ-1: the UDP and TCP MUSTs judged here all hold."""
    parts = {name: CHECKS[name](f).ok for name in ("eim_udp", "eim_tcp", "hairpin_udp", "hairpin_tcp", "fragments",
                                                   "tcp_timers", "simultaneous_open", "icmp_keeps_mapping")}
    return Outcome(all(parts.values()), f"UDP/TCP MUST checks: {parts}", "none failed")


def port_quarantine(f: dict) -> Outcome:
    """RFC 6888 REQ-8: not exercised live (a mapping must idle out first: 5 min for UDP)."""
    raise ledger.NotChecked("a live check waits out a UDP mapping (300 s) and its 120 s rest; see "
                            "tests/unit/test_nat_core.py::test_flow_removal_erases_entry_and_port_rests_before_reuse")


def pcp_map(f: dict) -> Outcome:
    """RFC 6888 REQ-9: h2's PCP MAP requests (natlab lease alloc) were granted and carried hairpinned traffic."""
    granted = "granted" in f["map_udp_out"] and "granted" in f["map_tcp_out"]
    return Outcome(granted and f["hairpin_udp"]["reply_len"] > 0, "PCP MAP for UDP 44001 and TCP 44003 granted",
                   f"lease CLI output: {f['map_udp_out'].strip()[:80]!r}")


def manageable(f: dict) -> Outcome:
    """RFC 6888 REQ-10: the table and counters read on demand (natlab table / the control socket)."""
    return Outcome(bool(f.get("h1_entries")), "natlab table listed every entry with its FIG. 6 fields and counters",
                   "read over a root-only unix socket, no remote management protocol (RFC 4008 MIB) offered")


def no_destination_logs(f: dict) -> Outcome:
    """RFC 6888 REQ-12: the controller's log names neither server the scenario's flows went to."""
    named = [ip for ip in (SRV1, SRV2) if ip in f["controller_log"]]
    return Outcome(not named, f"the controller log ({len(f['controller_log'])} bytes) read after the scenario",
                   f"foreign addresses named in it: {named}")


def ip_id(f: dict) -> Outcome:
    """RFC 7857 3.9: with h1's incomplete datagram (IP ID 4242) in srv1's reassembly, another client behind
    the same global address got its own datagram with IP ID 4242 echoed whole."""
    if f.get("ip_id_mate") is None:
        raise ledger.NotChecked("no other client shares h1's global address on this testbed")
    got = f["ip_id_second"]["reply_len"]
    return Outcome(got == 3000, f"{f['ip_id_mate']}'s 3000-byte datagram after h1's incomplete one, same IP ID: "
                   f"{got} bytes echoed", "srv1 did not mix the two datagrams (the NAT renumbered them)")


CHECKS: dict[str, Callable[[dict], Outcome]] = {f.__name__: f for f in (
    eim_udp, eim_tcp, paired, no_overloading, port_preservation, port_randomness, udp_timer, outbound_refresh,
    filtering_udp, filtering_tcp, unsolicited_syn, tcp_timers, simultaneous_open, no_udp_alg, no_tcp_alg,
    deterministic, icmp_keeps_mapping, icmp_errors_in, icmp_errors_out, icmp_error_checksum, icmp_error_types,
    icmp_query, icmp_timer, non_query_error, hairpin_udp, hairpin_tcp, hairpin_icmp_error, fragments,
    admin_prohibited, derived_transport, port_quarantine, pcp_map, manageable,
    no_destination_logs, ip_id)}
