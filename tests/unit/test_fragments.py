"""IPv4 fragments through the fake r1 (RFC 4787 REQ-14): in order and out of order, both ways,
translated fragment by fragment; scapy makes the fragments and reassembles what comes out, so the
verdict (ports, addresses, the transport checksum over the whole datagram) is scapy's.
Then the attacks (RFC 1858, RFC 3128): tiny, into the header, overlapping, endless, too many ids."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, defragment, fragment
from scapy.layers.l2 import ARP, Ether

from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from nat_app.fragments import FragmentLimits
from netwire.plan import GATEWAY_IP
from tests.unit.fakeswitch import FakeSwitch
from tests.unit.test_nat_core import G1, IN, OUT, R_IN, R_OUT, SRV1, host_mac

H1, H2 = "10.0.0.1", "10.0.0.2"
PAYLOAD = bytes(range(256)) * 12  # 3072 bytes: four fragments of 1000


@pytest.fixture
def switch() -> FakeSwitch:
    """One global address, so that two clients using one source port force a port translation."""
    sw = FakeSwitch(NatCore(NatConfig(globals=global_pool(1)), rng=random.Random(3)))
    sw.receive(OUT, bytes(Ether(src=host_mac(SRV1), dst="ff:ff:ff:ff:ff:ff") /
                          ARP(op=1, hwsrc=host_mac(SRV1), psrc=SRV1, pdst=G1)))
    for host in (H1, H2):
        sw.receive(IN, bytes(Ether(src=host_mac(host), dst="ff:ff:ff:ff:ff:ff") /
                             ARP(op=1, hwsrc=host_mac(host), psrc=host, pdst=GATEWAY_IP)))
    sw.take(OUT), sw.take(IN)
    return sw


def frames(src: str, dst: str, l4, ident: int, inside: bool, size: int = 1000) -> list[bytes]:
    """The fragments of one datagram as frames on r1's inside or outside port."""
    macs = (host_mac(src), R_IN) if inside else (host_mac(src), R_OUT)
    return [bytes(Ether(src=macs[0], dst=macs[1]) / f)
            for f in fragment(IP(src=src, dst=dst, id=ident) / l4, fragsize=size)]


def reassembled(out: list[bytes]) -> IP:
    (whole,) = defragment(sorted((Ether(f)[IP] for f in out), key=lambda p: p.frag))
    return IP(bytes(whole))


def checksum_ok(pkt: IP, layer) -> bool:
    again = IP(bytes(pkt))
    del again[layer].chksum
    return IP(bytes(again))[layer].chksum == pkt[layer].chksum


def send_all(sw: FakeSwitch, port: int, fs: list[bytes], now: float = 0.0) -> None:
    for f in fs:
        sw.receive(port, f, now)


def test_outbound_udp_fragments_in_order_are_translated_with_the_port_in_the_first(switch):
    send_all(switch, IN, [bytes(Ether(src=host_mac(H2), dst=R_IN) / IP(src=H2, dst=SRV1) / UDP(sport=5000, dport=9))])
    switch.take(OUT)  # h2 holds global port 5000: h1's datagram from 5000 must get another
    send_all(switch, IN, frames(H1, SRV1, UDP(sport=5000, dport=9000) / PAYLOAD, 77, inside=True))
    out = switch.take(OUT)
    assert len(out) == 4 and all(Ether(f).dst == host_mac(SRV1) and Ether(f).src == R_OUT for f in out)
    whole = reassembled(out)
    assert whole.src == G1 and whole[UDP].sport != 5000 and bytes(whole[UDP].payload) == PAYLOAD
    assert checksum_ok(whole, UDP) and whole.ttl == 63
    assert switch.core.counters["fragments_translated"] == 1


def test_inbound_udp_fragments_out_of_order_reach_the_client_translated(switch):
    send_all(switch, IN, [bytes(Ether(src=host_mac(H1), dst=R_IN) / IP(src=H1, dst=SRV1) / UDP(sport=4000, dport=9))])
    global_port = Ether(switch.take(OUT)[0])[UDP].sport
    fs = frames(SRV1, G1, UDP(sport=9, dport=global_port) / PAYLOAD, 900, inside=False)
    send_all(switch, OUT, fs[::-1])  # last first: three wait for the first fragment's verdict
    out = switch.take(IN)
    assert len(out) == 4 and all(Ether(f).dst == host_mac(H1) for f in out)
    whole = reassembled(out)
    assert (whole.dst, whole[UDP].dport, bytes(whole[UDP].payload)) == (H1, 4000, PAYLOAD)
    assert checksum_ok(whole, UDP) and switch.core.counters["fragments_waiting"] == 3
    assert switch.core.fragments.datagrams == {} and switch.core.fragments.buffered == 0


def test_outbound_tcp_fragments_are_translated(switch):
    send_all(switch, IN, frames(H1, SRV1, TCP(sport=40000, dport=80, flags="PA") / PAYLOAD, 5, inside=True))
    whole = reassembled(switch.take(OUT))
    assert (whole.src, whole[TCP].sport) == (G1, 40000) and checksum_ok(whole, TCP)


