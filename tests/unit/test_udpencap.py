"""UDP encapsulation of ESP (RFC 3948) on bytes: attacks first, then round trips judged by scapy.

Scapy's own NAT-T (``SecurityAssociation(nat_t_header=UDP(...))``) is the independent judge:
what it encapsulates we must take apart, and what we encapsulate it must decrypt.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.ipsec import ESP

from client_agent.ipsec import esp
from client_agent.ipsec.errors import IPsecError, Malformed
from client_agent.ipsec.sa import Mode, SAState
from client_agent.ipsec.suites import all_suites
from client_agent.ipsec.udpencap import (
    KEEPALIVE,
    KEEPALIVE_INTERVAL,
    NATT_PORT,
    NON_ESP_MARKER,
    Keepalive,
    Kind,
    UdpEncapError,
    classify,
    decapsulate,
    encapsulate,
    fix_transport_checksum,
    mark_ike,
    parse_udp,
    strip_marker,
)
from conformance.oracles import scapy_sa
from netwire.ipv4 import IPPROTO_ESP, IPPROTO_UDP, MIN_SPI, header_checksum_ok

SUITE = next(s for s in all_suites() if s.protocol.name == "ESP" and "gcm" in s.name.lower())
TUNNEL = {"src": "198.51.100.1", "dst": "203.0.113.200"}
IKE_HEADER = bytes(28)


def udp4500(payload: bytes, *, length: int | None = None) -> bytes:
    udp = struct.pack("!HHHH", NATT_PORT, NATT_PORT, 8 + len(payload) if length is None else length, 0)
    return bytes(IP(src="198.51.100.1", dst="203.0.113.100", proto=IPPROTO_UDP) / (udp + payload))


def reason(err: pytest.ExceptionInfo[UdpEncapError]) -> str:
    return err.value.detail_reason


# --- attacks: every one refused with a reason, none crashes -----------------------------------------

def test_marker_only_is_refused_as_truncated_ike() -> None:
    with pytest.raises(UdpEncapError) as err:
        classify(NON_ESP_MARKER)
    assert reason(err) == "truncated_ike"


@pytest.mark.parametrize("spi", [1, 2, 255])
def test_reserved_spis_1_to_255_are_refused(spi: int) -> None:
    with pytest.raises(UdpEncapError) as err:
        classify(spi.to_bytes(4, "big") + bytes(20))
    assert reason(err) == "reserved_spi"


def test_spi_256_is_the_first_esp_spi() -> None:
    assert classify(MIN_SPI.to_bytes(4, "big") + bytes(4)) is Kind.ESP


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\xfe", b"\xff\xff", b"\x01\x02\x03"])
def test_short_payloads_are_neither_keepalive_nor_esp(payload: bytes) -> None:
    with pytest.raises(UdpEncapError) as err:
        classify(payload)
    assert reason(err) == "short"


def test_esp_header_without_sequence_number_is_truncated() -> None:
    with pytest.raises(UdpEncapError) as err:
        classify((0x1000).to_bytes(4, "big") + b"\x00\x00")
    assert reason(err) == "truncated_esp"


def test_truncated_udp_header_is_refused() -> None:
    packet = bytes(IP(src="198.51.100.1", dst="203.0.113.100", proto=IPPROTO_UDP) / b"\x11\x94\x11")
    with pytest.raises(UdpEncapError) as err:
        parse_udp(packet)
    assert reason(err) == "truncated_udp"


@pytest.mark.parametrize("length", [0, 7, 9, 100, 0xFFFF])
def test_udp_length_disagreeing_with_ip_length_is_refused(length: int) -> None:
    with pytest.raises(UdpEncapError) as err:
        parse_udp(udp4500(bytes(12), length=length))
    assert reason(err) == "udp_length"


def test_ip_length_beyond_the_bytes_is_malformed() -> None:
    packet = bytearray(udp4500((0x1000).to_bytes(4, "big") + bytes(20)))
    packet[2:4] = (len(packet) + 40).to_bytes(2, "big")
    with pytest.raises(Malformed):
        decapsulate(bytes(packet))


@pytest.mark.parametrize("payload", [KEEPALIVE, NON_ESP_MARKER + IKE_HEADER])
def test_decapsulate_refuses_what_is_not_esp(payload: bytes) -> None:
    with pytest.raises(UdpEncapError) as err:
        decapsulate(udp4500(payload))
    assert reason(err) == "not_esp"


def test_encapsulate_refuses_ah() -> None:
    with pytest.raises(Malformed, match="only ESP"):
        encapsulate(bytes(IP(src="10.0.0.1", dst="203.0.113.100", proto=51) / bytes(24)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_payload_is_classified_or_refused_with_a_reason(payload: bytes) -> None:
    try:
        kind = classify(payload)
    except UdpEncapError as err:
        assert err.detail_reason in {"short", "truncated_ike", "reserved_spi", "truncated_esp"}
    else:
        assert isinstance(kind, Kind)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_ip_packet_is_decapsulated_or_refused(tail: bytes) -> None:
    packet = bytes(IP(src="198.51.100.1", dst="203.0.113.100", proto=IPPROTO_UDP)) + tail
    packet = packet[:2] + (20 + len(tail)).to_bytes(2, "big") + packet[4:]
    with contextlib.suppress(IPsecError):
        decapsulate(packet)


# --- demultiplexing ------------------------------------------------------------------------------

def test_a_single_ff_is_a_keepalive() -> None:
    assert classify(KEEPALIVE) is Kind.KEEPALIVE


def test_ike_behind_the_marker_round_trips() -> None:
    message = bytes(range(40))
    marked = mark_ike(message)
    assert classify(marked) is Kind.IKE and strip_marker(marked) == message


# --- round trips, judged by scapy's NAT-T ---------------------------------------------------------

@pytest.mark.parametrize("mode", list(Mode))
def test_scapy_decrypts_what_we_encapsulate(mode: Mode) -> None:
    sa = SUITE.sa(0x3001, mode, **(TUNNEL if mode is Mode.TUNNEL else {}))
    inner = bytes(IP(src="10.0.0.1", dst="203.0.113.100") / TCP(sport=40000, dport=80) / b"GET /")
    wire = encapsulate(esp.encapsulate(inner, SAState(sa)))
    parsed = IP(wire)
    assert parsed.proto == IPPROTO_UDP and parsed[UDP].dport == NATT_PORT and parsed[UDP].chksum == 0
    assert header_checksum_ok(wire, 20)
    judge = scapy_sa(sa)
    judge.nat_t_header = UDP(sport=NATT_PORT, dport=NATT_PORT)
    assert bytes(judge.decrypt(parsed)[TCP].payload) == b"GET /"


@pytest.mark.parametrize("mode", list(Mode))
def test_we_decrypt_what_scapy_encapsulates(mode: Mode) -> None:
    sa = SUITE.sa(0x3002, mode, **(TUNNEL if mode is Mode.TUNNEL else {}))
    scapy = scapy_sa(sa)
    scapy.nat_t_header = UDP(sport=NATT_PORT, dport=NATT_PORT)
    inner = IP(src="10.0.0.1", dst="203.0.113.100") / TCP(sport=40000, dport=80) / b"GET /"
    wire = bytes(scapy.encrypt(inner))
    assert IP(wire).haslayer(UDP) and IP(wire)[UDP].dport == NATT_PORT
    packet = decapsulate(wire)
    assert packet[9] == IPPROTO_ESP and IP(packet).haslayer(ESP)
    assert bytes(IP(esp.decapsulate(packet, SAState(sa)))[TCP].payload) == b"GET /"


# --- transport mode: the inner checksum after a NAT (RFC 3948 section 3.1.2) --------------------

def natted(inner: bytes, new_src: str) -> bytes:
    """The inner packet with its source rewritten as a NAT did to the outer header, checksums untouched."""
    header = IP(inner)
    header.src = new_src
    del header.chksum
    return bytes(header)[:20] + inner[20:]


@pytest.mark.parametrize("layer", [TCP(sport=40000, dport=80), UDP(sport=5353, dport=53)])
def test_transport_checksum_recomputed_over_the_addresses_received(layer: TCP | UDP) -> None:
    sent = bytes(IP(src="10.0.0.1", dst="203.0.113.100") / layer / b"payload")
    received = natted(sent, "198.51.100.1")
    fixed = fix_transport_checksum(received)
    truth = IP(fixed)
    del truth[layer.__class__].chksum
    assert IP(fixed)[layer.__class__].chksum == IP(bytes(truth))[layer.__class__].chksum
    assert IP(fixed)[layer.__class__].chksum != IP(received)[layer.__class__].chksum


def test_udp_without_checksum_stays_without() -> None:
    sent = bytes(IP(src="10.0.0.1", dst="203.0.113.100") / UDP(sport=5353, dport=53, chksum=0) / b"q")
    assert fix_transport_checksum(natted(sent, "198.51.100.1"))[26:28] == b"\0\0"


def test_truncated_tcp_header_is_malformed_not_a_crash() -> None:
    packet = bytes(IP(src="10.0.0.1", dst="203.0.113.100", proto=6) / bytes(10))
    with pytest.raises(Malformed):
        fix_transport_checksum(packet)


# --- keepalives (RFC 3948 section 4) ----------------------------------------------------------

def test_keepalive_every_20_seconds_by_default() -> None:
    timer = Keepalive(now=100.0)
    assert timer.get_timer() == 100.0 + KEEPALIVE_INTERVAL == 120.0
    assert timer.handle_timer(119.9) is None
    assert timer.handle_timer(120.0) == KEEPALIVE
    assert timer.get_timer() == 140.0 and timer.sent == 1


def test_traffic_pushes_the_keepalive_back() -> None:
    timer = Keepalive(interval=5.0, now=0.0)
    timer.note_sent(4.0)
    assert timer.handle_timer(5.0) is None and timer.get_timer() == 9.0


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_keepalive_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Keepalive(interval=interval)
