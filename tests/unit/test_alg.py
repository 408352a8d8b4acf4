"""Client ALGs (OUT-ALG, IN-ALG; claims 1, 2, 7, 13, 19, 25, 27, 33, 39; steps 813 and 822) through a Traversal.

The NAT cannot rewrite an address an application wrote into an ESP payload
(it cannot read it) or an AH one (it must not change it), so the client does,
before protecting and after unprotecting. :class:`AddressTextAlg` is the test
ALG: "10.0.0.1:<private port>" in a UDP payload to TEST_ALG_PORT becomes
"203.0.113.1:<global port>" on the way out and back on the way in. The text
changes length, so lengths and checksums are checked by scapy at the receiver.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP

from client_agent.alg import TEST_ALG_PORT, AddressTextAlg, AlgRegistry
from client_agent.compensate import Binding
from client_agent.ipsec.sa import Mode
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from tests.unit.test_traversal import (
    GLOBAL,
    PRIVATE,
    SRV1,
    checksum_verifies,
    far_end,
    header_verifies,
    in_block,
    l4,
    pair,
)

CELLS = [pytest.param(s, m, id=f"{s}-{m}") for s in ("esp-gcm", "esp-cbc-sha1", "ah-sha1", "ah-sha256") for m in Mode]
words = st.text(alphabet="abcdefgh ,;=", max_size=12).map(str.encode)  # no digits, dots or colons: one clear token
private_ports = st.integers(1024, 65535)


def registry() -> AlgRegistry:
    algs = AlgRegistry()
    algs.register(IPPROTO_UDP, TEST_ALG_PORT, AddressTextAlg())
    return algs


def udp(sport: int, dport: int, payload: bytes, dst: str, src: str = PRIVATE) -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def lengths_right(raw: bytes) -> bool:
    """IP total length and UDP length match the bytes (RFC 791, RFC 768), and the IP header checksum verifies."""
    pkt = IP(raw)
    ihl = pkt.ihl * 4
    return pkt.len == len(raw) and pkt[UDP].len == len(raw) - ihl and header_verifies(raw)


@pytest.mark.parametrize(("suite_key", "mode"), CELLS)
@settings(max_examples=3, deadline=None)
@given(private_port=private_ports, before=words, after=words)
def test_out_alg_the_peer_reads_the_global_address_in_the_payload_claims_1_7_19_27_33_step_813(
        suite_key, mode, private_port, before, after):
    client, peer = pair(suite_key, mode, algs=registry())
    text = f"i am {PRIVATE}:{private_port}".encode()
    delivered = peer.receive(client.send(udp(private_port, TEST_ALG_PORT, before + text + after, far_end(mode))))
    gport = l4(delivered).sport
    assert in_block(gport)
    assert bytes(l4(delivered).payload) == before + f"i am {GLOBAL}:{gport}".encode() + after  # a different length
    assert lengths_right(delivered) and checksum_verifies(delivered)  # over the global source the peer sees
    assert client.traversal.algs.counters["address-text:out"] == 1


@pytest.mark.parametrize(("suite_key", "mode"), CELLS)
@settings(max_examples=3, deadline=None)
@given(private_port=private_ports, before=words, after=words)
def test_in_alg_the_client_reads_its_private_address_in_the_payload_claims_2_13_25_28_39_step_822(
        suite_key, mode, private_port, before, after):
    client, peer = pair(suite_key, mode, algs=registry())
    gport = l4(peer.receive(client.send(udp(private_port, TEST_ALG_PORT, b"hello", far_end(mode))))).sport
    answer = before + f"you are {GLOBAL}:{gport}".encode() + after
    wire = peer.send(bytes(IP(src=far_end(mode), dst=GLOBAL) / UDP(sport=TEST_ALG_PORT, dport=gport) / answer))
    back = client.receive(wire)
    assert IP(back).dst == PRIVATE and l4(back).dport == private_port
    assert bytes(l4(back).payload) == before + f"you are {PRIVATE}:{private_port}".encode() + after
    assert lengths_right(back) and checksum_verifies(back)  # over the private address the client's stack sees
    assert client.traversal.algs.counters["address-text:in"] == 1


@pytest.mark.parametrize(("suite_key", "mode"), CELLS)
def test_alg_twin_other_ports_are_untouched_both_ways_steps_813_822(suite_key, mode):
    client, peer = pair(suite_key, mode, algs=registry())
    text = f"i am {PRIVATE}:40000".encode()
    delivered = peer.receive(client.send(udp(40000, TEST_ALG_PORT + 1, text, far_end(mode))))
    gport = l4(delivered).sport
    assert bytes(l4(delivered).payload) == text and checksum_verifies(delivered) and in_block(gport)
    answer = f"you are {GLOBAL}:{gport}".encode()
    back = client.receive(peer.send(bytes(IP(src=far_end(mode), dst=GLOBAL) /
                                          UDP(sport=TEST_ALG_PORT + 1, dport=gport) / answer)))
    assert bytes(l4(back).payload) == answer and l4(back).dport == 40000 and checksum_verifies(back)
    assert not client.traversal.algs.counters


def test_alg_twin_without_the_alg_registered_the_peer_reads_the_private_address_claim_7_step_813():
    """Negative twin of OUT-ALG: the same traffic without the ALG leaks the private address text."""
    client, peer = pair("esp-gcm", Mode.TRANSPORT)
    text = f"i am {PRIVATE}:40000".encode()
    delivered = peer.receive(client.send(udp(40000, TEST_ALG_PORT, text, SRV1)))
    assert bytes(l4(delivered).payload) == text and checksum_verifies(delivered)


def test_alg_registry_refuses_a_second_alg_on_the_same_protocol_and_port_step_813():
    algs = registry()
    with pytest.raises(ValueError, match=rf"protocol 17 port {TEST_ALG_PORT}: ALG 'address-text' is registered"):
        algs.register(IPPROTO_UDP, TEST_ALG_PORT, AddressTextAlg())
    algs.register(IPPROTO_TCP, TEST_ALG_PORT, AddressTextAlg())  # twin: another protocol or port is fine
    algs.register(IPPROTO_UDP, TEST_ALG_PORT + 1, AddressTextAlg())
    assert algs.lookup(IPPROTO_UDP, TEST_ALG_PORT).name == "address-text" and algs.lookup(IPPROTO_UDP, 1) is None


def test_alg_a_tcp_packet_is_not_touched_by_the_address_text_alg_step_813():
    binding = Binding(PRIVATE, GLOBAL, 40000, 20000)
    text = f"i am {PRIVATE}:40000".encode()
    segment = bytes(IP(src=PRIVATE, dst=SRV1) / TCP(sport=20000, dport=TEST_ALG_PORT) / text)
    assert AddressTextAlg().outgoing(segment, binding) == segment
    datagram = udp(20000, TEST_ALG_PORT, text, SRV1)
    assert AddressTextAlg().outgoing(datagram, binding) != datagram  # twin: the same text in UDP is rewritten
    # through a Traversal whose ALG is registered for UDP only, and one registered for TCP too
    for algs in (registry(), _tcp_too()):
        client, peer = pair("esp-gcm", Mode.TRANSPORT, algs=algs)
        delivered = peer.receive(client.send(bytes(IP(src=PRIVATE, dst=SRV1) /
                                                   TCP(sport=40000, dport=TEST_ALG_PORT) / text)))
        assert bytes(l4(delivered).payload) == text and checksum_verifies(delivered)


def _tcp_too() -> AlgRegistry:
    algs = registry()
    algs.register(IPPROTO_TCP, TEST_ALG_PORT, AddressTextAlg())
    return algs


@pytest.mark.parametrize("mode", list(Mode))
def test_alg_a_udp_datagram_without_checksum_is_rewritten_and_stays_without_rfc_768_step_813(mode):
    client, peer = pair("ah-sha1", mode, algs=registry())
    raw = bytearray(udp(40000, TEST_ALG_PORT, f"i am {PRIVATE}:40000".encode(), far_end(mode)))
    raw[26:28] = b"\x00\x00"
    delivered = peer.receive(client.send(bytes(raw)))
    assert l4(delivered).chksum == 0 and lengths_right(delivered)
    assert bytes(l4(delivered).payload) == f"i am {GLOBAL}:{l4(delivered).sport}".encode()


def test_alg_an_address_that_merely_starts_with_ours_is_not_rewritten_step_813():
    client, peer = pair("esp-gcm", Mode.TRANSPORT, algs=registry())
    text = f"other service at {PRIVATE}:40001".encode()
    delivered = peer.receive(client.send(udp(4000, TEST_ALG_PORT, text, SRV1)))
    assert bytes(l4(delivered).payload) == text