def test_unsolicited_inbound_fragments_are_dropped_and_counted(switch):
    send_all(switch, OUT, frames(SRV1, G1, UDP(sport=9, dport=6000) / PAYLOAD, 1, inside=False)[::-1])
    assert switch.take(IN) == []
    c = switch.core.counters
    assert c["drop:no-entry"] == 1 and c["drop:fragment-of-dropped"] == 3
    again = frames(SRV1, G1, UDP(sport=9, dport=6000) / PAYLOAD, 2, inside=False)
    send_all(switch, OUT, again[:2])
    send_all(switch, OUT, again[2:])  # the rest of a datagram whose first fragment was dropped
    assert c["drop:fragment-of-poisoned"] == 3 and switch.take(IN) == []


def test_a_tiny_first_fragment_is_refused(switch):
    """RFC 1858 3.1: a first fragment too short for the TCP flags cannot be filtered on them."""
    tiny = bytes(Ether(src=host_mac(SRV1), dst=R_OUT) / IP(src=SRV1, dst=G1, id=9, flags="MF", proto=6) /
                 bytes(TCP(sport=80, dport=4000))[:8])
    switch.receive(OUT, tiny)
    assert switch.core.counters["drop:fragment-tiny"] == 1 and switch.core.fragments.datagrams == {}


def test_a_fragment_reaching_into_the_tcp_header_is_refused(switch):
    """RFC 1858 3.2: offset 1 (8 bytes) would rewrite TCP's ports and flags after the filter saw them."""
    evil = bytes(Ether(src=host_mac(SRV1), dst=R_OUT) / IP(src=SRV1, dst=G1, id=9, frag=1, proto=6) / (b"\x00" * 16))
    switch.receive(OUT, evil)
    assert switch.core.counters["drop:fragment-into-header"] == 1


def test_overlapping_fragments_poison_their_datagram(switch):
    send_all(switch, IN, [bytes(Ether(src=host_mac(H1), dst=R_IN) / IP(src=H1, dst=SRV1) / UDP(sport=4000, dport=9))])
    global_port = Ether(switch.take(OUT)[0])[UDP].sport
    fs = frames(SRV1, G1, UDP(sport=9, dport=global_port) / PAYLOAD, 44, inside=False)
    overlap = IP(fs[2][14:])
    overlap.frag -= 1  # starts 8 bytes into the previous fragment
    del overlap.chksum
    send_all(switch, OUT, [fs[1], bytes(Ether(src=host_mac(SRV1), dst=R_OUT) / overlap), fs[0], fs[3]])
    assert switch.take(IN) == []
    c = switch.core.counters
    assert c["drop:fragment-overlap"] == 1 and c["drop:fragment-of-poisoned"] >= 2


def test_a_datagram_beyond_65535_bytes_is_refused(switch):
    evil = bytes(Ether(src=host_mac(SRV1), dst=R_OUT) / IP(src=SRV1, dst=G1, id=9, frag=8189, proto=17) /
                 (b"\x00" * 100))
    switch.receive(OUT, evil)
    assert switch.core.counters["drop:fragment-too-long"] == 1


def test_endless_datagrams_are_forgotten_after_the_timeout_with_their_buffers(switch):
    fs = frames(SRV1, G1, UDP(sport=9, dport=4000) / PAYLOAD, 10, inside=False)
    send_all(switch, OUT, fs[1:3], now=0.0)  # the first fragment never comes
    frags = switch.core.fragments
    assert len(frags.datagrams) == 1 and frags.buffered > 0
    switch.apply(switch.core.tick(frags.limits.timeout + 1), frags.limits.timeout + 1)
    assert frags.datagrams == {} and frags.buffered == 0
    assert switch.core.counters["drop:fragment-timeout"] == 2


def test_too_many_open_datagrams_from_one_source_are_refused_without_evicting_others(switch):
    limits = switch.core.fragments.limits
    for ident in range(limits.per_source + 5):
        send_all(switch, OUT, frames(SRV1, G1, UDP(sport=9, dport=4000) / PAYLOAD, ident, inside=False)[1:2])
    frags = switch.core.fragments
    assert len(frags.datagrams) == limits.per_source
    assert switch.core.counters["drop:fragment-table-full"] == 5
    other = "203.0.113.101"
    switch.receive(OUT, frames(other, G1, UDP(sport=9, dport=4000) / PAYLOAD, 1, inside=False)[1])
    assert len(frags.datagrams) == limits.per_source + 1  # another source still gets a slot


def test_buffered_bytes_are_bounded():
    core = NatCore(NatConfig(globals=global_pool(1)), rng=random.Random(3))
    sw = FakeSwitch(core)
    core.fragments.limits = FragmentLimits(max_bytes=1500)
    fs = frames(SRV1, G1, UDP(sport=9, dport=4000) / PAYLOAD, 10, inside=False)
    send_all(sw, OUT, fs[1:])
    assert core.fragments.buffered <= 1500 and core.counters["drop:fragment-buffer-full"] == 1


