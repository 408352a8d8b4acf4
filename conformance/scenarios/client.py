"""Module 109 on the live testbed: three clients behind one global IP, each matrix cell, real applications.

For every cell of {ESP, AH} x {transport, tunnel}, :func:`run_cell` starts the
NAT-unaware peer (srv1, or sgw1 before ih1) and three client agents that lease
their global ports and SPIs from the NAT, then runs unmodified applications
from all three clients at once: curl, iperf3 (TCP and UDP) and nc (TCP, and
UDP through the test ALG), while tcpdump records four places:

- the peer's wire, after the NAT (what the far end gets);
- h1's wire, before the NAT (what the client sends and gets);
- h1's TUN device (cleartext: what h1's own stack sends and accepts);
- in tunnel mode, the intranet link behind sgw1 (what ih1 gets).

The verdicts (:func:`judge_cell`) come from the applications and agents
(the receiving side), and from software the project did not write reading
the captures: scapy's IPsec (AH ICVs, ESP decryption, checksums recomputed)
and tshark with the peer's key file (:mod:`conformance.oracles`).
:func:`judge_control` reads the same run without compensation, which must fail
for the reason the seed predicts.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from client_agent.agent_config import INBOUND, OUTBOUND, AgentConfig, SAConfig
from client_agent.alg import TEST_ALG_PORT
from client_agent.ipsec.algorithms import integrity
from conformance.apps import Service, probe
from conformance.context import Context, Record
from conformance.evidence import captures, save_json, save_text
from conformance.keying import AgentKeying, KeyingEvidence, agent_events, await_keys, ike_rows, judge_keying, key_files
from conformance.matrix import CELLS, Cell, Client, behind_nat, clients, ike_behind_nat
from conformance.oracles import (
    TsharkSummary,
    check_cleartext_capture,
    read_in_parallel,
    tshark_summary,
    tshark_verdicts,
    verify_capture,
)
from conformance.results import ScenarioResult
from conformance.scenario import scenario
from nat_app.gpn import GpnSpace
from nat_app.table import space_of_record
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP

HTTP_PORT, IPERF_TCP_BASE, IPERF_UDP_BASE, NC_TCP_BASE = 8000, 5201, 5301, 7101  # one server per client and test
TRANSPORTS = {"TCP": 6, "UDP": 17}
APPS = {"TCP": ("curl", "iperf3-tcp", "nc-tcp"), "UDP": ("iperf3-udp", "nc-udp")}
RATE = "20M"  # enough to fill many segments, few enough for scapy to read every packet
NC_UDP_SPORT = 40001  # the private port nc sends from; the ALG text names it
FORGED_COUNT, FORGED_SEQ = 3, 2**31  # AH packets with a zero ICV to h1; far ahead of any real sequence number
FORGED_TEXT = "natlab-forged-ah"
# The cells the controls run: the seed predicts no failure for ESP tunnel mode (CLAIMS.md "Controls").
CONTROL_CELLS = tuple(c for c in CELLS if not (c.protocol == "esp" and c.mode == "tunnel"))


@dataclass
class CellRun:
    """Everything one cell's run left behind, for the judges."""

    cell: Cell
    members: list[Client]
    configs: list[AgentConfig]
    peer: AgentConfig
    folder: Path
    marker: bytes = b""
    apps: dict[str, dict] = field(default_factory=dict)  # client -> app -> observation
    statuses: dict[str, dict] = field(default_factory=dict)  # host -> agent status.json at the end
    table: dict = field(default_factory=dict)  # the NAT's table while the agents held their leases
    echo_log: list[dict] = field(default_factory=list)  # what the UDP echo service got
    pcaps: dict[str, Path] = field(default_factory=dict)
    peer_run_dir: Path | None = None
    evidence: list[Path] = field(default_factory=list)
    csum_errors: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> TCP/UDP -> InCsumErrors in the run
    forged: int = 0  # AH packets with a bad ICV the peer sent to h1 (IN-AH: the agent must drop them)
    keying: str = "manual"  # "manual": the configs' [[sa]]; "ike": negotiated (conformance.keying)
    sas: dict[str, tuple[SAConfig, SAConfig]] = field(default_factory=dict)  # IKE: client -> (out, in), as written
    events: dict[str, list[dict]] = field(default_factory=dict)  # host -> its agent's IKE events
    ike_pcap: Path | None = None  # IKE: the peer's wire while the agents negotiated

    def sas_of(self, name: str, direction: str) -> list:
        """Client ``name``'s SAs of ``direction``: negotiated ones as its agent wrote them, else its config's."""
        entries = self.sas.get(name) or next(cfg.sas for c, cfg in zip(self.members, self.configs, strict=True)
                                             if c.name == name)
        return [s.sa for s in entries if s.direction == direction]


def run_cell(ctx: Context, cell: Cell, members: list[Client], folder: Path, *, compensate: bool = True,
             seconds: float = 1.0, algs: tuple[str, ...] = ("address-text",), verify_icv: bool = True,
             keying: str = "manual") -> CellRun:
    """Agents up, applications from every client at once, captures; agents down (leases released).

    On a testbed with a classic NAT the clients are plain IPsec hosts (``behind_nat(classic=True)``).
    ``keying="ike"``: the agents negotiate their SAs (``ike_behind_nat``; compensation on).
    """
    tb = ctx.testbed
    classic = tb.controller is None
    configs, peer = (ike_behind_nat(cell, members, algs=algs) if keying == "ike" else
                     behind_nat(cell, members, compensate=compensate, classic=classic, algs=algs))
    configs = [replace(c, verify_icv=verify_icv) for c in configs]
    run = CellRun(cell, members, configs, peer, folder, marker=f"natlab-{secrets.token_hex(8)}".encode(),
                  keying=keying)
    target_name, target_ip = cell.target
    target, peer_host, h1 = tb.host(target_name), tb.host(cell.peer), tb.host(members[0].name)
    www = folder / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "marker.txt").write_bytes(run.marker * 300)
    echo_log = folder / "udp-echo.jsonl"
    echo_log.unlink(missing_ok=True)
    intfs = [(peer_host, f"{cell.peer}-eth0"), (h1, f"{h1.name}-eth0")]
    if cell.mode == "tunnel":
        intfs.append((peer_host, f"{cell.peer}-eth1"))
    with ExitStack() as stack:
        peer_agent, agents = _start_agents(stack, tb, run)
        run.table = {} if classic else tb.table()
        for argv in _services(target_ip, www, echo_log, members, folder):
            stack.enter_context(Service(target, argv, settle=0.0))
        time.sleep(1.0)
        csum_before = {h.name: _csum_errors(h) for h in (target, h1)}
        pcaps = stack.enter_context(captures(intfs + [(h1, "ipsec0")], folder / "pcap"))
        _wait_all([_start_apps(tb.host(c.name), c, i, target_ip, folder, seconds) for i, c in enumerate(members)])
        if cell.protocol == "ah":
            run.forged = _forge_ah(peer_host, peer, cell, run.members[0], run.sas_of(members[0].name, INBOUND)[0])
        time.sleep(0.5)
        run.csum_errors = {h.name: {p: n - csum_before[h.name].get(p, 0) for p, n in _csum_errors(h).items()}
                           for h in (target, h1)}
        for c in members:
            run.apps[c.name] = _read_apps(folder, c, run.marker)
        for agent in [peer_agent, *agents]:
            run.statuses[agent.host.name] = agent.refresh()
    run.pcaps = dict(pcaps)
    run.events = {a.host.name: agent_events(a.log) for a in [peer_agent, *agents]}
    run.echo_log = [json.loads(line) for line in echo_log.read_text().splitlines()] if echo_log.exists() else []
    run.evidence += [save_json(folder / "apps.json", run.apps), save_json(folder / "agents.json", run.statuses),
                     save_json(folder / "nat-table.json", run.table), *run.pcaps.values()]
    if run.peer_run_dir is not None:
        run.evidence.append(run.peer_run_dir / "esp_sa")
    run.evidence += _keying_evidence(run, [peer_agent, *agents])
    return run


