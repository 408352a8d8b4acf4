"""Debian's ``natpmpc`` (libnatpmp, the library real applications link) against the NAT (issue 14, item 6).

Unmodified natpmpc on h1 asks the external address, maps TCP 8080 for 120 s,
renews and deletes it (RFC 6886 3.2-3.4); curl on srv1 reaches an HTTP server
on h1 through the mapping only while it lives; h2's natpmpc cannot delete it.
Judges: natpmpc's own output and exit status, curl's status, tshark's NAT-PMP
dissector on h1's wire, and tshark reading srv1's and h1's wires for the SYNs
that were sent after the deletion and never arrived.
"""

from __future__ import annotations

import re
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from conformance import apps
from conformance.evidence import captures, read_pcap
from tests.testbed.services import LISTEN_TIMEOUT_S
from topo.natlab import GATEWAY_IP, client_ip, global_ips, server_ip

H1, G1, SRV1 = client_ip(1), global_ips(1)[0], server_ip(1)
PRIVATE_PORT = 8080
MAPPED = re.compile(r"Mapped public port (\d+) protocol (\w+) to local port (\d+) (?:lifetime|liftime) (\d+)")


def natpmpc(host, *args: str | int) -> tuple[str, int]:
    """Run natpmpc as a user would (the gateway from the host's default route); its output and status."""
    out = host.cmd(f"natpmpc {' '.join(map(str, args))}; echo EXIT=$?")
    text, status = out.rsplit("EXIT=", 1)
    return text, int(status.split()[0])


def mapping(host, public: int, lifetime: int) -> tuple[int, int]:
    """``natpmpc -a``: the (public port, lifetime) natpmpc reports."""
    out, status = natpmpc(host, "-a", public, PRIVATE_PORT, "tcp", lifetime)
    found = MAPPED.search(out)
    assert status == 0 and found, out
    assert (found.group(2), int(found.group(3))) == ("TCP", PRIVATE_PORT), out
    return int(found.group(1)), int(found.group(4))


@contextmanager
def http_server(host, port: int):
    """``python3 -m http.server`` on h1, yielded once ``ss`` shows it listening (a SYN before would meet a RST)."""
    with apps.http_server(host, H1, port) as server:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not host.cmd(f"ss -Hntl 'sport = :{port}'").strip():
            assert server.proc.poll() is None and time.monotonic() < deadline, "http.server never listened"
            time.sleep(0.05)
        yield server


def client_leases(tb) -> list[dict]:
    """The NAT's CLIENT-ALG rows, without ``expires_in`` (it counts down while we compare; ``expires`` does not)."""
    return [{k: v for k, v in e.items() if k != "expires_in"} for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG"]


def natpmp_answers(pcap: Path) -> list[dict]:
    """Every NAT-PMP response on the wire, as Wireshark's dissector reads it (not our codec)."""
    fields = ("ip.src", "nat-pmp.opcode", "nat-pmp.result_code", "nat-pmp.external_ip", "nat-pmp.internal_port",
              "nat-pmp.external_port", "nat-pmp.pml")
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", "nat-pmp.opcode >= 128", "-T", "fields",
                          *sum((["-e", f] for f in fields), [])], capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, line.split("\t"), strict=False)) for line in out.splitlines()]


def test_natpmpc_maps_renews_and_deletes_a_working_mapping(make_testbed, tmp_path):
    tb = make_testbed(clients=2, servers=1, globals=1)
    h1, h2, srv1 = tb.host("h1"), tb.host("h2"), tb.host("srv1")
    assert f"default via {GATEWAY_IP}" in h1.cmd("ip route show default")  # natpmpc finds the gateway itself
    with captures([(h1, "h1-eth0"), (srv1, "srv1-eth0")], tmp_path / "pcaps") as pcaps, \
            http_server(h1, PRIVATE_PORT):
        out, status = natpmpc(h1)
        assert status == 0 and f"Public IP address : {G1}" in out, out
        public, lifetime = mapping(h1, PRIVATE_PORT, 120)
        assert lifetime == 120 and apps.curl(srv1, f"http://{G1}:{public}/", timeout=5) == 200
        (lease,) = client_leases(tb)
        assert lease["private_ip"] == H1 and lease["global_gpn"] == public
        assert mapping(h1, PRIVATE_PORT, 120)[0] == public  # renewal: the same port, a later expiry
        (renewed,) = client_leases(tb)
        assert renewed["expires"] > lease["expires"]
        assert mapping(h2, public, 0) == (0, 0) and natpmpc(h2, "-a", 0, 0, "tcp", 0)[1] == 0  # h2: its own, none
        assert client_leases(tb) == [renewed] and apps.curl(srv1, f"http://{G1}:{public}/", timeout=5) == 200
        assert mapping(h1, public, 0) == (0, 0)  # deleted (RFC 6886 3.4)
        assert client_leases(tb) == []
        assert apps.curl(srv1, f"http://{G1}:{public}/", timeout=3) == 0
    sent = [p for p in read_pcap(pcaps["srv1-eth0"]) if p.tcp_syn_only and p.dport == public]
    arrived = [p for p in read_pcap(pcaps["h1-eth0"]) if p.tcp_syn_only and p.dport == PRIVATE_PORT]
    assert len(arrived) == 2 and len(sent) >= 3, (sent, arrived)  # the last curl's SYNs left srv1, none came
    answers = natpmp_answers(pcaps["h1-eth0"])
    assert [a["nat-pmp.opcode"] for a in answers] == ["128", "128", "130", "128", "130", "128", "130"], answers
    assert {a["ip.src"] for a in answers} == {GATEWAY_IP} and {a["nat-pmp.result_code"] for a in answers} == {"0"}
    assert answers[0]["nat-pmp.external_ip"] == G1 and answers[2]["nat-pmp.external_port"] == str(public)
