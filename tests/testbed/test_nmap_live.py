"""A stranger on the outside (srv2) scans every global address with nmap and finds nothing (issue 9, 5d).

nmap is Debian's: a scanner nobody here wrote. It sends TCP SYN to all 65,535
ports and UDP to the ports that matter (ISAKMP 500, NAT-T 4500, PCP 5351, nmap's
top UDP ports, and, once clients hold them, their leased and NAPT-mapped
ports) of every global address, twice: before any client holds anything, and
while three agents hold ESP SPI and port leases and h1 keeps a NAPT mapping to
srv1 open with a listener behind it. Two witnesses must agree that nothing got
through: nmap's own XML report (no port "open"; see conformance.portscan for
why a UDP port dropped in silence reads "open|filtered"), and tcpdump on every
client's wire (no packet from srv2 at all). A marker each client sends after the
scan proves its capture was still recording. The control opens one port on
purpose (PCP MAP, foreign any, with a listener on h1) and the same scan must
find exactly that port, and h1's capture must see srv2: the test can fail.
"""

from __future__ import annotations

import subprocess
from contextlib import ExitStack, contextmanager
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from client_agent.ike.registry import IKE_PORT
from client_agent.ipsec.udpencap import NATT_PORT
from conformance import apps
from conformance.evidence import captures
from conformance.matrix import CELLS, behind_nat, clients
from conformance.portscan import ALL_TCP_PORTS, HostReport, found_open, nmap_argv, read_report, top_udp_ports
from netwire.pcp import SERVER_PORT
from netwire.plan import client_ip, global_ips, server_ip
from tests.testbed.services import probe_service

CLIENTS, GLOBALS = 3, 2
SRV1, SCANNER_IP = server_ip(1), server_ip(2)
TOP_UDP = 100  # nmap's --top-ports for UDP, read from its own nmap-services
NMAP_SERVICES = Path("/usr/share/nmap/nmap-services")
MARK_PORT = 9  # discard: where each client sends its end-of-capture marker (to the next client, on s1)
NAPT_PORT, ECHO_PORT = 40000, 7  # h1's private port of its NAPT mapping to srv1, and srv1's port
OPENED_PORT = 8080  # the control's listener on h1


def base_udp_ports() -> list[int]:
    return sorted({IKE_PORT, NATT_PORT, SERVER_PORT, *top_udp_ports(NMAP_SERVICES.read_text(), TOP_UDP)})


def scan(tb, folder: Path, name: str, udp_ports: list[int]) -> list[HostReport]:
    """nmap from srv2 against every global address; its report, checked to cover every port asked for."""
    xml = folder / f"nmap-{name}.xml"
    out = tb.host("srv2").cmd(" ".join(nmap_argv(global_ips(GLOBALS), ALL_TCP_PORTS, udp_ports, str(xml))))
    assert xml.exists(), f"nmap wrote no report: {out[-500:]}"
    reports = read_report(xml.read_text())
    assert {r.address for r in reports} == set(global_ips(GLOBALS)), out[-500:]
    want = {"tcp": ALL_TCP_PORTS[1] - ALL_TCP_PORTS[0] + 1, "udp": len(set(udp_ports))}
    assert all(r.counted == want for r in reports), [(r.address, r.counted) for r in reports]
    return reports


@contextmanager
def client_wires(tb, folder: Path):
    """tcpdump on every client's wire; after the block each client sends a marker to the next one."""
    names = [f"h{i}" for i in range(1, CLIENTS + 1)]
    with captures([(tb.host(n), f"{n}-eth0") for n in names], folder) as pcaps:
        yield pcaps
        for i, n in enumerate(names):
            apps.probe(tb.host(n), "udp", client_ip((i + 1) % CLIENTS + 1), MARK_PORT, "--count", 1, "--wait", 0.1)


