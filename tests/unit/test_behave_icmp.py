"""ICMP through the fake r1 (RFC 5508; RFC 4787 REQ-12; RFC 5382 REQ-9, REQ-10): errors about translated
flows translated (Fragmentation Needed keeps its MTU, so PMTUD works through the NAT), errors with a bad
checksum dropped, no error ever removing or refreshing a mapping, hairpinned errors delivered."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether

from tests.unit import test_hairpin
from tests.unit.fakeswitch import checksums_valid
from tests.unit.test_hairpin import H1, H2, mapped
from tests.unit.test_nat_core import IN, OUT, SRV1, SRV2, from_client, from_server, host_mac


@pytest.fixture
def switch():
    return test_hairpin.switch.__wrapped__()


def error_about(frame: bytes, icmp_type: int, code: int, src: str, **fields) -> bytes:
    """An ICMP error from ``src`` quoting the packet of ``frame`` as it left r1 (RFC 792)."""
    quoted = bytes(Ether(frame)[IP])[:28]
    return from_server(src, Ether(frame)[IP].src, ICMP(type=icmp_type, code=code, **fields) / quoted)


def test_fragmentation_needed_reaches_the_client_with_its_mtu_for_pmtud(switch):
    switch.receive(IN, from_client(H1, TCP(sport=40000, dport=80, flags="S")))
    (out,) = switch.take(OUT)
    switch.receive(OUT, error_about(out, 3, 4, SRV1, nexthopmtu=1400))
    (back,) = switch.take(IN)
    pkt = Ether(back)
    assert (pkt[IP].dst, pkt[ICMP].type, pkt[ICMP].code, pkt[ICMP].nexthopmtu) == (H1, 3, 4, 1400)
    assert (pkt[IPerror].src, pkt[TCPerror].sport) == (H1, 40000) and checksums_valid(back)


@pytest.mark.parametrize("icmp_type,code", [(3, 3), (3, 1), (11, 0), (12, 0)])
def test_errors_about_a_udp_flow_are_translated_and_never_end_its_mapping(switch, icmp_type, code):
    switch.receive(IN, from_client(H1, UDP(sport=5000, dport=53)))
    (out,) = switch.take(OUT)
    (entry,) = switch.core.table
    switch.receive(OUT, error_about(out, icmp_type, code, SRV1))
    (back,) = switch.take(IN)
    assert Ether(back)[ICMP].type == icmp_type and Ether(back)[UDPerror].sport == 5000
    assert list(switch.core.table) == [entry] and len(switch.flows_with_cookie(entry.id)) == 2
    switch.receive(OUT, from_server(SRV1, entry.global_ip, UDP(sport=53, dport=entry.global_gpn)))
    assert len(switch.take(IN)) == 1  # the mapping still carries answers


def test_an_error_with_a_bad_checksum_is_dropped_and_counted(switch):
    switch.receive(IN, from_client(H1, UDP(sport=5000, dport=53)))
    (out,) = switch.take(OUT)
    bad = Ether(error_about(out, 3, 3, SRV1))
    bad[ICMP].chksum ^= 0x5555
    switch.receive(OUT, bytes(bad))
    assert switch.take(IN) == [] and switch.core.counters["drop:icmp-error-bad-checksum"] == 1


def test_an_error_about_an_echo_neither_refreshes_nor_removes_its_session():
    """RFC 5508 REQ-6, with two hosts sharing one global so the echo sessions are table-timed (slow path)."""
    from tests.unit.test_fragments import switch as one_global

    sw = one_global.__wrapped__()
    sw.receive(IN, from_client(H1, ICMP(type=8, id=7)))
    sw.receive(IN, from_client(H2, ICMP(type=8, id=7)), now=1.0)  # demotes h1's fast session
    sw.receive(IN, from_client(H1, ICMP(type=8, id=7, seq=2)), now=2.0)
    outs = sw.take(OUT)
    before = {e.id: e.expires for e in sw.core.table}
    assert len(before) == 2 and all(before.values())
    sw.receive(OUT, error_about(outs[-1], 3, 1, SRV1), now=30.0)
    assert len(sw.take(IN)) == 1 and sw.core.counters["icmp_errors_translated"] == 1
    assert {e.id: e.expires for e in sw.core.table} == before


def test_an_error_about_nothing_the_nat_mapped_is_dropped(switch):
    stray = bytes(Ether() / IP(src="203.0.113.1", dst=SRV1) / UDP(sport=6000, dport=53))
    switch.receive(OUT, error_about(stray, 3, 3, SRV2))
    assert switch.take(IN) == [] and switch.core.counters["drop:icmp-error-no-entry"] == 1


def test_a_non_query_error_message_from_outside_is_dropped(switch):
    """RFC 5508 REQ-11: a router advertisement (type 9) is neither a query nor an error."""
    switch.receive(OUT, from_server(SRV1, "203.0.113.1", ICMP(type=9)))
    assert switch.take(IN) == []


def test_a_hairpinned_error_returns_to_the_sender_translated(switch):
    """RFC 5508 REQ-7: h2's port unreachable about h1's hairpinned datagram reaches h1, quoting h1's packet
    as h1 sent it, from h2's global address (REQ-7 a: outer destination = the quoted source)."""
    g2, p2 = mapped(switch, H2, UDP(sport=5000, dport=7))
    switch.receive(IN, from_client(H1, UDP(sport=4000, dport=p2), dst=g2))
    (hairpinned,) = switch.take(IN)
    got = Ether(hairpinned)
    quoted = bytes(got[IP])[:28]
    error = bytes(Ether(src=host_mac(H2), dst=got.src) / IP(src=H2, dst=got[IP].src) / ICMP(type=3, code=3) / quoted)
    switch.receive(IN, error)
    (back,) = switch.take(IN)
    pkt = Ether(back)
    assert (pkt[IP].src, pkt[IP].dst, pkt.dst) == (g2, H1, host_mac(H1))
    assert (pkt[IPerror].src, pkt[UDPerror].sport, pkt[IPerror].dst, pkt[UDPerror].dport) == (H1, 4000, g2, p2)
    assert checksums_valid(back) and switch.take(OUT) == []