def _start_agents(stack: ExitStack, tb, run: CellRun) -> tuple[AgentProcess, list[AgentProcess]]:
    """The peer's agent, then the clients'. Keyed by IKE: until every client holds its first CHILD_SA, whose
    SAs (as the agent wrote them) replace the clients' SPIs, with the peer's wire captured meanwhile."""
    cell, folder, ike = run.cell, run.folder, run.keying == "ike"
    peer_host = tb.host(cell.peer)
    with ExitStack() as negotiation:
        if ike:
            pcaps = negotiation.enter_context(captures([(peer_host, f"{cell.peer}-eth0")], folder / "pcap-ike"))
            run.ike_pcap = pcaps[f"{cell.peer}-eth0"]
        peer_agent = stack.enter_context(AgentProcess(peer_host, run.peer, folder / f"agent-{cell.peer}"))
        run.peer_run_dir = peer_agent.run_dir
        agents = [stack.enter_context(AgentProcess(tb.host(c.name), cfg, folder / f"agent-{c.name}"))
                  for c, cfg in zip(run.members, run.configs, strict=True)]
        if ike:
            run.sas = await_keys({a.host.name: a.run_dir for a in agents}, cell.protocol, cell.mode, cell.peer_ip)
    run.members = [replace(c, spi_out=run.sas[c.name][0].sa.spi, spi_in=run.sas[c.name][1].sa.spi)
                   if c.name in run.sas else c for c in run.members]
    return peer_agent, agents


def _keying_evidence(run: CellRun, agents: list[AgentProcess]) -> list[Path]:
    """What a stranger needs to check the keying: each agent's config and log; keyed by IKE, the key files
    they wrote and the peer's capture of the exchanges."""
    files = [a.config_path for a in agents] + [a.log for a in agents]
    if run.keying == "ike":
        files += [a.run_dir / name for a in agents for name in key_files(run.cell.protocol)]
        files += [run.ike_pcap] if run.ike_pcap is not None else []
    return [f for f in files if f.exists() and f not in run.evidence]