def count(pcap: Path, display_filter: str) -> int:
    """Frames of ``pcap`` that tshark's ``display_filter`` matches."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-e",
                          "frame.number"], capture_output=True, text=True, timeout=60, check=True).stdout
    return len(out.split())


def from_scanner(pcaps: dict[str, Path]) -> dict[str, int]:
    """Per client: packets to or from srv2 on its wire, after checking the capture recorded its own marker."""
    seen = {}
    for intf, pcap in pcaps.items():
        me = client_ip(int(intf.split("-")[0][1:]))
        assert count(pcap, f"ip.src == {me} && udp.dstport == {MARK_PORT}") >= 1, f"{intf}: capture ended early"
        seen[intf] = count(pcap, f"ip.addr == {SCANNER_IP}")
    return seen


def napt_mapping(tb) -> int:
    """h1 sends one UDP datagram from NAPT_PORT to srv1: a NAT-ALG mapping (RFC 4787 REQ-1); its global port.

    Its answer is not awaited: right after a scan, r1's datapath still caches a drop for inbound UDP and
    loses the first answer to a new mapping (see test_first_answer_live.py); :func:`srv1_reaches` shows the
    mapping works once it is in place.
    """
    apps.probe(tb.host("h1"), "udp", SRV1, ECHO_PORT, "--sport", NAPT_PORT, "--count", 1, "--wait", 0.1)
    mapped = [e for e in tb.table()["entries"] if e["kind"] == "NAT-ALG" and e["protocol"] == 17
              and (e["private_ip"], e["private_gpn"]) == (client_ip(1), NAPT_PORT)]
    assert len(mapped) == 1, tb.table()["entries"]
    return mapped[0]["global_gpn"]


def srv1_reaches(tb, mapped: int) -> None:
    """srv1, the mapping's foreign host, gets through it to h1's listener and back (address-dependent
    filtering, RFC 4787 REQ-8, lets srv1 in and no one else)."""
    answer = apps.probe(tb.host("srv1"), "udp", global_ips(GLOBALS)[0], mapped, "--sport", ECHO_PORT,
                        "--count", 1, "--wait", 1)
    assert answer["replies"] == 1, answer


def test_nmap_from_a_stranger_finds_nothing_open_before_and_after_clients_hold_leases(make_testbed, tmp_path):
    tb = make_testbed(clients=CLIENTS, servers=2, globals=GLOBALS)
    udp = base_udp_ports()
    with client_wires(tb, tmp_path / "before") as pcaps:
        found = found_open(scan(tb, tmp_path, "before", udp))
    assert found == set(), f"nmap found open before any lease: {found}"
    assert from_scanner(pcaps) == dict.fromkeys(pcaps, 0)

    cell = CELLS[0]  # ESP transport to srv1: SPI leases and PEER port blocks
    configs, peer = behind_nat(cell, clients(CLIENTS, GLOBALS))
    with ExitStack() as stack:
        mapped = napt_mapping(tb)  # before the agents: afterwards h1's traffic to srv1 is ESP
        stack.enter_context(probe_service(tb.host("h1"), "udp", NAPT_PORT, "udp-echo", client_ip(1), NAPT_PORT))
        srv1_reaches(tb, mapped)
        stack.enter_context(AgentProcess(tb.host("srv1"), peer, tmp_path / "agent-srv1"))
        agents = [stack.enter_context(AgentProcess(tb.host(c.name), c, tmp_path / f"agent-{c.name}"))
                  for c in configs]
        assert all(a.refresh()["leases"]["ready"] for a in agents)  # an agent runs once its leases are granted
        leased = [e for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG"]
        assert {e["protocol"] for e in leased} == {50, 6, 17}, leased
        udp_now = sorted({*udp, mapped, *(e["global_gpn"] for e in leased if e["protocol"] == 17)})
        with client_wires(tb, tmp_path / "leased") as pcaps:
            found = found_open(scan(tb, tmp_path, "leased", udp_now))
        assert found == set(), f"nmap found open while clients hold leases: {found}"
        assert from_scanner(pcaps) == dict.fromkeys(pcaps, 0)

        # The control: a port opened to anyone (PCP MAP, foreign any) with a listener; the same scan finds it.
        opened = map_to_anyone(tb, tmp_path)
        stack.enter_context(probe_service(tb.host("h1"), "tcp", OPENED_PORT, "tcp-sink", OPENED_PORT))
        with client_wires(tb, tmp_path / "control") as pcaps:
            found = found_open(scan(tb, tmp_path, "control", udp_now))
        assert found == {opened}, f"the control: nmap should find exactly {opened}, found {found}"
        reached = from_scanner(pcaps)
        assert reached["h1-eth0"] > 0 and reached["h2-eth0"] == reached["h3-eth0"] == 0, reached


def map_to_anyone(tb, tmp_path: Path) -> tuple[str, str, int]:
    """`natlab lease alloc` a PCP MAP (foreign any) of h1's TCP OPENED_PORT; (global IP, "tcp", global port)."""
    natlab = "natlab lease"  # the console script, on the hosts' PATH
    out = tb.host("h1").cmd(f"{natlab} alloc --protocol tcp --private-gpn {OPENED_PORT} --global-gpn {OPENED_PORT}"
                            f" --state {tmp_path / 'map.json'} --json")
    granted = [e for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG" and e["protocol"] == 6
               and e["private_gpn"] == OPENED_PORT and e["foreign"] is None]
    assert len(granted) == 1, out
    return granted[0]["global_ip"], "tcp", granted[0]["global_gpn"]
