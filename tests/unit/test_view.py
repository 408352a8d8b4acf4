"""Packet views (netwire.view): offsets read once, and hostile bytes refused with a reason, never an IndexError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.ipsec import AH, ESP

from netwire.ethernet import MalformedPacket
from netwire.view import IPv4View, ipv4_lengths


def test_a_tcp_packet_shows_its_lengths_ports_and_checksum_offset():
    raw = bytes(IP(src="10.0.0.1", dst="203.0.113.100", options=b"\x01" * 4) / TCP(sport=45000, dport=80) / b"x")
    view = IPv4View(raw)
    assert (view.header_len, view.total_len, view.payload_len) == (24, len(raw), len(raw) - 24)
    assert view.ports() == (45000, 80) and view.transport_checksum_at() == 24 + 16
    assert view.src == bytes([10, 0, 0, 1]) and view.dst == bytes([203, 0, 113, 100]) and view.protocol == 6


def test_link_padding_after_the_total_length_is_not_part_of_the_packet():
    raw = bytes(IP() / UDP(sport=1, dport=2))
    assert IPv4View(raw + bytes(18)).total_len == len(raw)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\x45" + bytes(18), "shorter than its header"),
    (b"\x65" + bytes(19), "version 6"),
    (b"\x44\x00\x00\x14" + bytes(16), "header length 16"),
    (b"\x45\x00\x00\x30" + bytes(16), "total length 48"),
    (b"\x46\x00\x00\x14" + bytes(20), "total length 20"),  # total below the header's 24 bytes
])
def test_malformed_headers_are_refused_with_a_reason(raw, reason):
    with pytest.raises(MalformedPacket, match=reason):
        IPv4View(raw)
    with pytest.raises(MalformedPacket):
        ipv4_lengths(raw)


def test_fragments_have_ports_only_in_the_first_and_no_checksum_to_compensate():
    first = IPv4View(bytes(IP(flags="MF", frag=0) / UDP(sport=7, dport=9) / b"abcdefgh"))
    later = IPv4View(bytes(IP(frag=2, proto=17) / b"abcdefghabcdefgh"))
    assert first.ports() == (7, 9) and first.is_fragment and first.is_first_fragment
    assert later.ports() is None and later.is_fragment and not later.is_first_fragment
    for view in (first, later):
        with pytest.raises(MalformedPacket, match="fragment"):
            view.transport_checksum_at()


def test_a_clipped_transport_header_has_no_ports_and_no_checksum():
    raw = bytes(IP(proto=6) / b"\x01\x02")  # TCP with two bytes
    assert IPv4View(raw).ports() is None
    with pytest.raises(MalformedPacket, match="truncated"):
        IPv4View(bytes(IP(proto=6) / bytes(10))).transport_checksum_at()


def test_the_spi_of_esp_and_ah_and_only_theirs():
    assert IPv4View(bytes(IP() / ESP(spi=0x1234, seq=1, data=b"x" * 16))).spi() == 0x1234
    assert IPv4View(bytes(IP() / AH(spi=0x5678, seq=1, icv=bytes(12)))).spi() == 0x5678
    with pytest.raises(MalformedPacket, match="neither ESP nor AH"):
        IPv4View(bytes(IP() / UDP())).spi()
    with pytest.raises(MalformedPacket, match="too short for an SPI"):
        IPv4View(bytes(IP(proto=51) / bytes(6))).spi()


def test_icmp_queries_carry_their_identifier_errors_do_not():
    assert IPv4View(bytes(IP() / ICMP(type=8, id=77))).icmp() == (8, 0, 77)
    assert IPv4View(bytes(IP() / ICMP(type=3, code=1))).icmp() == (3, 1, None)
    with pytest.raises(MalformedPacket, match="echo shorter"):
        IPv4View(bytes(IP(proto=1) / b"\x08\x00\x00\x00")).icmp()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_raise_nothing_but_malformed_packet(raw):
    try:
        view = IPv4View(raw)
    except MalformedPacket:
        return
    for question in (view.ports, view.transport_checksum_at, view.icmp, view.spi):
        with contextlib.suppress(MalformedPacket):
            question()


def test_whole_ports_are_those_of_an_unfragmented_datagram_only():
    assert IPv4View(bytes(IP() / UDP(sport=7, dport=9))).whole_ports() == (7, 9)
    assert IPv4View(bytes(IP(flags="MF") / UDP(sport=7, dport=9) / b"abcdefgh")).whole_ports() is None
    assert IPv4View(bytes(IP(proto=17) / b"\x00\x07")).whole_ports() is None
    assert IPv4View(bytes(IP() / ICMP())).whole_ports() is None