def _services(target_ip: str, www: Path, echo_log: Path, members: list[Client], folder: Path) -> list[list[str]]:
    """What the target serves during a cell: HTTP, the UDP echo (the test ALG's far end), an iperf3 pair
    and an nc listener per client."""
    services = [[sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", target_ip, "--directory", str(www)],
                [sys.executable, "-m", "conformance.probes", "udp-echo", target_ip, str(TEST_ALG_PORT),
                 "--seconds", "120", "--log", str(echo_log)]]
    services += [["iperf3", "-s", "-p", str(base + i)] for i in range(len(members))
                 for base in (IPERF_TCP_BASE, IPERF_UDP_BASE)]
    # exec: the Service's SIGTERM must reach nc itself. A listener that never got its connection (a
    # control) otherwise outlives the run and, sharing the port, takes the next run's connection.
    services += [["bash", "-c", f"exec nc -l {NC_TCP_BASE + i} > {folder / f'nc-tcp-{c.name}.txt'}"]
                 for i, c in enumerate(members)]
    return services


def _wait_all(procs: list[subprocess.Popen]) -> None:
    """Every client's applications to their end (60 s at most each: a hung one is killed, and fails)."""
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _forge_ah(peer_host, peer: AgentConfig, cell: Cell, c: Client, sa) -> int:
    """The peer sends h1 AH packets under h1's inbound SA ``sa`` with a zero ICV: only a client that
    verifies ICVs (RFC 4302 3.4.3) keeps them from its stack. Returns how many were asked for."""
    tunnel = ("--inner-src", cell.target[1], "--inner-dst", c.global_ip) if cell.mode == "tunnel" else ()
    probe(peer_host, "forge-ah", c.global_ip, "--spi", sa.spi, "--icv-len", integrity(sa.integrity).icv_len,
          "--seq", FORGED_SEQ, "--count", FORGED_COUNT, "--mark", peer.mark, "--dport", c.ports[0],
          "--text", FORGED_TEXT, *tunnel)
    return FORGED_COUNT


def _csum_errors(host) -> dict[str, int]:
    """The kernel's InCsumErrors of TCP and UDP (/proc/net/snmp): segments its stack dropped for a bad checksum."""
    counts = {}
    lines = host.cmd("cat /proc/net/snmp").splitlines()
    for head, values in zip(lines, lines[1:], strict=False):
        proto = head.split(":")[0]
        if proto in ("Tcp", "Udp") and values.startswith(proto + ":") and not values.split()[1].isalpha():
            fields = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            counts[proto.upper()] = int(fields.get("InCsumErrors", 0))
    return counts


def _start_apps(host, c: Client, index: int, target: str, folder: Path, seconds: float):
    """curl, iperf3 TCP and UDP, nc TCP and UDP, one after the other, in ``host``; runs beside the others."""
    out = folder / c.name
    out.mkdir(exist_ok=True)
    alg_text = f"i am {c.private_ip}:{NC_UDP_SPORT}"
    script = f"""
curl -s --max-time 5 -o {out}/curl.body -w '%{{http_code}}' http://{target}:{HTTP_PORT}/marker.txt > {out}/curl.code
iperf3 -c {target} -p {IPERF_TCP_BASE + index} -t {seconds} -b {RATE} --connect-timeout 3000 -J > {out}/iperf3-tcp.json
iperf3 -c {target} -p {IPERF_UDP_BASE + index} -t {seconds} -b {RATE} -u -l 1200 --connect-timeout 3000 -J > {out}/iperf3-udp.json
head -c 20000 {folder}/www/marker.txt | nc -N -w 5 {target} {NC_TCP_BASE + index}; echo $? > {out}/nc-tcp.rc
echo '{alg_text}' | nc -u -w 2 -p {NC_UDP_SPORT} {target} {TEST_ALG_PORT} > {out}/nc-udp.out
"""
    return host.popen(["bash", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _read_apps(folder: Path, c: Client, marker: bytes) -> dict:
    out = folder / c.name
    apps = {"curl": {"code": _read(out / "curl.code").strip(),
                     "body_ok": _read(out / "curl.body") == (marker * 300).decode()}}
    for kind in ("tcp", "udp"):
        try:
            end = json.loads(_read(out / f"iperf3-{kind}.json"))["end"]
            s = end["sum_received"] if kind == "tcp" else end["sum"]
            received = s["bytes"] if kind == "tcp" else s.get("packets", 0) - s.get("lost_packets", 0)
            apps[f"iperf3-{kind}"] = {"received": received, "bps": s.get("bits_per_second", 0.0)}
        except (ValueError, KeyError, TypeError):
            apps[f"iperf3-{kind}"] = {"received": 0, "error": _read(out / f"iperf3-{kind}.json")[-200:]}
    received = _read(folder / f"nc-tcp-{c.name}.txt")
    apps["nc-tcp"] = {"received": len(received), "ok": received == (marker * 300).decode()[:20000]}
    reply = _read(out / "nc-udp.out").strip()
    apps["nc-udp"] = {"reply": reply, "sent": f"i am {c.private_ip}:{NC_UDP_SPORT}"}
    return apps


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def app_ok(app: str, seen: dict) -> bool:
    """Did the application get what it asked for, end to end?"""
    if app == "curl":
        return seen["code"] == "200" and seen["body_ok"]
    if app.startswith("iperf3"):
        return seen.get("received", 0) > 0
    if app == "nc-tcp":
        return seen["ok"]
    return bool(seen["reply"])


# ----------------------------------------------------------------------------- the oracles' view of one run


@dataclass
class Views:
    """The captures read by the oracles, per client: at the peer (after the NAT) and on h1's side."""

    at_peer: dict[str, list]  # client -> verdicts of its packets to the peer, as the peer got them
    peer_to_client: dict[str, list]  # client -> the peer's packets to it, on the peer's wire
    h1_in: list  # the peer's packets to h1 as h1's wire got them (after the NAT), verified as the NAT left them
    h1_in_as_global: list  # the same, verified as if the destination were the global IP (IN-AH)
    h1_out: list  # h1's packets on its own wire (before the NAT), verified as they are
    h1_out_as_global: list  # the same, as if the source were the global IP (OUT-AH)
    tun: list  # h1's TUN device: cleartext as h1's stack sent and got it
    tshark: TsharkSummary | None  # tshark on the peer's wire with the peer's key file (ESP), clients' packets only
    intranet: list  # tunnel mode: sgw1's intranet side, cleartext
    peer_unjudged: dict = field(default_factory=dict)  # ESP/AH on the peer's wire scapy could not judge, by reason
    h1_unjudged: dict = field(default_factory=dict)  # the same on h1's wire (another client's SPI shows here)
    h1_forged: list = field(default_factory=list)  # the peer's forged AH packets on h1's wire (IN-AH)
    ike_rows: list = field(default_factory=list)  # tshark's IKE messages on the peer's wire (conformance.keying)


def read_views(run: CellRun, ike: bool = True) -> Views:
    """Each capture read once per address view (SPIs tell the clients and directions apart), the readings
    side by side (``read_in_parallel``); ``ike``: with tshark's reading of the IKE on the peer's wire too
    (the keying judge's; the controls judge no keying)."""
    peer_wire = run.pcaps[f"{run.cell.peer}-eth0"]
    h1_wire = run.pcaps[f"{run.members[0].name}-eth0"]
    h1 = run.members[0]
    sends = {c.name: run.sas_of(c.name, OUTBOUND) for c in run.members}
    gets = {c.name: run.sas_of(c.name, INBOUND) for c in run.members}
    ah = run.cell.protocol == "ah"  # only AH covers the addresses: the "as if" views matter for it alone
    readings: dict[str, Callable] = {  # the largest first
        "peer": partial(verify_capture, peer_wire, [sa for sas in (*sends.values(), *gets.values()) for sa in sas]),
        "h1": partial(verify_capture, h1_wire, sends[h1.name] + gets[h1.name]),
        "tun": partial(check_cleartext_capture, run.pcaps["ipsec0"])}
    if ah:
        readings["h1_in_as_global"] = partial(verify_capture, h1_wire, gets[h1.name], as_if={"dst": h1.global_ip})
        readings["h1_out_as_global"] = partial(verify_capture, h1_wire, sends[h1.name], as_if={"src": h1.global_ip})
    else:
        readings["tshark"] = partial(tshark_verdicts, peer_wire, _keys(run))
    if run.cell.mode == "tunnel":
        readings["intranet"] = partial(check_cleartext_capture, run.pcaps[f"{run.cell.peer}-eth1"])
    if ike:
        readings["ike"] = partial(ike_rows, run.ike_pcap or peer_wire, _keys(run))
    got = read_in_parallel(readings)
    at_peer_wire, h1_wire_seen = _by_spi(got["peer"]), _by_spi(got["h1"])
    sources = {c.global_ip for c in run.members}
    return Views(
        at_peer={c.name: _pick(at_peer_wire, sends[c.name]) for c in run.members},
        peer_to_client={c.name: _pick(at_peer_wire, gets[c.name]) for c in run.members},
        h1_in=_real(_pick(h1_wire_seen, gets[h1.name])),
        h1_in_as_global=_real(got["h1_in_as_global"]) if ah else [],
        h1_forged=[v for v in _pick(h1_wire_seen, gets[h1.name]) if v.seq >= FORGED_SEQ],
        h1_out=_pick(h1_wire_seen, sends[h1.name]),
        h1_out_as_global=list(got["h1_out_as_global"]) if ah else [],
        tun=got["tun"],
        tshark=None if ah else tshark_summary(sent_by(got["tshark"], sources)),
        intranet=got.get("intranet", []),
        peer_unjudged=_unjudged(got["peer"].skipped), h1_unjudged=_unjudged(got["h1"].skipped),
        ike_rows=got.get("ike", []),
    )


def _keys(run: CellRun) -> Path:
    """The peer agent's run folder, where its esp_sa key file is (tshark decrypts with it)."""
    if run.peer_run_dir is None:
        raise RuntimeError(f"cell {run.cell.name}: the peer's agent never started")
    return run.peer_run_dir


def sent_by(rows, sources: set[str]) -> list[dict]:
    """tshark's rows of packets from ``sources`` only: the peer's own packets are not the clients' checksums.

    With ``occurrence=l`` the address is the innermost one: in tunnel mode the
    tunnelled packet's source, which for the clients is their global IP too.
    """
    return [r for r in rows if r.get("ip.src") in sources]


def _real(verdicts) -> list:
    """The peer's packets but the forged ones (IN-AH), which are judged apart."""
    return [v for v in verdicts if v.seq < FORGED_SEQ]


def _unjudged(skipped) -> dict[str, int]:
    """What a capture held that was ESP/AH (or may have been) and got no verdict: it counts against the verdict."""
    return {reason: n for reason, n in skipped.items() if reason != "not ESP or AH" and n}


def _by_spi(verdicts) -> dict[tuple[int, int], list]:
    out: dict[tuple[int, int], list] = {}
    for v in verdicts:
        out.setdefault((v.protocol, v.spi), []).append(v)
    return out


def _pick(by_spi: dict, sas) -> list:
    return sorted((v for sa in sas for v in by_spi.get((int(sa.protocol), sa.spi), [])), key=lambda v: v.frame)


def _of(verdicts: list, proto: int) -> list:
    return [v for v in verdicts if v.inner_protocol == proto]


def _in_block(port: int | None, c: Client) -> bool:
    return port is not None and c.ports[0] <= port <= c.ports[1]


# ----------------------------------------------------------------------------- judges


Check = tuple[bool, str]  # a verdict and the sentence that says why it fails


@dataclass(frozen=True)
class Judgement:
    """One behaviour's verdict on one transport of a cell: its checks, and what passing and the absence of
    the forbidden outcome looked like (the report's positive and negative evidence)."""

    checks: list[Check]
    positive: str
    negative: str


@dataclass
class Facts:
    """What the judges of one transport of a cell read, derived once from the run and the oracles' views."""

    run: CellRun
    views: Views
    transport: str
    proto: int
    failed_apps: str  # the clients whose applications failed, as a sentence ("" if none)
    peer_inner: dict[str, list]  # client -> its inner packets of this transport at the peer
    all_inner: list
    bad_auth: list  # every client packet at the peer that failed its ICV or decryption
    csum_bad: list  # inner checksums wrong, or not verifiable: both count
    counts: str
    h1_in: list  # the peer's packets on h1's wire (as if to the global IP for AH)
    tun_in: list  # what h1's stack got from the target, forgeries excluded (IN-AH judges those)
    delivered: dict[str, int]
    drops: dict[str, dict]
    in_global: list  # h1_in with ports

    @property
    def cell(self) -> Cell:
        return self.run.cell

    @property
    def h1(self) -> Client:
        return self.run.members[0]

    @property
    def name(self) -> str:
        return f"{self.cell.name}-{self.transport.lower()}-{keyed(self.run)}"

    @property
    def label(self) -> dict:
        return {"ipsec": self.cell.protocol.upper(), "mode": self.cell.mode, "transport": self.transport}


def facts(run: CellRun, views: Views, transport: str, proto: int) -> Facts:
    """The derived observations every judge of ``transport`` in the cell shares."""
    failing = {c.name: [a for a in APPS[transport] if not app_ok(a, run.apps[c.name][a])] for c in run.members}
    peer_inner = {c.name: _of(views.at_peer[c.name], proto) for c in run.members}
    all_inner = [v for vs in peer_inner.values() for v in vs]
    h1_in = _of(views.h1_in_as_global if run.cell.protocol == "ah" else views.h1_in, proto)
    statuses = {c.name: run.statuses.get(c.name, {}).get("counters", {}) for c in run.members}
    return Facts(
        run=run, views=views, transport=transport, proto=proto,
        failed_apps="; ".join(f"{c}: {', '.join(a)} failed" for c, a in failing.items() if a),
        peer_inner=peer_inner, all_inner=all_inner,
        # Every client packet at the peer, whatever it carries: one that fails its ICV has no inner protocol.
        bad_auth=[v for c in run.members for v in views.at_peer[c.name] if not (v.icv_ok and v.decrypted)],
        csum_bad=[v for v in all_inner if v.checksum_ok is not True],
        counts=", ".join(f"{c}: {len(vs)}" for c, vs in peer_inner.items()),
        h1_in=h1_in,
        tun_in=[p for p in views.tun if p.protocol == proto and p.src == run.cell.target[1]
                and FORGED_TEXT.encode() not in p.payload],
        delivered={n: s.get("delivered", 0) for n, s in statuses.items()},
        drops={n: s.get("drops", {}) for n, s in statuses.items()},
        in_global=[v for v in h1_in if v.sport is not None],
    )


def judge_out_send(f: Facts) -> Judgement:
    """OUT-SEND: every client's applications worked, and the peer got IPsec from the global IP only."""
    members, peer = f.run.members, f.cell.peer
    return Judgement([
        (not f.failed_apps, f.failed_apps or "applications"),
        (not f.bad_auth and not f.views.peer_unjudged, f"{len(f.bad_auth)} packets at {peer} failed verification; "
                                                       f"not judged: {f.views.peer_unjudged}"),
        (all(f.peer_inner.values()), f"no {f.transport} inside the IPsec packets at {peer} from some client "
                                     f"({f.counts})"),
        (all(v.src == c.global_ip for c in members for v in f.peer_inner[c.name]),
         "a packet reached the peer from an address that is not the client's global IP"),
    ], f"{f.transport} apps of all {len(members)} clients succeeded; {peer} got {f.counts} packets from "
       f"the global IP", f"no packet from a private address reached {peer}")


def judge_out_port(f: Facts) -> Judgement:
    """OUT-PORT (transport mode): every inner source port at the peer is in its client's leased block."""
    outside = [v for c in f.run.members for v in f.peer_inner[c.name] if not _in_block(v.sport, c)]
    tun_ports = {p.sport for p in f.views.tun if p.protocol == f.proto and p.src == f.h1.private_ip}
    peer = f.cell.peer
    return Judgement([
        (bool(f.all_inner) and not outside, f"{len(outside)} inner packets at {peer} with a source port "
                                            f"outside their client's leased block"),
        (bool(tun_ports) and not any(_in_block(p, f.h1) for p in tun_ports),
         f"h1's own stack used ports {sorted(tun_ports)[:5]}: nothing to replace"),
    ], f"{len(f.all_inner)} inner packets at {peer}, every source port in its client's leased block; "
       f"h1's stack sent from {sorted(tun_ports)[:3]}", "no private source port reached the peer")


def judge_out_tunaddr(f: Facts) -> Judgement:
    """OUT-TUNADDR (tunnel mode): inner sources are (global IP, leased port); no private address on the intranet."""
    cell, members = f.cell, f.run.members
    wrong = [v for c in members for v in f.peer_inner[c.name]
             if v.inner_src != c.global_ip or not _in_block(v.sport, c)]
    reached = [p for p in f.views.intranet if p.protocol == f.proto and p.src == cell.target[1]
               and p.dst in {c.global_ip for c in members}]
    leaked = [p for p in f.views.intranet if p.src.startswith("10.") or p.dst.startswith("10.")]
    return Judgement([
        (bool(f.all_inner) and not wrong, f"{len(wrong)} inner packets whose source is not (global IP, leased "
                                          f"port)"),
        (not leaked, f"{len(leaked)} packets on the intranet carry a private address"),
        (bool(reached), f"{len(reached)} packets from {cell.target[1]} on the intranet"),
    ], f"{len(f.all_inner)} decapsulated packets at {cell.peer} from (global IP, leased port); "
       f"{len(reached)} packets from {cell.target[1]} to global addresses on the intranet",
       "no private address on the intranet")


def judge_out_csum(f: Facts) -> Judgement:
    """OUT-CSUM: scapy, tshark with the peer's keys, and the target's kernel find the inner checksums right."""
    cell, run, transport = f.cell, f.run, f.transport
    ts = f.views.tshark
    ts_good = getattr(ts, f"{transport.lower()}_checksum_good", 0)
    ts_bad = (getattr(ts, f"{transport.lower()}_checksum_bad", 0) + getattr(ts, "esp_icv_bad", 0)
              + getattr(ts, "esp_unverified", 0) + getattr(ts, "checksum_unverified", 0))
    tshark_check = [] if ts is None else [(ts_good > 0 and ts_bad == 0, f"tshark on the clients' packets: {ts}")]
    return Judgement([
        (bool(f.all_inner) and not f.csum_bad, f"scapy: {len(f.csum_bad)} of {len(f.all_inner)} inner checksums "
                                               "wrong or unverifiable"),
        (not f.bad_auth, f"{len(f.bad_auth)} packets failed authentication/decryption at the peer"),
        *tshark_check,
        (run.csum_errors[cell.target[0]].get(transport) == 0,
         f"{cell.target[0]}'s kernel counted {run.csum_errors[cell.target[0]]} checksum errors"),
        (not f.failed_apps, f.failed_apps or "applications"),
    ], f"scapy recomputed {len(f.all_inner)} inner {transport} checksums at {cell.peer}, {len(f.csum_bad)} not right"
       + (f"; tshark with the peer's keys, clients' packets only: {ts_good} good, {ts_bad} bad or unverified"
          if ts is not None else ""),
       f"{cell.target[0]}'s kernel: 0 checksum errors")


def judge_out_ah(f: Facts) -> Judgement:
    """OUT-AH: the ICV verifies at the peer and, on h1's wire, as if from the global IP (not the private one)."""
    out_raw = _of(f.views.h1_out, f.proto)
    out_global = _of(f.views.h1_out_as_global, f.proto)
    return Judgement([
        (bool(f.all_inner) and all(v.icv_ok for v in f.all_inner), "an AH ICV failed at the peer"),
        (bool(out_global) and all(v.icv_ok for v in out_global),
         "h1's packets before the NAT do not verify as if from the global IP"),
        (bool(out_raw) and not any(v.icv_ok for v in out_raw),
         "h1's packets verify with their private source: not computed over the global IP"),
    ], f"scapy verified {len(f.all_inner)} AH ICVs at {f.cell.peer} and {len(out_global)} on h1's wire as if from "
       f"{f.h1.global_ip}", f"none of {len(out_raw)} verifies with h1's private source")


def judge_in_recv(f: Facts) -> Judgement:
    """IN-RECV: every agent delivered, and the peer's packets reached h1 translated to its private IP."""
    h1 = f.h1
    return Judgement([
        (all(f.delivered.values()), f"some client's agent delivered nothing: {f.delivered}"),
        (bool(f.h1_in) and all(v.dst == h1.private_ip for v in f.h1_in),
         "the peer's packets did not reach h1 translated to its private IP"),
        (not f.failed_apps, f.failed_apps or "applications"),
    ], f"h1's wire: {len(f.h1_in)} {f.transport} packets from {f.cell.peer} to {h1.private_ip}; agents delivered "
       f"{f.delivered}", f"drops: {f.drops}")


def judge_in_ah(f: Facts) -> Judgement:
    """IN-AH: incoming AH verifies as if to the global IP, and h1's agent drops exactly the forged packets."""
    h1, views = f.h1, f.views
    raw = _of(views.h1_in, f.proto)
    return Judgement([
        (bool(f.h1_in) and all(v.icv_ok for v in f.h1_in), "an incoming AH packet does not verify as if to the "
                                                           "global IP"),
        (bool(raw) and not any(v.icv_ok for v in raw), "incoming AH verifies with the private destination"),
        *_forged_checks(f.run, views, f.drops),
    ], f"scapy verified {len(f.h1_in)} AH ICVs on h1's wire as if to {h1.global_ip}; h1's agent dropped "
       f"{f.drops.get(h1.name, {}).get('bad_icv', 0)} of {len(views.h1_forged)} forged packets for their ICV",
       f"none of {len(raw)} verifies with the private destination; no forged payload on h1's TUN")


def judge_in_port(f: Facts) -> Judgement:
    """IN-PORT (transport mode): packets arrive for leased ports and reach h1's stack on its own ports."""
    h1, in_global, tun_in = f.h1, f.in_global, f.tun_in
    return Judgement([
        (bool(in_global) and all(_in_block(v.dport, h1) for v in in_global),
         "incoming packets before the agent are not addressed to the leased global ports"),
        (bool(tun_in) and all(p.dst == h1.private_ip and not _in_block(p.dport, h1) for p in tun_in),
         "a packet reached h1's stack on a global address or port"),
    ], f"{len(in_global)} packets arrived for leased ports {sorted({v.dport for v in in_global})[:3]}; "
       f"h1's stack got {len(tun_in)} on its own ports {sorted({p.dport for p in tun_in})[:3]}",
       "none reached h1's stack on a global port")


def judge_in_tunaddr(f: Facts) -> Judgement:
    """IN-TUNADDR (tunnel mode): decapsulated packets go to (global IP, leased port); h1's stack gets its own."""
    h1, in_global, tun_in = f.h1, f.in_global, f.tun_in
    return Judgement([
        (bool(in_global) and all(v.inner_dst == h1.global_ip and _in_block(v.dport, h1) for v in in_global),
         "decapsulated packets are not addressed to (global IP, leased port)"),
        (bool(tun_in) and all(p.dst == h1.private_ip and not _in_block(p.dport, h1) for p in tun_in),
         "a packet reached h1's stack with the global address or port"),
    ], f"{len(in_global)} tunnelled packets to ({h1.global_ip}, leased port); h1's stack got {len(tun_in)} "
       f"to ({h1.private_ip}, its own port)", "none reached h1's stack with a global address")


def judge_in_csum(f: Facts) -> Judgement:
    """IN-CSUM: what h1's stack got has right checksums (scapy) and h1's kernel counted no checksum error."""
    h1, run, transport, tun_in = f.h1, f.run, f.transport, f.tun_in
    tun_bad = [p for p in tun_in if p.checksum_ok is not True]  # a UDP checksum of 0 verifies nothing: it counts
    return Judgement([
        (bool(tun_in) and not tun_bad, f"scapy: {len(tun_bad)} of {len(tun_in)} checksums wrong or absent on h1's "
                                       "TUN"),
        (run.csum_errors[h1.name].get(transport) == 0, f"h1's kernel counted {run.csum_errors[h1.name]} "
                                                       "checksum errors"),
        (not f.failed_apps, f.failed_apps or "applications"),
    ], f"scapy recomputed {len(tun_in)} checksums of what h1's stack got, {len(tun_bad)} not right",
       f"h1's kernel: {run.csum_errors[h1.name].get(transport)} {transport} checksum errors")


def _always(cell: Cell) -> bool:
    return True


def _transport_mode(cell: Cell) -> bool:
    return cell.mode == "transport"


def _tunnel_mode(cell: Cell) -> bool:
    return cell.mode != "transport"


def _is_ah(cell: Cell) -> bool:
    return cell.protocol == "ah"


# The matrix judges, in report order: (behaviour, which cells it applies to, the judge). One verdict each.
CELL_JUDGES: tuple[tuple[str, Callable[[Cell], bool], Callable[[Facts], Judgement]], ...] = (
    ("OUT-SEND", _always, judge_out_send),
    ("OUT-PORT", _transport_mode, judge_out_port),
    ("OUT-TUNADDR", _tunnel_mode, judge_out_tunaddr),
    ("OUT-CSUM", _always, judge_out_csum),
    ("OUT-AH", _is_ah, judge_out_ah),
    ("IN-RECV", _always, judge_in_recv),
    ("IN-AH", _is_ah, judge_in_ah),
    ("IN-PORT", _transport_mode, judge_in_port),
    ("IN-TUNADDR", _tunnel_mode, judge_in_tunaddr),
    ("IN-CSUM", _always, judge_in_csum),
)


def keyed(run: CellRun) -> str:
    """How the cell was keyed, as the report's scenario names say it."""
    return "ikev2" if run.keying == "ike" else "manual-keys"


def judge_cell(rec: Record, run: CellRun, views: Views) -> list[ScenarioResult]:
    """OUT-*, IN-* for each transport of the cell, plus CL-SPI and CL-UNIQ, and how it was keyed."""
    results = []
    for transport, proto in TRANSPORTS.items():
        f = facts(run, views, transport, proto)
        for behaviour, applies, judge in CELL_JUDGES:
            if applies(run.cell):
                j = judge(f)
                results.append(rec.result(behaviour, f.name, j.checks, j.positive, j.negative, cell=f.label,
                                          extra_evidence=run.evidence))
        if transport == "UDP":
            results += _judge_alg(rec, run, views, f.name, f.label)
    keying = judge_keying(keying_evidence(run, views))
    results += _judge_leases(rec, run, views, keying)
    return results + ([_judge_cookie(rec, run, keying)] if run.keying == "ike" else [])


def _judge_cookie(rec: Record, run: CellRun, keying: tuple[list[Check], str]) -> ScenarioResult:
    """CL-COOKIE in an IKE-keyed cell (step 801 in the matrix): three clients on one global IP negotiated the
    cell's keys with leased cookies as SPIi (conformance.keying.judge_keying: agents' logs, NAT's table, tshark)."""
    checks, how = keying
    return rec.result("CL-COOKIE", f"{run.cell.name}-{keyed(run)}", checks, how,
                      f"{len(run.members)} clients on one global IP; the responder saw no NAT",
                      extra_evidence=run.evidence)


def keying_evidence(run: CellRun, views: Views) -> KeyingEvidence:
    """What judge_keying reads, from the run (configs, the agents' events, the NAT's table) and the views."""
    agents = []
    for c, cfg in zip(run.members, run.configs, strict=True):
        verified = [v for v in views.at_peer.get(c.name, []) if v.icv_ok and v.decrypted]
        agents.append(AgentKeying(c.name, c.private_ip, c.global_ip, len(cfg.sas), cfg.ike is not None,
                                  run.events.get(c.name, []), c.spi_in, c.spi_out, len(verified)))
    return KeyingEvidence(run.keying, run.cell.protocol.upper(), run.cell.mode, agents,
                          run.events.get(run.cell.peer, []), run.table.get("entries", []), views.ike_rows)


def _judge_alg(rec: Record, run: CellRun, views: Views, name: str, label: dict) -> list[ScenarioResult]:
    """OUT-ALG / IN-ALG: the test ALG's text as the far end and as the client's application saw it,
    and (scapy) inside the datagrams the peer decrypted."""
    checks_out, checks_in, seen = [], [], []
    for c in run.members:
        carried = [v.payload for v in views.at_peer[c.name] if v.inner_protocol == 17 and v.dport == TEST_ALG_PORT]
        checks_out.append((bool(carried) and all(f"i am {c.global_ip}:".encode() in p for p in carried),
                           f"{c.name}: scapy found {len(carried)} ALG datagrams at the peer, not all with the global "
                           "address"))
        got = [e["text"].strip() for e in run.echo_log if e["src"] == c.global_ip and _in_block(e["sport"], c)]
        rewritten = [t for t in got if t.startswith(f"i am {c.global_ip}:") and _in_block(int(t.rsplit(":", 1)[1]), c)]
        seen += rewritten[:1]
        checks_out.append((bool(rewritten) and len(rewritten) == len(got),
                           f"{c.name}: the echo service got {got[:2]}, not its global address"))
        app = run.apps[c.name]["nc-udp"]
        checks_in.append((app["reply"] == app["sent"], f"{c.name}: nc printed {app['reply']!r}, sent {app['sent']!r}"))
    leaked = [e for e in run.echo_log if "10.0.0." in e["text"]]
    checks_out.append((not leaked, f"{len(leaked)} datagrams reached the far end with a private address in the text"))
    checks_in += _alg_in_at_h1(run, views)
    return [
        rec.result("OUT-ALG", name, checks_out, f"the far end read {seen[:2]}, as did scapy in the decrypted "
                   "datagrams", "no private address in any payload",
                   cell=label, extra_evidence=run.evidence),
        rec.result("IN-ALG", name, checks_in, "each client's nc printed its own private address back; on h1 the "
                   "reply carried the global address on the wire and the private one on the TUN",
                   "no global address reached an application", cell=label, extra_evidence=run.evidence),
    ]


def _forged_checks(run: CellRun, views: Views, drops: dict) -> list[tuple[bool, str]]:
    """IN-AH against a client that never verifies: the forged packets reached h1's wire, its agent
    dropped exactly those for their ICV, and none of their payload reached h1's stack."""
    h1 = run.members[0]
    forged = [v for v in views.h1_forged if not v.icv_ok]
    leaked = [p for p in views.tun if p.dst == h1.private_ip and FORGED_TEXT.encode() in p.payload]  # not h1's
    # own ICMP errors about them, which quote the forged payload on their way out
    bad_icv = {c.name: drops.get(c.name, {}).get("bad_icv", 0) for c in run.members}
    return [
        (run.forged > 0 and len(forged) == run.forged, f"{len(forged)} of {run.forged} forged AH packets on h1's wire"),
        (bad_icv == {**{c.name: 0 for c in run.members}, h1.name: len(forged)},
         f"bad-ICV drops per agent {bad_icv}, for {len(forged)} forged packets to h1"),
        (not leaked, f"{len(leaked)} forged datagrams reached h1's stack"),
    ]


def _alg_in_at_h1(run: CellRun, views: Views) -> list[tuple[bool, str]]:
    """IN-ALG on h1's captures: the echo came back with the global address (h1's wire, inside the IPsec
    packet) and reached h1's stack with the private one (its TUN): the client ALG, not the echo, did it."""
    h1 = run.members[0]
    wire = views.h1_in_as_global if run.cell.protocol == "ah" else views.h1_in
    arrived = [v.payload for v in wire if v.inner_protocol == 17 and v.sport == TEST_ALG_PORT]
    handed = [p.payload for p in views.tun if p.protocol == 17 and p.sport == TEST_ALG_PORT and p.dst == h1.private_ip]
    return [
        (bool(arrived) and all(f"i am {h1.global_ip}:".encode() in p for p in arrived),
         f"h1's wire: {len(arrived)} ALG replies, not all naming the global address {arrived[:1]}"),
        (bool(handed) and all(f"i am {h1.private_ip}:{NC_UDP_SPORT}".encode() in p for p in handed),
         f"h1's TUN: {len(handed)} ALG replies, not all naming the private address {handed[:1]}"),
    ]


SPI_SPACES = frozenset({GpnSpace.ip(IPPROTO_ESP), GpnSpace.ip(IPPROTO_AH)})  # the clients' SPI leases (CL-SPI)
PORT_SPACES = frozenset({GpnSpace.ip(IPPROTO_TCP), GpnSpace.ip(IPPROTO_UDP)})  # their port leases (PCP PEER)


def _space(entry: dict) -> GpnSpace:
    """The GPN space of an entry of ``natlab table`` (its ``protocol`` and ``udp_port`` fields)."""
    return space_of_record(entry)


def _judge_leases(rec: Record, run: CellRun, views: Views, keying: tuple[list[Check], str]) -> list[ScenarioResult]:
    """CL-SPI and CL-UNIQ for the cell (non-matrix behaviours, one result per cell). CL-SPI also says how the
    SPIs were chosen, by hand or by IKE, and fails when the keying evidence does not show it (``keying``)."""
    entries = run.table.get("entries", [])
    spi_checks, uniq_checks = list(keying[0]), []
    for c in run.members:
        spi = [e for e in entries if _space(e) in SPI_SPACES and e["private_ip"] == c.private_ip]
        ports = {e["global_ip"] for e in entries if _space(e) in PORT_SPACES and e["private_ip"] == c.private_ip
                 and e["kind"] == "CLIENT-ALG"}  # its NAPT mappings may sit on its paired global IP
        spi_checks.append((any(e["global_gpn"] == c.spi_in and e["global_ip"] == c.global_ip for e in spi),
                           f"{c.name}: no lease of SPI 0x{c.spi_in:08x} on {c.global_ip}"))
        spi_checks.append((ports == {c.global_ip}, f"{c.name}: its ports are on {ports}, its SPI on {c.global_ip}"))
        delivered = run.statuses.get(c.name, {}).get("counters", {}).get("delivered", 0)
        spi_checks.append((delivered > 0, f"{c.name}: its agent delivered {delivered} packets sent to its SPI"))
    h1 = run.members[0]
    delivered_all = {c.name: run.statuses.get(c.name, {}).get("counters", {}).get("delivered", 0) for c in run.members}
    spi_checks.append((bool(views.h1_in) and not views.h1_unjudged,
                       f"h1's wire: {len(views.h1_in)} packets to its own SPI 0x{h1.spi_in:08x}; others (another "
                       f"client's SPI or unreadable): {views.h1_unjudged}"))
    endpoints = {c.name: {(v.src, v.sport) for v in views.at_peer[c.name] if v.sport is not None} for c in run.members}
    names = list(endpoints)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = endpoints[a] & endpoints[b]
            uniq_checks.append((not shared, f"{a} and {b} both appeared as {sorted(shared)[:2]}"))
    leased = {c.name: {(e["protocol"], e["global_ip"], e["global_gpn"]) for e in entries
                       if _space(e) in SPI_SPACES and e["private_ip"] == c.private_ip} for c in run.members}
    held = [k for ks in leased.values() for k in ks]
    uniq_checks.append((all(leased.values()) and len(set(held)) == len(held),
                        f"SPI leases in the NAT's table per client: {leased}"))
    uniq_checks.append((all(endpoints.values()), "some client had no traffic at the peer"))
    name = f"{run.cell.name}-{keyed(run)}"
    counts = {n: len(e) for n, e in endpoints.items()}
    return [
        rec.result("CL-SPI", name, spi_checks, f"{keying[1]}; each client leased its inbound SPI on the global IP "
                   "of its ports; "
                   f"their agents delivered {delivered_all}; h1's wire: {len(views.h1_in)} packets to its own SPI",
                   f"no SPI lease on another global IP; packets on h1's wire for another SPI or unreadable: "
                   f"{sum(views.h1_unjudged.values())}",
                   extra_evidence=run.evidence),
        rec.result("CL-UNIQ", name, uniq_checks, f"{len(run.members)} clients on {run.members[0].global_ip} at once: "
                   f"distinct (global IP, port) at the peer {counts}, distinct SPI leases in the NAT's table "
                   f"{ {n: len(k) for n, k in leased.items()} }", "no endpoint shared",
                   extra_evidence=run.evidence),
    ]


def judge_control(rec: Record, run: CellRun, views: Views, control: str) -> list[ScenarioResult]:
    """A control passes when the traffic failed at the receiver for the reason the seed predicts."""
    cell, results = run.cell, []
    peer_status = run.statuses.get(cell.peer, {}).get("counters", {})
    for transport, proto in TRANSPORTS.items():
        label = {"ipsec": cell.protocol.upper(), "mode": cell.mode, "transport": transport}
        name = f"{cell.name}-{transport.lower()}"
        inner = [v for c in run.members for v in _of(views.at_peer[c.name], proto)]
        apps_failed = all(not app_ok(a, run.apps[c.name][a]) for c in run.members for a in APPS[transport])
        at_sender = _of(views.h1_out, proto)  # before the NAT, as h1 sent them: these must be valid
        checks = [(bool(at_sender) and all(v.ok and v.checksum_ok for v in at_sender),
                   f"h1's wire: {sum(bool(v.ok and v.checksum_ok) for v in at_sender)} of {len(at_sender)} {transport} "
                   "packets valid as sent (ICV, decryption, checksum)")]
        if cell.protocol == "ah":
            sent = inner
            checks += [(bool(sent) and not any(v.icv_ok for v in sent),
                       f"scapy: {sum(v.icv_ok for v in sent)} of {len(sent)} AH ICVs verified at the peer"),
                      (peer_status.get("drops", {}).get("bad_icv", 0) > 0, "the peer's agent dropped nothing for a bad "
                                                                             "ICV"),
                      (apps_failed, "an application succeeded")]
            positive = (f"scapy: {len(at_sender)} AH packets valid on h1's wire; {sum(v.icv_ok for v in sent)} of "
                        f"{len(sent)} AH ICVs verify at {cell.peer}; its agent dropped "
                        f"{peer_status.get('drops', {}).get('bad_icv', 0)} for a bad ICV")
        else:
            bad = [v for v in inner if v.checksum_ok is False]
            undecrypted = [v for c in run.members for v in views.at_peer[c.name] if not (v.icv_ok and v.decrypted)]
            checks += [(not undecrypted, f"{len(undecrypted)} ESP packets failed their ICV or decryption at the peer: "
                                         "not the predicted reason"),
                       (bool(inner) and len(bad) == len(inner), f"scapy: {len(inner) - len(bad)} of {len(inner)} inner "
                                                                f"checksums right at the peer"),
                      (run.csum_errors[cell.target[0]].get(transport, 0) > 0,
                       f"{cell.target[0]}'s kernel counted no {transport} checksum errors"),
                      (apps_failed, "an application succeeded")]
            positive = (f"scapy: {len(at_sender)} {transport} packets valid on h1's wire; ESP decrypted at "
                        f"{cell.peer} ({len(undecrypted)} failed), with {len(bad)} of {len(inner)} inner {transport} "
                        f"checksums wrong; {cell.target[0]}'s kernel counted {run.csum_errors[cell.target[0]].get(transport)} "
                        f"{transport} checksum errors")
        verdict = rec.result(control, name, checks, positive, "the applications got nothing", cell=label,
                             extra_evidence=run.evidence)
        results.append(replace(verdict, control=True))
    return results


# ----------------------------------------------------------------------------- scenarios


@scenario(covers=("OUT-SEND", "OUT-PORT", "OUT-TUNADDR", "OUT-CSUM", "OUT-AH", "OUT-ALG", "IN-RECV", "IN-AH",
                  "IN-PORT", "IN-TUNADDR", "IN-CSUM", "IN-ALG", "CL-SPI", "CL-UNIQ", "CL-COOKIE"),
          order=30, cells=tuple(c.name for c in CELLS))
def client_matrix(ctx: Context) -> list[ScenarioResult]:
    """Every cell: three clients behind one global IP, all at once; OUT-*, IN-*, CL-SPI, CL-UNIQ. Keyed by
    IKEv2 (CL-COOKIE in each such cell) but in MANUAL_CELLS (conformance.matrix), keyed by hand."""
    results = []
    members = clients(3, 1)
    for cell in CELLS:
        with ctx.recorded(f"client-{cell.name}") as rec:
            run = run_cell(ctx, cell, members, rec.folder, keying=cell.keying)
        views = read_views(run)
        save_text(rec.folder / "views.txt", _views_summary(views))
        results += judge_cell(rec, run, views)
    return results


@scenario(covers=("CTRL-NOCOMP",), order=50, cells=tuple(c.name for c in CONTROL_CELLS))
def client_controls(ctx: Context) -> list[ScenarioResult]:
    """CTRL-NOCOMP: the cells the seed predicts a failure for, with the agent's compensation off."""
    return _controls(ctx, "CTRL-NOCOMP", "control-nocomp")


# The classic testbed (r1 a Linux masquerade, no controller) comes up after the extensible one.
@scenario(covers=("CTRL-CLASSIC",), order=100, testbed="classic", cells=tuple(c.name for c in CONTROL_CELLS))
def client_classic(ctx: Context) -> list[ScenarioResult]:
    """CTRL-CLASSIC: plain IPsec hosts through a Linux conntrack masquerade router instead of r1."""
    return _controls(ctx, "CTRL-CLASSIC", "control-classic")


def _controls(ctx: Context, control: str, prefix: str) -> list[ScenarioResult]:
    """One client alone on its global IP, without compensation, in each cell with a predicted failure."""
    results = []
    members = clients(1, 1)
    for cell in CONTROL_CELLS:
        with ctx.recorded(f"{prefix}-{cell.name}") as rec:
            run = run_cell(ctx, cell, members, rec.folder, compensate=False)
        results += judge_control(rec, run, read_views(run, ike=False), control)
    return results


NOALG_FAILS = frozenset({"OUT-ALG", "IN-ALG"})  # what a client without its ALG lacks, and nothing else
NOVERIFY_FAILS = frozenset({"IN-AH"})  # what a client that accepts any AH ICV lacks


@scenario(covers=("CTRL-NOVERIFY",), order=70, cells=("ah-transport",))
def client_noverify(ctx: Context) -> list[ScenarioResult]:
    """CTRL-NOVERIFY: the matrix's AH transport cell with the clients' ICV verification off (the
    agent's ``verify_icv = false`` fault switch): the matrix judges must fail exactly IN-AH.

    Its three clients sit on two global IPs (h1 and h3 share one, h2 is alone), where the matrix has
    one: every other judge passing here is the live check that each client compensates for its own
    global in the cell where that matters most (the AH ICV covers the addresses)."""
    cell, members = Cell("ah", "transport"), clients(3, 2)
    with ctx.recorded("control-noverify") as rec:
        run = run_cell(ctx, cell, members, rec.folder, verify_icv=False)
    return [judge_fault(rec, judge_cell(rec, run, read_views(run)), "CTRL-NOVERIFY", NOVERIFY_FAILS, run.evidence,
                        cell={"ipsec": "AH", "mode": "transport", "transport": "UDP"})]


@scenario(covers=("CTRL-NOALG",), order=60, cells=("esp-transport",))
def client_noalg(ctx: Context) -> list[ScenarioResult]:
    """CTRL-NOALG: the matrix's ESP transport cell with the clients' ALG off (an empty ``algs`` list).

    The fault variant of OUT-ALG and IN-ALG on the live testbed: the same
    judges as the matrix must fail exactly those two behaviours, and no other.
    """
    cell, members = Cell("esp", "transport"), clients(3, 1)
    with ctx.recorded("control-noalg") as rec:
        run = run_cell(ctx, cell, members, rec.folder, algs=())
    return [judge_fault(rec, judge_cell(rec, run, read_views(run)), "CTRL-NOALG", NOALG_FAILS, run.evidence)]


def judge_fault(rec: Record, results: list[ScenarioResult], control: str, expected: frozenset[str],
                evidence: list[Path], cell: dict | None = None) -> ScenarioResult:
    """A fault control passes when the matrix judges fail exactly the ``expected`` behaviours: each
    behaviour the fault removes is shown able to fail, and the fault disturbs nothing else."""
    failed = {r.behaviour for r in results if r.verdict != "pass"}
    reasons = "; ".join(f"{r.behaviour} {r.scenario}: {r.reason}" for r in results if r.verdict != "pass")
    verdict = rec.result(control, "fault", [
        (failed == expected, f"failed behaviours {sorted(failed)}, expected exactly {sorted(expected)}"),
    ], f"the matrix judges failed {sorted(failed)}: {reasons[:400]}",
        f"{len(results) - sum(r.verdict != 'pass' for r in results)} other verdicts passed",
        cell=cell or {"ipsec": "ESP", "mode": "transport", "transport": "UDP"}, extra_evidence=evidence)
    return replace(verdict, control=True)


def _views_summary(views: Views) -> str:
    lines = [f"at peer: { {k: len(v) for k, v in views.at_peer.items()} }",
             f"peer to clients: { {k: len(v) for k, v in views.peer_to_client.items()} }",
             f"h1 in: {len(views.h1_in)}, h1 out: {len(views.h1_out)}, tun: {len(views.tun)}, "
             f"tshark: {views.tshark}, intranet: {len(views.intranet)}"]
    return "\n".join(lines) + "\n"


RENEW_LIFETIME_S = 4  # the NAT grants it (the runner allows 1 s leases): renewals every 2-2.5 s
RENEW_RUN_S = 12


@scenario(covers=("CL-RENEW",), order=40, cells=("esp-transport",))
def client_renew(ctx: Context) -> list[ScenarioResult]:
    """CL-RENEW: with 4 s leases, 12 s of traffic needs every lease renewed several times, in place."""
    tb = ctx.testbed
    cell = Cell("esp", "transport")
    members = clients(1, 1)
    configs, peer = behind_nat(cell, members, lifetime=RENEW_LIFETIME_S)
    h1, target = tb.host(members[0].name), tb.host(cell.target[0])
    with ctx.recorded("client-renew") as rec, ExitStack() as stack:
        others = set(_entries_of(tb.table(), members[0].private_ip))  # leases of earlier scenarios, not the agent's
        pcaps = stack.enter_context(captures([(h1, f"{h1.name}-eth0")], rec.folder / "pcap"))  # from the grants on
        stack.enter_context(AgentProcess(tb.host(cell.peer), peer, rec.folder / f"agent-{cell.peer}"))
        agent = stack.enter_context(AgentProcess(h1, configs[0], rec.folder / "agent-h1"))
        before = {i: t for i, t in _entries_of(tb.table(), members[0].private_ip).items() if i not in others}
        stack.enter_context(Service(target, ["iperf3", "-s", "-p", str(IPERF_UDP_BASE)], settle=0.5))
        out = h1.cmd(f"iperf3 -c {cell.target[1]} -p {IPERF_UDP_BASE} -u -b 2M -l 1000 -t {RENEW_RUN_S} -J")
        after = {i: t for i, t in _entries_of(tb.table(), members[0].private_ip).items() if i not in others}
        status = agent.refresh()
    try:
        udp = json.loads(out[out.index("{"):])["end"]["sum"]
    except (ValueError, KeyError):
        udp = {"packets": 0, "lost_packets": 0, "error": out[-300:]}
    on_wire = _pcp_grants(pcaps[f"{h1.name}-eth0"], members[0].private_ip)
    save_json(rec.folder / "renewals.json", {"before": before, "after": after, "agent": status, "iperf3": udp})
    return [judge_renew(rec, status, udp, before, after, rec.counter_delta("leases_renewed"), on_wire,
                        [rec.folder / "renewals.json", pcaps[f"{h1.name}-eth0"]])]


def judge_renew(rec: Record, status: dict, udp: dict, before: dict, after: dict, renewed: int, on_wire: int,
                evidence: list[Path]) -> ScenarioResult:
    """CL-RENEW from the agent's status, iperf3's report, the NAT's entries and counter, and h1's wire.

    A block missing from the status is a failed check, never a default that passes."""
    leases = status.get("leases") or {}
    counters = leases.get("counters", {})
    wanted = leases.get("wanted", 0)
    lost = udp.get("lost_packets", 0) / max(udp.get("packets", 0), 1)
    checks = [
        (wanted > 0 and counters.get("renewed", 0) >= 3 * wanted,
         f"the agent renewed {counters.get('renewed', 0)} times for {wanted} leases in {RENEW_RUN_S} s"),
        (renewed >= 3 * wanted, f"the NAT counted {renewed} renewals"),
        (on_wire >= 3 * wanted, f"tshark saw {on_wire} successful PCP answers to h1 during the traffic"),
        (set(before) == set(after) and bool(before), "entries were recreated or lost: ids before "
                                                      f"{sorted(before)[:4]}, after {sorted(after)[:4]}"),
        (bool(before) and all(after[i] > before[i] for i in before if i in after),
         "an entry's expiry did not move forward"),
        (_none_lost(leases), f"the agent's status: {counters.get('lost', 0)} leases lost, {leases.get('held')} of "
                             f"{wanted} held, problems {leases.get('problems')}"),
        (udp.get("packets", 0) > 0 and lost < 0.02, f"iperf3 UDP through the renewals: {udp}"),
    ]
    return rec.result("CL-RENEW", "esp-transport-4s-leases", checks,
                      f"{wanted} leases of {RENEW_LIFETIME_S} s renewed {counters.get('renewed', 0)} times over "
                      f"{RENEW_RUN_S} s of iperf3 UDP ({udp.get('packets', 0)} datagrams, {lost:.1%} lost); "
                      f"{len(set(before) & set(after))} of {len(before)} NAT entries kept; tshark read {on_wire} PCP "
                      "grants to h1 on its wire",
                      f"the agent's status: {counters.get('lost', 0)} leases lost, {leases.get('held')} of {wanted} "
                      f"held", extra_evidence=evidence)


def _none_lost(leases: dict) -> bool:
    """The agent's lease status shows every wanted lease held and none lost. Its counters are a
    Counter (an absent "lost" is 0), so the status must hold the counters, "held" and "problems"."""
    return ("counters" in leases and leases["counters"].get("lost", 0) == 0 and "problems" in leases
            and not leases["problems"] and leases.get("wanted", 0) > 0 and leases.get("held") == leases["wanted"])


def _pcp_grants(pcap: Path, client: str) -> int:
    """Successful PCP answers with a lifetime to ``client``, read by tshark's own PCP dissector (RFC 6887 7.2)."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", "udp.port==5351,portcontrol", "-Y",
                          f"portcontrol.r == 1 && portcontrol.result_code == 0 && portcontrol.lifetime_rsp > 0 "
                          f"&& ip.dst == {client}", "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return len(out.split())


def _entries_of(table: dict, private_ip: str) -> dict[int, float]:
    """The NAT's client-ALG entries of ``private_ip``: id -> expiry."""
    return {e["id"]: e["expires"] for e in table.get("entries", [])
            if e["private_ip"] == private_ip and e["kind"] == "CLIENT-ALG"}
