"""Transport-mode NAT-T: the inner TCP/UDP checksum after a NAT rewrote the outer address (RFC 3948 3.1.2),
and the SPD of a transport-mode CHILD_SA whose peer sits behind a NAT (RFC 7296 section 2.23.1).

h1 (10.0.0.1) negotiates ESP transport mode with srv1 through a NAT that maps it to 203.0.113.1:
NAT detection sees the NAT, so the CHILD_SA is UDP-encapsulated. A TCP segment then crosses the
NAT the way the agents' UDP/4500 sockets deliver it (the outer source rewritten, the inner
header rebuilt from what the socket saw); scapy judges the inner checksum the application gets.
The control is the same packet under an SA that does not know it was UDP-encapsulated.
"""

from __future__ import annotations

import dataclasses

from scapy.layers.inet import IP, TCP, UDP

from client_agent.agent_config import databases, load
from client_agent.agent_ike import IkeKeying
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ike.keyfile import security_associations
from client_agent.ipsec import esp
from client_agent.ipsec.errors import DropReason, IPsecError
from client_agent.ipsec.processing import decapsulate, inbound, outbound
from client_agent.ipsec.sa import Mode, SAState
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.suites import all_suites
from client_agent.ipsec.udpencap import NATT_PORT, esp_of, esp_packet
from netwire.checksum import ip_bytes
from tests.unit.test_agent_ike import H1_CFG, SRV1_CFG

H1, SRV1, GLOBAL = "10.0.0.1", "203.0.113.100", "203.0.113.1"
SUITE = next(s for s in all_suites() if s.protocol.name == "ESP" and "gcm" in s.name.lower())


def checksum_ok(packet: bytes, layer: type[TCP] | type[UDP]) -> bool:
    """scapy's verdict: the checksum as the receiving stack would recompute it over the packet's own header."""
    parsed = IP(packet)
    truth = parsed.copy()
    del truth[layer].chksum
    return parsed[layer].chksum == IP(bytes(truth))[layer].chksum


def through_the_nat(wire: bytes, src: str, dst: str) -> bytes:
    """What the receiver's UDP/4500 socket hands ESP processing: the ESP bytes under the addresses it saw."""
    esp = esp_of(wire)
    assert esp is not None
    return esp_packet(ip_bytes(src), ip_bytes(dst), esp[1])


def transport_pair(udp_encap: bool) -> tuple[SAState, SAState]:
    """h1's outbound and srv1's inbound state of one ESP transport SA."""
    sa = SUITE.sa(0x4001, Mode.TRANSPORT)
    return SAState(sa), SAState(dataclasses.replace(sa, udp_encap=udp_encap))


def sad_of(state: SAState) -> SAD:
    sad = SAD()
    sad.add_inbound(state.sa)
    return sad


def test_an_encapsulated_transport_sa_fixes_the_inner_checksum_a_nat_broke() -> None:
    sent = bytes(IP(src=H1, dst=SRV1) / TCP(sport=40000, dport=80, flags="PA") / b"GET /")
    out, into = transport_pair(udp_encap=True)
    inner = decapsulate(through_the_nat(esp.encapsulate(sent, out), GLOBAL, SRV1), sad_of(into)).packet
    assert IP(inner).src == GLOBAL and checksum_ok(inner, TCP)
    assert bytes(IP(inner)[TCP].payload) == b"GET /"


def test_control_an_sa_not_marked_udp_encapsulated_leaves_the_checksum_broken() -> None:
    sent = bytes(IP(src=H1, dst=SRV1) / UDP(sport=5353, dport=53) / b"query")
    out, into = transport_pair(udp_encap=False)
    inner = decapsulate(through_the_nat(esp.encapsulate(sent, out), GLOBAL, SRV1), sad_of(into)).packet
    assert not checksum_ok(inner, UDP)


def test_a_tunnel_sa_in_udp_is_left_alone() -> None:
    """Tunnel mode carries the inner header unchanged through the NAT: nothing to fix, nothing touched."""
    sa = SUITE.sa(0x4002, Mode.TUNNEL, src=H1, dst=SRV1)
    sent = bytes(IP(src="10.99.1.1", dst="10.99.2.2") / TCP(sport=40000, dport=80, chksum=0x1234) / b"x")
    into = SAState(dataclasses.replace(sa, udp_encap=True, src=GLOBAL))
    assert decapsulate(through_the_nat(esp.encapsulate(sent, SAState(sa)), GLOBAL, SRV1), sad_of(into)).packet == sent


