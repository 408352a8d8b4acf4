"""AH (RFC 4302) on bytes: what the ICV covers, what it skips, and the "as if" address overrides.

The overrides are the client module's tool for claims 8 and 14: it computes an
outgoing ICV as if its source were the NAT's global address, and checks an
incoming one as if the destination were.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.packet import Raw

from client_agent.ipsec import ah
from client_agent.ipsec.errors import BadICV, Fragment, Malformed, NoSA, Replayed
from client_agent.ipsec.processing import decapsulate
from client_agent.ipsec.sa import Mode, SAState
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.suites import Suite, all_suites
from netwire.checksum import internet_checksum, ip_bytes
from netwire.ipv4 import IPPROTO_AH, header_checksum_ok

AH_SUITES = [s for s in all_suites() if s.protocol.name == "AH"]
TUNNEL = {"src": "198.51.100.1", "dst": "203.0.113.200"}
PRIVATE, GLOBAL, PEER = "10.0.0.1", "203.0.113.1", "203.0.113.100"


def pair(suite: Suite, mode: Mode = Mode.TRANSPORT) -> tuple[SAState, SAState]:
    sa = suite.sa(0x3001, mode, **(TUNNEL if mode is Mode.TUNNEL else {}))
    return SAState(sa), SAState(sa)


def udp_packet(src: str = PRIVATE, dst: str = PEER, payload: bytes = b"ping", **ip: object) -> bytes:
    return bytes(IP(src=src, dst=dst, ttl=64, id=4321, **ip) / UDP(sport=5000, dport=7) / payload)


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def set_field(packet: bytes, offset: int, value: bytes) -> bytes:
    """Rewrite an IP header field and its header checksum, as a router or the NAT would."""
    header_len = (packet[0] & 0x0F) * 4
    header = bytearray(packet[:header_len])
    header[offset : offset + len(value)] = value
    header[10:12] = b"\x00\x00"
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + packet[header_len:]


@pytest.mark.parametrize("suite", AH_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", list(Mode))
def test_round_trip_and_layout(suite: Suite, mode: Mode) -> None:
    sender, receiver = pair(suite, mode)
    packet = udp_packet()
    protected = ah.encapsulate(packet, sender)
    assert protected[9] == IPPROTO_AH and header_checksum_ok(protected, 20)
    next_header, payload_len, reserved, spi, seq = struct.unpack_from("!BBHII", protected, 20)
    icv_len = sender.mac.icv_len
    assert (payload_len + 2) * 4 == 12 + icv_len  # RFC 4302 section 2.2; 96/128-bit ICVs need no padding
    assert (reserved, spi, seq) == (0, 0x3001, 1)
    assert next_header == (4 if mode is Mode.TUNNEL else 17)
    assert protected.endswith(packet if mode is Mode.TUNNEL else packet[20:])  # AH does not encrypt
    assert ah.decapsulate(protected, receiver) == packet


@pytest.mark.parametrize("suite", AH_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", list(Mode))
def test_tampered_twins_fail_with_the_right_reason(suite: Suite, mode: Mode) -> None:
    """One flipped bit in each covered region: immutable IP fields, AH fields, ICV, payload."""
    sender, _ = pair(suite, mode)
    protected = ah.encapsulate(udp_packet(), sender)
    regions = {
        "ip identification": (4, BadICV),
        "ip source": (12, BadICV),
        "ip destination": (19, BadICV),
        "ah next header": (20, BadICV),
        "ah payload length": (21, Malformed),
        "ah reserved": (22, BadICV),
        "ah spi": (27, NoSA),
        "ah sequence number": (28, BadICV),
        "ah icv": (32, BadICV),
        "payload": (len(protected) - 1, BadICV),
    }
    if mode is Mode.TUNNEL:
        regions["inner source"] = (20 + 12 + sender.mac.icv_len + 12, BadICV)
    for region, (index, error) in regions.items():
        receiver = SAState(sender.sa)
        if index < 20:  # in the IP header: keep its checksum right, as a router would
            tampered = set_field(protected, index, bytes([protected[index] ^ 1]))
        else:
            tampered = flip(protected, index, 7)
        with pytest.raises(error):
            ah.decapsulate(tampered, receiver)
        assert receiver.window.top == 0, region
        assert ah.decapsulate(protected, receiver) == udp_packet(), region


@pytest.mark.parametrize(
    ("field", "offset", "value"),
    [("tos", 1, b"\x2e"), ("flags: DF set en route", 6, b"\x40"), ("ttl", 8, b"\x05"), ("checksum", 10, b"\xbe\xef")],
)
def test_mutable_fields_are_outside_the_icv(field: str, offset: int, value: bytes) -> None:
    """RFC 4302 section 3.3.3.1.1.1: TOS, flags, fragment offset, TTL and checksum may change in flight."""
    sender, receiver = pair(AH_SUITES[1])
    protected = ah.encapsulate(udp_packet(), sender)
    changed = protected[:offset] + value + protected[offset + len(value) :]
    assert IP(ah.decapsulate(changed, receiver)).payload.load == b"ping"


def test_options_mutable_ones_are_zeroed_immutable_ones_covered() -> None:
    """RFC 4302 Appendix A.1: Record Route (7) is mutable and zeroed; Router Alert (148) is covered."""
    sender, _ = pair(AH_SUITES[2])
    packet = udp_packet(options=[IPOption_Router_Alert(), IPOption_RR(routers=["0.0.0.0"])])
    protected = ah.encapsulate(packet, sender)
    record_route = protected.index(b"\x07\x07")
    routed = protected[: record_route + 3] + ip_bytes("192.0.2.9") + protected[record_route + 7 :]  # a router filled it
    assert ah.decapsulate(routed, SAState(sender.sa))[record_route + 3 : record_route + 7] == ip_bytes("192.0.2.9")
    router_alert = protected.index(b"\x94\x04")
    with pytest.raises(BadICV):
        ah.decapsulate(flip(protected, router_alert + 3), SAState(sender.sa))


def test_malformed_options_are_refused() -> None:
    sender, receiver = pair(AH_SUITES[0])
    packet = bytearray(ah.encapsulate(udp_packet(options=[IPOption_RR(routers=["0.0.0.0"])]), sender))
    packet[21] = 0xFF  # the option's length runs past the header
    with pytest.raises(Malformed, match="bad length"):
        ah.decapsulate(bytes(packet), receiver)


def test_outgoing_icv_as_if_from_the_global_address() -> None:
    """Claim 8: the client signs as if the source were the NAT's global address; the NAT then rewrites
    the source, and the peer, which knows nothing of the NAT, verifies the packet it receives."""
    client, peer = pair(AH_SUITES[1])
    protected = ah.encapsulate(udp_packet(src=PRIVATE), client, icv_src=GLOBAL)
    after_nat = set_field(protected, 12, ip_bytes(GLOBAL))
    assert IP(ah.decapsulate(after_nat, peer)).src == GLOBAL
    naive = ah.encapsulate(udp_packet(src=PRIVATE), client)  # the tampered twin: signed with the private source
    with pytest.raises(BadICV):
        ah.decapsulate(set_field(naive, 12, ip_bytes(GLOBAL)), peer)


def test_incoming_icv_checked_as_if_to_the_global_address() -> None:
    """Claim 14: the peer signs for the global address; after the NAT rewrote it to the private one,
    the client verifies as if the destination were still the global address."""
    peer, client = pair(AH_SUITES[2])
    after_nat = set_field(ah.encapsulate(udp_packet(src=PEER, dst=GLOBAL), peer), 16, ip_bytes(PRIVATE))
    with pytest.raises(BadICV):
        ah.decapsulate(after_nat, SAState(client.sa))
    assert IP(ah.decapsulate(after_nat, client, icv_dst=GLOBAL)).dst == PRIVATE


def test_incoming_override_through_the_sad_matches_the_sa_destination() -> None:
    """The SAD looks the SA up by the same "as if" destination the ICV is checked against."""
    peer, _ = pair(AH_SUITES[0])
    sad = SAD()
    sad.add_inbound(dataclasses.replace(peer.sa, dst=GLOBAL))
    after_nat = set_field(ah.encapsulate(udp_packet(src=PEER, dst=GLOBAL), peer), 16, ip_bytes(PRIVATE))
    with pytest.raises(NoSA):
        decapsulate(after_nat, sad)
    inner, state = decapsulate(after_nat, sad, icv_dst=GLOBAL)
    assert IP(inner).dst == PRIVATE and state.sa.dst == GLOBAL


def test_compute_icv_matches_the_icv_of_the_rewritten_packet() -> None:
    client, _ = pair(AH_SUITES[2])
    protected = ah.encapsulate(udp_packet(src=PRIVATE), client, icv_src=GLOBAL)
    icv = protected[32 : 32 + client.mac.icv_len]
    assert ah.compute_icv(protected, client, src=GLOBAL) == icv
    assert ah.compute_icv(set_field(protected, 12, ip_bytes(GLOBAL)), client) == icv
    assert ah.compute_icv(protected, client) != icv


def test_tunnel_mode_overrides_apply_to_the_outer_header() -> None:
    client, gateway = pair(AH_SUITES[1], Mode.TUNNEL)
    protected = ah.encapsulate(udp_packet(), client, icv_src=GLOBAL)
    assert ah.decapsulate(set_field(protected, 12, ip_bytes(GLOBAL)), gateway) == udp_packet()


def test_replayed_and_stale_packets_are_dropped() -> None:
    sender, receiver = pair(AH_SUITES[0])
    packets = [ah.encapsulate(udp_packet(), sender) for _ in range(66)]
    ah.decapsulate(packets[-1], receiver)
    with pytest.raises(Replayed, match="already received"):
        ah.decapsulate(packets[-1], receiver)
    with pytest.raises(Replayed, match="below"):
        ah.decapsulate(packets[0], receiver)
    assert ah.decapsulate(packets[2], receiver) == udp_packet()


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda p: p[:30], Malformed),
        (lambda p: p[:9] + b"\x32" + p[10:], Malformed),  # ESP, not AH
        (lambda p: p[:6] + b"\x00\x10" + p[8:], Fragment),  # a fragment offset
    ],
)
def test_malformed_and_fragmented_packets(mangle, error) -> None:
    sender, receiver = pair(AH_SUITES[0])
    with pytest.raises(error):
        ah.decapsulate(mangle(ah.encapsulate(udp_packet(), sender)), receiver)


def test_transport_mode_refuses_to_protect_a_fragment() -> None:
    sender, _ = pair(AH_SUITES[0])
    with pytest.raises(Fragment):
        ah.encapsulate(udp_packet(flags="MF"), sender)


@settings(max_examples=40, deadline=None)
@given(suite=st.sampled_from(AH_SUITES), mode=st.sampled_from(list(Mode)), payload=st.binary(max_size=1500))
def test_round_trip_of_random_payloads(suite: Suite, mode: Mode, payload: bytes) -> None:
    packet = bytes(IP(src=PRIVATE, dst=PEER) / UDP(sport=1, dport=2) / Raw(payload))
    sender, receiver = pair(suite, mode)
    assert ah.decapsulate(ah.encapsulate(packet, sender, icv_src=GLOBAL), receiver, icv_src=GLOBAL) == packet


@pytest.mark.parametrize("suite", AH_SUITES, ids=lambda s: s.name)
def test_verify_icv_off_is_a_fault_that_accepts_a_forged_icv(suite: Suite) -> None:
    """The switch CTRL-NOVERIFY uses: with it off the zero-ICV forgery IN-AH sends is accepted; on, refused."""
    sender, receiver = pair(suite)
    protected = ah.encapsulate(udp_packet(), sender)
    forged = protected[:32] + bytes(sender.mac.icv_len) + protected[32 + sender.mac.icv_len :]
    with pytest.raises(BadICV):
        ah.decapsulate(forged, receiver)
    receiver.verify_icv = False
    assert ah.decapsulate(forged, receiver) == udp_packet()
