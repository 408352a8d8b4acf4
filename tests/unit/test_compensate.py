"""Pre- and post-compensation (claims 3-14) against scapy's full checksum recomputation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP

from client_agent.compensate import Binding, NotCompensable, incoming, outgoing

PRIVATE, GLOBAL, PEER = "10.0.0.1", "203.0.113.1", "203.0.113.100"


def checksum_ok(raw: bytes, as_src: str | None = None, as_dst: str | None = None) -> bool:
    """Does the TCP/UDP checksum verify for a pseudo-header with these addresses (scapy recomputes)?"""
    pkt = IP(raw)
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    if UDP in pkt and l4.chksum == 0:
        return True
    probe = IP(src=as_src or pkt.src, dst=as_dst or pkt.dst, proto=pkt.proto) / l4.copy()
    del probe.payload.chksum
    expected = IP(bytes(probe)).payload.chksum
    return l4.chksum == expected or {l4.chksum, expected} == {0, 0xFFFF}


def header_ok(raw: bytes) -> bool:
    pkt = IP(raw)
    probe = pkt.copy()
    del probe.chksum
    return IP(bytes(probe)).chksum == pkt.chksum


ports = st.integers(1, 65535)
payloads = st.binary(max_size=41)  # odd lengths included
transports = st.sampled_from([TCP, UDP])


@settings(max_examples=300, deadline=None)
@given(transports, ports, ports, ports, payloads)
def test_transport_mode_out_verifies_as_if_sent_from_the_global_address(layer, private_port, global_port, dport,
                                                                         payload):
    raw = bytes(IP(src=PRIVATE, dst=PEER) / layer(sport=private_port, dport=dport) / payload)
    out = outgoing(raw, Binding(PRIVATE, GLOBAL, private_port, global_port), tunnel=False)
    pkt = IP(out)
    assert pkt.src == PRIVATE and pkt.sport == global_port  # 810: port replaced; the NAT rewrites the address
    assert checksum_ok(out, as_src=GLOBAL)  # 812: verifies once the NAT has put the global address on it


@settings(max_examples=300, deadline=None)
@given(transports, ports, ports, ports, payloads)
def test_transport_mode_in_is_accepted_by_the_private_stack(layer, private_port, global_port, sport, payload):
    natted = IP(bytes(IP(src=PEER, dst=GLOBAL) / layer(sport=sport, dport=global_port) / payload))
    natted.dst = PRIVATE  # the NAT translates the outer destination (NAT-IN); the checksum inside is the peer's
    del natted.chksum
    arrived = bytes(natted)
    back = incoming(arrived, Binding(PRIVATE, GLOBAL, private_port, global_port), tunnel=False)
    pkt = IP(back)
    assert pkt.dport == private_port and checksum_ok(back)  # 824, 826


@settings(max_examples=200, deadline=None)
@given(transports, ports, ports, payloads)
def test_tunnel_mode_rewrites_the_inner_addresses_and_checksums(layer, private_port, global_port, payload):
    binding = Binding(PRIVATE, GLOBAL, private_port, global_port)
    raw = bytes(IP(src=PRIVATE, dst="172.16.0.10") / layer(sport=private_port, dport=80) / payload)
    out = outgoing(raw, binding, tunnel=True)
    assert IP(out).src == GLOBAL and IP(out).sport == global_port and header_ok(out) and checksum_ok(out)  # 811-812
    reply = bytes(IP(src="172.16.0.10", dst=GLOBAL) / layer(sport=80, dport=global_port) / payload)
    back = incoming(reply, binding, tunnel=True)
    assert IP(back).dst == PRIVATE and IP(back).dport == private_port and header_ok(back) and checksum_ok(back)


def test_udp_without_checksum_stays_without():
    raw = bytearray(bytes(IP(src=PRIVATE, dst=PEER) / UDP(sport=5000, dport=53) / b"q"))
    raw[26:28] = b"\x00\x00"
    out = outgoing(bytes(raw), Binding(PRIVATE, GLOBAL, 5000, 6000), tunnel=False)
    assert IP(out)[UDP].chksum == 0 and IP(out)[UDP].sport == 6000


def test_a_computed_zero_udp_checksum_is_sent_as_all_ones():
    binding = Binding(PRIVATE, GLOBAL, 5000, 6000)

    def compensated(word: int) -> int:
        raw = bytes(IP(src=PRIVATE, dst=PEER) / UDP(sport=5000, dport=53) / word.to_bytes(2, "big"))
        return IP(outgoing(raw, binding, tunnel=False))[UDP].chksum

    # A payload word equal to the checksum it would otherwise get makes the sum 0xffff: checksum 0.
    out = compensated(compensated(0))
    assert out == 0xFFFF


@pytest.mark.parametrize("raw,why", [
    (bytes(IP(src=PRIVATE, dst=PEER, flags="MF") / UDP(sport=1, dport=2)), "fragment"),
    (bytes(IP(src="10.0.0.9", dst=PEER) / UDP(sport=1, dport=2)), "source"),
    (bytes(IP(src=PRIVATE, dst=PEER) / UDP(sport=7, dport=2)), "port"),
    (b"\x45\x00", "IPv4"),
])
def test_packets_that_do_not_fit_are_refused_with_a_reason(raw, why):
    with pytest.raises(NotCompensable, match=why):
        outgoing(raw, Binding(PRIVATE, GLOBAL, 1, 2), tunnel=why != "port")
