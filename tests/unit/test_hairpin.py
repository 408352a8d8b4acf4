"""Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8) through the fake r1: a client reaches another
client through its global address and port, the source translated to the sender's global
address and port; scapy matches, rewrites and checks the checksums."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from netwire.plan import GATEWAY_IP
from tests.unit.fakeswitch import FakeSwitch, checksums_valid
from tests.unit.test_nat_core import G1, G2, IN, OUT, SRV1, from_client, from_server, host_mac

H1, H2 = "10.0.0.1", "10.0.0.2"


@pytest.fixture
def switch() -> FakeSwitch:
    sw = FakeSwitch(NatCore(NatConfig(globals=global_pool(2)), rng=random.Random(7)))
    sw.receive(OUT, bytes(Ether(src=host_mac(SRV1), dst="ff:ff:ff:ff:ff:ff") /
                          ARP(op=1, hwsrc=host_mac(SRV1), psrc=SRV1, pdst=G1)))
    for host in (H1, H2):  # clients announce themselves, as their ARP for the gateway would
        sw.receive(IN, bytes(Ether(src=host_mac(host), dst="ff:ff:ff:ff:ff:ff") /
                             ARP(op=1, hwsrc=host_mac(host), psrc=host, pdst=GATEWAY_IP)))
    sw.take(OUT), sw.take(IN)
    return sw


def mapped(sw: FakeSwitch, host: str, l4) -> tuple[str, int]:
    """Open a mapping by sending to srv1; the global (IP, port) srv1 sees."""
    sw.receive(IN, from_client(host, l4))
    pkt = Ether(sw.take(OUT)[-1])
    return pkt[IP].src, pkt[l4.__class__].sport


def test_udp_hairpin_delivers_with_the_senders_global_address_and_port_both_ways(switch):
    g2, p2 = mapped(switch, H2, UDP(sport=5000, dport=7))
    g1, p1 = mapped(switch, H1, UDP(sport=4000, dport=7))
    assert {g1, g2} == {G1, G2}  # paired pooling put the two clients on different globals
    switch.receive(IN, from_client(H1, UDP(sport=4000, dport=p2) / b"hello", dst=g2))
    (frame,) = switch.take(IN)
    pkt = Ether(frame)
    assert (pkt[IP].src, pkt[UDP].sport, pkt[IP].dst, pkt[UDP].dport) == (g1, p1, H2, 5000)
    assert pkt.dst == host_mac(H2) and checksums_valid(frame) and bytes(pkt[UDP].payload) == b"hello"
    assert switch.take(OUT) == []  # nothing hairpinned leaks to the outside
    switch.receive(IN, from_client(H2, UDP(sport=5000, dport=p1) / b"back", dst=g1))
    back = Ether(switch.take(IN)[0])
    assert (back[IP].src, back[UDP].sport, back[IP].dst, back[UDP].dport) == (g2, p2, H1, 4000)
    before = switch.packet_ins
    switch.receive(IN, from_client(H1, UDP(sport=4000, dport=p2) / b"again", dst=g2))
    assert switch.packet_ins == before and len(switch.take(IN)) == 1  # the fast path carries the rest
    assert switch.core.counters["hairpinned"] == 2


def test_tcp_hairpin_handshake_completes_through_global_addresses(switch):
    g2, p2 = mapped(switch, H2, TCP(sport=8080, dport=80, flags="S"))
    switch.receive(IN, from_client(H1, TCP(sport=40000, dport=p2, flags="S"), dst=g2))
    syn = Ether(switch.take(IN)[0])
    assert (syn[IP].dst, syn[TCP].dport, syn[IP].src) == (H2, 8080, G1 if g2 == G2 else G2)
    assert checksums_valid(bytes(syn))
    switch.receive(IN, from_client(H2, TCP(sport=8080, dport=syn[TCP].sport, flags="SA"), dst=syn[IP].src))
    synack = Ether(switch.take(IN)[0])
    assert (synack[IP].src, synack[TCP].sport, synack[IP].dst, synack[TCP].dport) == (g2, p2, H1, 40000)
    assert synack[TCP].flags == "SA" and checksums_valid(bytes(synack))


def test_a_host_reaches_its_own_mapping_from_another_socket(switch):
    """RFC 5780 section 4.5's test (coturn's natdiscovery -H): a second socket to the first one's mapped address."""
    g1, p1 = mapped(switch, H1, UDP(sport=4000, dport=3478))
    switch.receive(IN, from_client(H1, UDP(sport=4001, dport=p1), dst=g1))
    pkt = Ether(switch.take(IN)[0])
    assert (pkt[IP].dst, pkt[UDP].dport, pkt[IP].src, pkt[UDP].sport) == (H1, 4000, g1, 4001)


def test_hairpin_to_a_global_port_nobody_holds_is_dropped_and_counted(switch):
    switch.receive(IN, from_client(H1, UDP(sport=4000, dport=6000), dst=G2))
    assert switch.take(IN) == [] and switch.take(OUT) == []
    assert switch.core.counters["drop:hairpin-no-mapping"] == 1
    assert len(switch.core.table) == 0  # a probe opens nothing


def test_outside_packets_claiming_a_global_source_are_dropped(switch):
    """An outsider forging the NAT's own global as its source cannot ride a hairpin sender's entry."""
    g2, p2 = mapped(switch, H2, UDP(sport=5000, dport=7))
    switch.receive(IN, from_client(H1, UDP(sport=4000, dport=p2), dst=g2))
    switch.take(IN)
    (sender,) = [e for e in switch.core.table if e.foreign == g2]
    switch.receive(OUT, from_server(g2, sender.global_ip, UDP(sport=p2, dport=4000)))
    assert switch.take(IN) == []
    assert switch.core.counters["drop:spoofed-global-source"] == 1


def test_a_hairpin_senders_entry_idles_out_with_its_flow_and_frees_its_mapping(switch):
    g2, p2 = mapped(switch, H2, UDP(sport=5000, dport=7))
    switch.receive(IN, from_client(H1, UDP(sport=4000, dport=p2), dst=g2))
    (entry,) = [e for e in switch.core.table if e.foreign == g2]
    assert len(switch.flows_with_cookie(entry.id)) == 1 and entry.idle_timeout == switch.core.config.udp_timeout
    switch.remove_flow(entry.id, now=400.0)
    assert switch.core.table.get(entry.id) is None
    assert switch.core.pool.owner_of(17, entry.global_ip, entry.global_gpn) is None
    switch.core.table.check_invariants()


def test_reconcile_keeps_a_hairpin_entry_with_its_one_flow(switch):
    g2, p2 = mapped(switch, H2, UDP(sport=5000, dport=7))
    switch.receive(IN, from_client(H1, UDP(sport=4000, dport=p2), dst=g2))
    core = switch.core
    core.state_lost = False
    seen = [(f.msg.cookie, f.msg.priority) for f in switch.flows]
    core.reconcile(seen, now=1.0)
    assert any(e.foreign == g2 for e in core.table) and core.counters["entries_lost_while_away"] == 0
