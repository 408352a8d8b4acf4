"""The classic-NAT control: the same testbed with r1 a Linux masquerading router
(RFC 3022 NAPT, nftables + conntrack), no controller.

It must be a fair control: ordinary TCP goes through, translated to the first
global address, and ESP from one client does leave, translated by address only
(conntrack has no ports for protocol 50). What it cannot do is tell two clients'
ESP apart: the second client's packets are dropped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conformance import apps
from conformance.evidence import captures, read_pcap
from nat_app.config import NatConfig
from netwire.plan import GATEWAY_IP, client_ip, global_ips, server_ip
from topo.testbed import Testbed, TestbedError

SRV1 = server_ip(1)
GLOBAL = global_ips(1)[0]
H1_SPI, H2_SPI = 0x4E415401, 0x4E415402


def esp_spis(pcap: Path) -> list[tuple[str, int]]:
    """(source, SPI) of every ESP packet in ``pcap`` (RFC 4303 2.1); ICMP errors quoting one are not ESP."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", "esp && !icmp", "-T", "fields", "-E", "separator=\t",
                          "-e", "ip.src", "-e", "esp.spi"], capture_output=True, text=True, check=True).stdout
    return [(src, int(spi, 0)) for src, spi in (line.split("\t") for line in out.splitlines() if line)]


def test_curl_goes_through_masqueraded_to_the_first_global(make_testbed, tmp_path):
    tb = make_testbed(clients=2, servers=1, globals=2, nat="classic")
    assert tb.controller is None and "masquerade" in tb.nat_ruleset()
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps, apps.http_server(srv1, SRV1):
        assert apps.curl(h1, f"http://{SRV1}:8000/") == 200
    tcp = [p for p in read_pcap(pcaps["srv1-eth0"]) if p.proto == 6 and p.dst == SRV1]
    assert tcp and {p.src for p in tcp} == {GLOBAL}, tcp
    assert not any(client_ip(1) in (p.src, p.dst) for p in read_pcap(pcaps["srv1-eth0"]))
    assert not any(p.checksum_bad for p in tcp)


def test_esp_is_masqueraded_by_address_and_a_second_client_is_dropped(make_testbed, tmp_path):
    """Conntrack tracks protocol 50 by (source, destination) alone: h1's ESP leaves as 203.0.113.1 with its
    SPI untouched; h2's ESP to the same server would need the same reply tuple, so it is dropped."""
    tb = make_testbed(clients=2, servers=1, globals=1, nat="classic")
    h1, h2, srv1 = tb.host("h1"), tb.host("h2"), tb.host("srv1")
    with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps:
        assert apps.probe(h1, "raw", SRV1, 50, "--count", 2, "--spi", H1_SPI)["sent"] == 2
        assert apps.probe(h2, "raw", SRV1, 50, "--count", 2, "--spi", H2_SPI)["sent"] == 2
    assert esp_spis(pcaps["srv1-eth0"]) == [(GLOBAL, H1_SPI)] * 2


def test_classic_testbed_has_no_controller_to_ask(make_testbed):
    tb = make_testbed(clients=1, servers=1, globals=1, nat="classic")
    assert apps.ping(tb.host("h1"), SRV1) == (3, 3)
    r1, config = tb.host("r1"), NatConfig()  # the same gateway MACs as the extensible NAT's
    assert (r1.intf("r1-eth1").MAC(), r1.intf("r1-eth2").MAC()) == (config.inside_mac, config.outside_mac)
    assert config.inside_mac in tb.host("h1").cmd(f"ip neigh show {GATEWAY_IP}")
    with pytest.raises(TestbedError, match="nat='classic'"):
        tb.table()
    with pytest.raises(TestbedError, match="nat='classic'"):
        tb.dump_flows()


def test_unknown_nat_kind_is_refused_by_name():
    with pytest.raises(TestbedError, match="nat='carrier-grade'"):
        Testbed(nat="carrier-grade")
    with pytest.raises(TestbedError, match="control_socket="):
        Testbed(nat="classic", control_socket="/tmp/x.sock")