def negotiate_through_a_nat() -> tuple[dict, IkeEndpoint, IkeEndpoint]:
    """h1 and srv1's transport-mode agents keyed by IKE through a NAT mapping 10.0.0.1 to GLOBAL (port 500 and
    4500 to 4500 and 4501); srv1's keying sees the peer as its IKE packets show it."""
    h1, srv1 = load(H1_CFG), load(SRV1_CFG)
    sides = {}
    for cfg, local, remote in ((h1, H1, SRV1), (srv1, SRV1, GLOBAL)):
        sad, spd = databases(cfg)
        sides[cfg.name] = (IkeKeying(sad, spd, local, remote), sad, spd)
    a = IkeEndpoint(None, (H1, 500))
    b = IkeEndpoint(srv1.ike.config(), (SRV1, 500))
    a.initiate(h1.ike.config(), (SRV1, 500), 0.0)
    for _ in range(10):
        for data, (_, port) in a.datagrams_to_send():
            b.receive_datagram(data, (GLOBAL, 4501 if port == NATT_PORT else 500), 0.0)
        for data, _ in b.datagrams_to_send():
            a.receive_datagram(data, (SRV1, 500), 0.0)
        for name, endpoint in (("h1", a), ("srv1", b)):
            for _, event in endpoint.next_events():
                sides[name][0].apply(event)
    return sides, a, b


def test_curl_like_segments_cross_a_nat_in_transport_mode_with_valid_checksums_both_ways() -> None:
    """RFC 7296 2.23.1: srv1's SPD names the address its peer's packets come from (the NAT's), so the
    application on srv1 talks to 203.0.113.1; both directions' inner checksums verify where they land."""
    sides, _, _ = negotiate_through_a_nat()
    (_, h1_sad, h1_spd), (_, srv_sad, srv_spd) = sides["h1"], sides["srv1"]
    assert [s.sa.udp_encap for s in (*h1_sad.inbound, *srv_sad.inbound)] == [True, True]
    there = bytes(IP(src=H1, dst=SRV1) / TCP(sport=40000, dport=80, flags="PA") / b"GET /")
    got = inbound(through_the_nat(outbound(there, h1_spd), GLOBAL, SRV1), srv_sad, srv_spd)
    assert (IP(got).src, IP(got).dst) == (GLOBAL, SRV1) and checksum_ok(bytes(got), TCP)
    back = bytes(IP(src=SRV1, dst=GLOBAL) / TCP(sport=80, dport=40000, flags="PA") / b"200 OK")
    got = inbound(through_the_nat(outbound(back, srv_spd), SRV1, H1), h1_sad, h1_spd)
    assert (IP(got).src, IP(got).dst) == (SRV1, H1) and checksum_ok(bytes(got), TCP)
    assert bytes(IP(got)[TCP].payload) == b"200 OK"


def test_the_private_address_gets_no_protection_at_the_responder() -> None:
    """srv1 never sends to 10.0.0.1 under the SA: that address is h1's own business behind its NAT."""
    sides, _, _ = negotiate_through_a_nat()
    _, _, srv_spd = sides["srv1"]
    stray = bytes(IP(src=SRV1, dst=H1) / TCP(sport=80, dport=40000) / b"x")
    try:
        wire = outbound(stray, srv_spd)
    except IPsecError:
        return
    assert wire == stray  # bypassed or dropped, never under the NAT-T SA


def test_keyfile_marks_encapsulated_sas() -> None:
    sides, a, _ = negotiate_through_a_nat()
    child = next(iter(next(iter(a.sessions.values())).children.values()))
    inbound_sa, outbound_sa = security_associations(child, H1, SRV1)
    assert inbound_sa.udp_encap and outbound_sa.udp_encap


def test_a_truncated_inner_header_under_an_encapsulated_sa_is_refused_with_a_reason() -> None:
    """A peer (or anyone holding the keys) sealing 10 bytes of "TCP": the fix-up refuses, the datapath counts it."""
    out, into = transport_pair(udp_encap=True)
    stub = bytes(IP(src=H1, dst=SRV1, proto=6) / bytes(10))
    try:
        decapsulate(through_the_nat(esp.encapsulate(stub, out), GLOBAL, SRV1), sad_of(into))
    except IPsecError as err:
        assert err.reason == DropReason.MALFORMED
    else:
        raise AssertionError("a truncated TCP header was delivered")
