"""A lease soak (issue 9, 5e): short leases renewed over many lifetimes under traffic lose nothing.

h1's agent holds its ESP SPI and its PEER port blocks with leases of a few
seconds (the controller allows them with --lease-min-lifetime) while iperf3
sends UDP through ESP between h1 and srv1, both ways (--bidir), for more than
ten lifetimes. A renewal that came late would leave a gap: the NAT drops ESP
with no SPI entry, outbound (no global address to give it) and inbound (no
client to deliver it to), and a lease granted afresh would be a new entry. Judged by software nobody here
wrote: iperf3's own JSON (zero datagrams lost) and tshark's PCP dissector on
h1's wire (every lease renewed at least ten times, RFC 6887 11.2.1); and by
the NAT's table: the same entry ids before and after.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from conformance.apps import Service
from conformance.evidence import captures
from conformance.matrix import CELLS, behind_nat, clients
from netwire.pcp import SERVER_PORT, Opcode

LIFETIME_S = 3  # renewals every 1.5-1.9 s (RFC 6887 11.2.1: between 1/2 and 5/8 of the lifetime)
LIFETIMES = 10
RUN_S = LIFETIMES * LIFETIME_S + 3  # more than ten lifetimes of traffic
RATE, LENGTH = "1M", 1000  # modest: ~125 datagrams/s each way, so a loss means a gap, not a saturated 2-core machine
IPERF_PORT = 5301
LEASE_OPCODES = (Opcode.MAP, Opcode.PEER, Opcode.LEASE)  # DEFINE is granted once (lifetime 0), not renewed
NONCE = slice(24 * 2, 36 * 2)  # hex digits: the 96-bit nonce opens every opcode body, after the 24-octet header


def renewals_on_wire(pcap: Path, client: str) -> Counter[tuple[int, str]]:
    """Successful PCP answers with a lifetime to ``client``, per lease (opcode, nonce), read by tshark's PCP
    dissector (RFC 6887 7.2). Its dissector knows MAP and PEER bodies, not the private-use LEASE: the nonce is
    read from the UDP payload, where RFC 6887 11.1/12.1 and LEASE-PROTOCOL.md put it."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={SERVER_PORT},portcontrol", "-Y",
                          f"portcontrol.r == 1 && portcontrol.result_code == 0 && portcontrol.lifetime_rsp > 0 "
                          f"&& ip.dst == {client}", "-T", "fields", "-E", "separator=\t", "-e", "portcontrol.opcode",
                          "-e", "udp.payload"], capture_output=True, text=True, timeout=60, check=True).stdout
    grants: Counter[tuple[int, str]] = Counter()
    for line in out.splitlines():
        opcode, payload = line.split("\t")
        grants[int(opcode, 0), payload.replace(":", "")[NONCE]] += 1
    return grants


def leases_of(tb, private_ip: str) -> dict[int, float]:
    """The NAT's client-ALG entries of ``private_ip`` (natlab table): id -> expiry."""
    return {e["id"]: e["expires"] for e in tb.table()["entries"]
            if e["kind"] == "CLIENT-ALG" and e["private_ip"] == private_ip}


def test_short_leases_renewed_over_ten_lifetimes_under_iperf3_lose_no_datagram(make_testbed, tmp_path):
    tb = make_testbed(clients=1, servers=1, globals=1, controller_args=["--lease-min-lifetime", "1"])
    cell = CELLS[0]  # ESP transport, h1 -> srv1
    member = clients(1, 1)[0]
    configs, peer = behind_nat(cell, [member], lifetime=LIFETIME_S)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    with ExitStack() as stack:
        stack.enter_context(AgentProcess(srv1, peer, tmp_path / "agent-srv1"))
        agent = stack.enter_context(AgentProcess(h1, configs[0], tmp_path / "agent-h1"))
        assert agent.refresh()["leases"]["ready"], agent.status()
        before = leases_of(tb, member.private_ip)
        stack.enter_context(Service(srv1, ["iperf3", "-s", "-p", str(IPERF_PORT)], settle=0.5))
        with captures([(h1, "h1-eth0")], tmp_path / "pcap") as pcaps:
            out = h1.cmd(f"iperf3 -c {cell.target[1]} -p {IPERF_PORT} -u -b {RATE} -l {LENGTH} -t {RUN_S} --bidir -J")
        after = leases_of(tb, member.private_ip)
        status = agent.refresh()["leases"]
    end = json.loads(out[out.index("{"):])["end"]
    for direction in ("sum", "sum_bidir_reverse"):  # h1 -> srv1, srv1 -> h1
        udp = end[direction]
        assert udp["packets"] >= RUN_S * 100 and udp["lost_packets"] == 0, (direction, udp)
    assert status["counters"].get("lost", 0) == 0 and status["ready"], status
    assert before and set(after) == set(before), f"entries recreated or lost: {sorted(before)} -> {sorted(after)}"
    assert all(after[i] > before[i] for i in before), "an entry's expiry did not move forward"
    grants = renewals_on_wire(pcaps["h1-eth0"], member.private_ip)
    leases = {k: n for k, n in grants.items() if k[0] in LEASE_OPCODES}
    assert len(leases) == len(before) == status["wanted"], (len(leases), len(before), status["wanted"])
    assert min(leases.values()) >= LIFETIMES, sorted(leases.values())
