"""The UDP datagram and Identification readers of netwire.view, and the NAT's lease-request path that
now reads a request's UDP header through them (RFC 768; seed FIG. 7: requests are PCP frames on UDP to
the gateway): a hostile length is refused with its reason, counted, never read past."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from netwire import pcp
from netwire.ethernet import ETH_TYPE_IPV4, MalformedPacket
from netwire.plan import GATEWAY_IP
from netwire.view import IPv4View
from tests.unit.test_lease_server import IN, R_IN, mac, switch_with

HOST = "10.0.0.1"


def udp_packet(length: int | None, dport: int = pcp.SERVER_PORT, payload: bytes = b"x" * 24) -> bytes:
    return bytes(IP(src=HOST, dst=GATEWAY_IP, id=0xBEEF) / UDP(sport=5350, dport=dport, len=length) / payload)


def test_a_udp_payload_is_where_the_length_field_says():
    view = IPv4View(udp_packet(8 + 10))
    assert view.udp_payload() == (28, 38) and view.ident == 0xBEEF


@pytest.mark.parametrize("packet", [udp_packet(7), udp_packet(8 + 25), udp_packet(0xFFFF),
                                    bytes(IP(src=HOST, dst=GATEWAY_IP, proto=17) / b"abc"),
                                    bytes(IP(src=HOST, dst=GATEWAY_IP) / (b"\x00" * 12))],
                         ids=["below-header", "beyond-packet", "max", "clipped-header", "not-udp"])
def test_a_hostile_udp_length_is_refused(packet):
    with pytest.raises(MalformedPacket):
        IPv4View(packet).udp_payload()


@pytest.mark.parametrize("length, dport, reason", [(7, pcp.SERVER_PORT, "drop:malformed"),
                                                   (8 + 25, pcp.SERVER_PORT, "drop:malformed"),
                                                   (8 + 25, 9, "drop:not-routed")])
def test_a_lease_request_with_a_bad_udp_header_is_counted_and_answered_by_nothing(length, dport, reason):
    """The port is judged before the length, as before: a stray datagram is "not-routed" whatever its length."""
    sw = switch_with()
    frame = bytes(Ether(src=mac(HOST), dst=R_IN, type=ETH_TYPE_IPV4)) + udp_packet(length, dport)
    sw.receive(IN, frame)
    assert sw.core.counters[reason] == 1 and sw.take(IN) == []