def test_esp_fragments_of_leased_spis_reach_their_owners_out_of_order_both_ways():
    """Leased protocols too (REQ-14 and the seed's NAT-IN/NAT-OUT): three clients share one global, so the
    controller demultiplexes by SPI, which only the first fragment carries; later ones follow it by IP ID."""
    from netwire import pcp
    from tests.unit.test_lease_server import Client, esp_payload, mac, switch_with

    sw = switch_with()
    clients = [Client(sw, f"10.0.0.{i}") for i in (1, 2, 3)]
    clients[0].define(pcp.ESP_DEFINITION)
    spis = [c.lease(50).info.global_gpn for c in clients]
    big = esp_payload(spis[1]) + bytes(3000)
    fs = [bytes(Ether(src=mac(SRV1), dst=R_OUT) / f)
          for f in fragment(IP(src=SRV1, dst=G1, id=321, proto=50) / big, fragsize=1000)]
    send_all(sw, OUT, [fs[2], fs[1], fs[0], fs[3]])
    out = sw.take(IN)
    assert len(out) == 4 and {Ether(f).dst for f in out} == {clients[1].mac}
    whole = reassembled(out)
    assert whole.dst == clients[1].ip and bytes(whole.payload) == big
    outbound = [bytes(Ether(src=clients[2].mac, dst=R_IN) / f)
                for f in fragment(IP(src=clients[2].ip, dst=SRV1, id=7, proto=50) / esp_payload(0x5000) /
                                  bytes(2000), fragsize=1000)]
    send_all(sw, IN, outbound[::-1])
    back = reassembled(sw.take(OUT))
    assert back.src == G1 and bytes(back.payload)[:4] == (0x5000).to_bytes(4, "big")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([IN, OUT]), st.integers(0, 8191), st.booleans(), st.integers(0, 3),
                          st.binary(min_size=0, max_size=64), st.sampled_from([1, 6, 17, 50])), max_size=40))
def test_random_fragments_never_crash_and_memory_stays_bounded(frags):
    """Hostile input loses nothing: any mix of offsets, MF bits, ids and lengths is dropped or translated."""
    core = NatCore(NatConfig(globals=global_pool(1)), rng=random.Random(3))
    sw = FakeSwitch(core)
    core.fragments.limits = FragmentLimits(max_datagrams=8, per_source=4, max_fragments=6, max_bytes=300)
    for port, offset, more, ident, payload, proto in frags:
        src, dst = (H1, SRV1) if port == IN else (SRV1, G1)
        mac = R_IN if port == IN else R_OUT
        sw.receive(port, bytes(Ether(src=host_mac(src), dst=mac) /
                               IP(src=src, dst=dst, id=ident, frag=offset, flags="MF" if more else 0, proto=proto) /
                               payload))
        f = core.fragments
        assert len(f.datagrams) <= 8 and 0 <= f.buffered <= 300
        assert all(len(d.ranges) <= 6 for d in f.datagrams.values())
    core.table.check_invariants()


def test_two_hosts_behind_one_global_never_share_an_ip_id_toward_one_server(switch):
    """RFC 7857 3.9 / RFC 6864 5.3.1: h1 and h2 pick the same IP ID; behind one global address their
    datagrams to srv1 would share srv1's reassembly key. The NAT renumbers each translated datagram,
    every fragment of it alike, and both reassemble whole."""
    for host, sport in ((H1, 5001), (H2, 5002)):
        send_all(switch, IN, frames(host, SRV1, UDP(sport=sport, dport=9000) / PAYLOAD, 4242, inside=True))
    out = [Ether(f)[IP] for f in switch.take(OUT)]
    ids = {}
    for p in out:
        ids.setdefault(p.id, []).append(p)
    assert len(ids) == 2 and all(len(group) == 4 for group in ids.values())
    for group in ids.values():
        whole = reassembled([bytes(Ether() / p) for p in group])
        assert whole.src == G1 and bytes(whole[UDP].payload) == PAYLOAD and checksum_ok(whole, UDP)
    for p in out:  # header checksums updated: scapy recomputes the same
        again = IP(bytes(p))
        del again.chksum
        assert IP(bytes(again)).chksum == p.chksum


def test_inbound_fragments_keep_their_ip_id(switch):
    send_all(switch, IN, [bytes(Ether(src=host_mac(H1), dst=R_IN) / IP(src=H1, dst=SRV1) / UDP(sport=4000, dport=9))])
    global_port = Ether(switch.take(OUT)[0])[UDP].sport
    send_all(switch, OUT, frames(SRV1, G1, UDP(sport=9, dport=global_port) / PAYLOAD, 999, inside=False))
    assert {Ether(f)[IP].id for f in switch.take(IN)} == {999}
