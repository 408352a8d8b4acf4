"""Module 109 end to end, in memory: client -> NAT -> NAT-unaware peer and back (CLAIMS.md, "Client" tables).

Every cell of {ESP AES-GCM, ESP AES-CBC+HMAC-SHA1, AH HMAC-SHA1-96, AH
HMAC-SHA-256-128} x {transport, tunnel} x {TCP, UDP} runs the seed's chain:
the client protects with :class:`~client_agent.traversal.Traversal` hooked into
``processing.outbound``; the NAT rewrites the outer source address and the
outer header checksum and nothing else (exactly what a NAT can do to ESP/AH);
the peer runs plain ``processing.inbound`` with no hooks. The oracles are
scapy's: it recomputes every checksum over the addresses the receiver sees.

The controls (``compensate=False``) must fail the way the seed predicts: the
inner checksum is wrong at an ESP transport peer, AH fails its ICV.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP

from client_agent.alg import AlgRegistry
from client_agent.ipsec import ah, processing
from client_agent.ipsec.errors import BadICV, DropReason, PolicyDrop
from client_agent.ipsec.sa import Mode, SAState
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.spd import ANY_PORT, SPD, Action, Policy, Selector
from client_agent.ipsec.suites import suite
from client_agent.traversal import NoBinding, NoGlobalPort, PortBlock, Traversal, Uncompensable
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP

PRIVATE, PRIVATE2, GLOBAL = "10.0.0.1", "10.0.0.2", "203.0.113.1"
SRV1, SGW1, IH1, INTRANET = "203.0.113.100", "203.0.113.200", "172.16.0.10", "172.16.0.0/24"
BLOCK, BLOCK2 = (20000, 20015), (20016, 20031)
SUITES = {
    "esp-gcm": "esp:AES_GCM_16-128:NONE",
    "esp-cbc-sha1": "esp:AES_CBC-128:HMAC_SHA1_96",
    "ah-sha1": "ah:HMAC_SHA1_96",
    "ah-sha256": "ah:HMAC_SHA2_256_128",
}
ESP_SUITES = ["esp-gcm", "esp-cbc-sha1"]
AH_SUITES = ["ah-sha1", "ah-sha256"]
LAYERS = {"tcp": TCP, "udp": UDP}
CELLS = [pytest.param(s, m, layer, id=f"{s}-{m}-{layer}") for s in SUITES for m in Mode for layer in LAYERS]

private_ports = st.integers(1024, 65535)
payloads = st.binary(max_size=33)  # odd lengths included


# ---------------------------------------------------------------- the three parties


def _header_checksum(header: bytes) -> int:
    """RFC 791's header checksum, written out here so the NAT does not borrow the code under test."""
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _nat_rewrite(wire: bytes, at: int, old: str, new: str) -> bytes:
    """What a NAT does to an ESP/AH packet: one outer address and the outer header checksum."""
    assert wire[9] in (IPPROTO_ESP, IPPROTO_AH), "only ESP/AH crosses the NAT here"
    assert wire[at:at + 4] == socket.inet_aton(old), "the NAT only translates what it has an entry for"
    buf = bytearray(wire)
    buf[at:at + 4] = socket.inet_aton(new)
    ihl = (buf[0] & 0x0F) * 4
    buf[10:12] = b"\x00\x00"
    buf[10:12] = _header_checksum(bytes(buf[:ihl])).to_bytes(2, "big")
    return bytes(buf)


def nat_out(wire: bytes, private: str = PRIVATE) -> bytes:
    return _nat_rewrite(wire, 12, private, GLOBAL)  # NAT-OUT: outer source private -> global


def nat_in(wire: bytes, private: str = PRIVATE) -> bytes:
    return _nat_rewrite(wire, 16, GLOBAL, private)  # NAT-IN: outer destination global -> private


@dataclass
class Client:
    """h1 behind the NAT: its SAD/SPD and its module 109."""

    private: str
    traversal: Traversal
    sad: SAD
    spd: SPD
    inbound: SAState

    def send(self, packet: bytes) -> bytes:
        """OUT-SEND: protect with pre-compensation (810-815), then through the NAT; what the peer receives."""
        t = self.traversal
        return nat_out(processing.outbound(packet, self.spd, icv_src=t.icv_src, before=t.before_protect), self.private)

    def receive(self, wire: bytes, *, post_compensate: bool = True) -> bytes:
        """IN-RECV: through the NAT, then unprotect with post-compensation (819-826)."""
        t = self.traversal
        return processing.inbound(nat_in(wire, self.private), self.sad, self.spd, icv_dst=t.icv_dst,
                                  after=t.after_unprotect if post_compensate else None)


@dataclass
class Peer:
    """srv1 or sgw1: plain RFC 4301 processing, no idea there is a NAT."""

    sad: SAD
    spd: SPD

    def receive(self, wire: bytes) -> bytes:
        return processing.inbound(wire, self.sad, self.spd)

    def send(self, packet: bytes) -> bytes:
        return processing.outbound(packet, self.spd)


def far_end(mode: Mode | str) -> str:
    """Where the client's traffic goes: srv1 itself (transport) or ih1 behind sgw1 (tunnel)."""
    return IH1 if Mode(mode) is Mode.TUNNEL else SRV1


def pair(suite_key: str, mode: Mode | str, *, private: str = PRIVATE, block: tuple[int, int] = BLOCK,
         spis: tuple[int, int] = (0x1001, 0x1002), peer: Peer | None = None,
         peer_ports: tuple[int, int] | None = None, **traversal: object) -> tuple[Client, Peer]:
    """A client and a NAT-unaware peer with manual keys.

    The client sends under ``spis[0]`` (src its private IP: the outer header it
    builds) and receives under ``spis[1]``, whose dst is the GLOBAL IP: that is
    what the peer sends to. The peer selects the client by destination port
    range ``peer_ports`` (default: the client's block), so several clients
    can share one global IP and one peer.
    """
    mode = Mode(mode)
    tunnel = mode is Mode.TUNNEL
    endpoint, far = (SGW1, INTRANET) if tunnel else (SRV1, f"{SRV1}/32")
    chosen, rng = suite(SUITES[suite_key]), random.Random(spis[0])
    up = chosen.sa(spis[0], mode, src=private, dst=endpoint, random=rng.randbytes)
    down = chosen.sa(spis[1], mode, src=endpoint, dst=GLOBAL, random=rng.randbytes)
    sad = SAD()
    out_state, in_state = sad.add_outbound(up), sad.add_inbound(down)
    spd = SPD([Policy(Selector(f"{private}/32", far), Action.PROTECT, out_state, in_state, name="to-peer")])
    module = Traversal(private, GLOBAL, {IPPROTO_TCP: block, IPPROTO_UDP: block}, **traversal)
    peer = peer if peer is not None else Peer(SAD(), SPD())
    p_out, p_in = peer.sad.add_outbound(down), peer.sad.add_inbound(up)
    selector = Selector(far, f"{GLOBAL}/32", dst_ports=block if peer_ports is None else peer_ports)
    peer.spd.add(Policy(selector, Action.PROTECT, p_out, p_in, name=f"to-{private}"))
    return Client(private, module, sad, spd, in_state), peer


def request(layer: str, sport: int, payload: bytes, dst: str, *, src: str = PRIVATE, dport: int = 80) -> bytes:
    return bytes(IP(src=src, dst=dst) / LAYERS[layer](sport=sport, dport=dport) / payload)


def reply(layer: str, src: str, dport: int, payload: bytes, *, sport: int = 80) -> bytes:
    """The peer's answer, to the global (IP, port) it saw."""
    return bytes(IP(src=src, dst=GLOBAL) / LAYERS[layer](sport=sport, dport=dport) / payload)


# ---------------------------------------------------------------- oracles (scapy)


def l4(raw: bytes):
    pkt = IP(raw)
    return pkt[TCP] if TCP in pkt else pkt[UDP]


def checksum_verifies(raw: bytes) -> bool:
    """Does the TCP/UDP checksum verify over the addresses in the packet's own header? (scapy recomputes)

    A UDP checksum of 0 ("none") does not count as verified here.
    """
    pkt = IP(raw)
    seg = l4(raw)
    if seg.chksum == 0 and UDP in pkt:
        return False
    probe = IP(src=pkt.src, dst=pkt.dst, proto=pkt.proto) / seg.copy()
    del probe.payload.chksum
    expected = IP(bytes(probe)).payload.chksum
    return seg.chksum == expected or {seg.chksum, expected} == {0, 0xFFFF}


def header_verifies(raw: bytes) -> bool:
    pkt = IP(raw)
    probe = pkt.copy()
    del probe.chksum
    return IP(bytes(probe)).chksum == pkt.chksum


def in_block(port: int, block: tuple[int, int] = BLOCK) -> bool:
    return block[0] <= port <= block[1]


# ---------------------------------------------------------------- the chain, every cell


@pytest.mark.parametrize(("suite_key", "mode", "layer"), CELLS)
@settings(max_examples=4, deadline=None)
@given(private_port=private_ports, payload=payloads)
def test_out_port_tunaddr_csum_ah_the_peer_accepts_a_precompensated_packet_claims_3_6_8_15_steps_810_815(
        suite_key, mode, layer, private_port, payload):
    """OUT-PORT/OUT-TUNADDR (claims 6, 18, 32), OUT-CSUM (3-5, 15-17, 29-31), OUT-AH (8, 20, 34), OUT-SEND (15, 27)."""
    client, peer = pair(suite_key, mode)
    packet = request(layer, private_port, payload, far_end(mode))
    delivered = peer.receive(client.send(packet))  # the peer's own RFC 4301 processing: AH ICV, SPD by port range

    pkt, seg = IP(delivered), l4(delivered)
    assert pkt.src == GLOBAL and pkt.dst == far_end(mode)  # tunnel: the inner source is the client's doing (811)
    assert in_block(seg.sport) and seg.dport == 80  # 810
    assert checksum_verifies(delivered) and header_verifies(delivered)  # 812, over what the peer sees
    assert bytes(seg.payload) == payload
    assert client.traversal.counters["compensated_out"] == 1


@pytest.mark.parametrize(("suite_key", "mode", "layer"), CELLS)
@settings(max_examples=4, deadline=None)
@given(private_port=private_ports, payload=payloads)
def test_in_recv_ah_port_tunaddr_csum_the_reply_reaches_the_private_port_claims_9_14_21_steps_819_826(
        suite_key, mode, layer, private_port, payload):
    """IN-RECV (21, 28), IN-AH (14, 26, 40), IN-PORT/IN-TUNADDR (12, 24, 38), IN-CSUM (9-11, 21-23, 35-37)."""
    client, peer = pair(suite_key, mode)
    seen = l4(peer.receive(client.send(request(layer, private_port, b"ask", far_end(mode)))))
    back = client.receive(peer.send(reply(layer, far_end(mode), seen.sport, payload)))

    pkt, seg = IP(back), l4(back)
    assert pkt.dst == PRIVATE and pkt.src == far_end(mode)
    assert seg.dport == private_port and seg.sport == 80  # 824: the ORIGINAL private port
    assert checksum_verifies(back) and header_verifies(back)  # 826: the client's own stack accepts it
    assert bytes(seg.payload) == payload
    assert client.traversal.counters["compensated_in"] == 1


# ---------------------------------------------------------------- controls: what the seed predicts without module 109


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("suite_key", ESP_SUITES)
def test_control_out_csum_without_compensation_the_esp_transport_checksum_is_wrong_at_the_peer_claims_3_5(
        suite_key, layer):
    """Negative twin of OUT-CSUM: the NAT changed the pseudo-header's source, nobody fixed the checksum."""
    # The peer selects by address only here: the uncompensated source port is not in any block.
    client, peer = pair(suite_key, Mode.TRANSPORT, compensate=False, peer_ports=ANY_PORT)
    delivered = peer.receive(client.send(request(layer, 40000, b"payload", SRV1)))
    assert IP(delivered).src == GLOBAL and l4(delivered).sport == 40000
    assert not checksum_verifies(delivered)
    assert client.traversal.icv_src is None and client.traversal.counters["compensated_out"] == 0


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("suite_key", AH_SUITES)
def test_control_out_ah_without_compensation_the_peer_rejects_the_icv_claims_8_20_34(suite_key, mode, layer):
    """Negative twin of OUT-AH: the ICV covers the source the NAT rewrote."""
    client, peer = pair(suite_key, mode, compensate=False, peer_ports=ANY_PORT)
    with pytest.raises(BadICV):
        peer.receive(client.send(request(layer, 40000, b"payload", far_end(mode))))


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("suite_key", ESP_SUITES)
def test_control_out_tunaddr_without_compensation_the_tunnel_peer_sees_a_private_source_claims_6_18_32(
        suite_key, layer):
    """Negative twin of OUT-TUNADDR: the NAT cannot reach the inner source; the peer's SPD refuses 10.0.0.1."""
    client, peer = pair(suite_key, Mode.TUNNEL, compensate=False, peer_ports=ANY_PORT)
    with pytest.raises(PolicyDrop):
        peer.receive(client.send(request(layer, 40000, b"payload", IH1)))


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("suite_key", list(SUITES))
def test_control_in_port_csum_without_post_compensation_the_private_stack_gets_the_global_port_claims_9_12(
        suite_key, layer):
    """Negative twin of IN-PORT/IN-CSUM (transport): the global port and a checksum over the global address."""
    client, peer = pair(suite_key, Mode.TRANSPORT)
    gport = l4(peer.receive(client.send(request(layer, 40000, b"ask", SRV1)))).sport
    back = client.receive(peer.send(reply(layer, SRV1, gport, b"answer")), post_compensate=False)
    assert IP(back).dst == PRIVATE and l4(back).dport == gport != 40000
    assert not checksum_verifies(back)


@pytest.mark.parametrize("suite_key", list(SUITES))
def test_control_in_tunaddr_without_post_compensation_the_inner_global_destination_is_refused_claims_12_24(
        suite_key):
    """Negative twin of IN-TUNADDR: the decapsulated packet is for the global IP, which no client policy selects."""
    client, peer = pair(suite_key, Mode.TUNNEL)
    gport = l4(peer.receive(client.send(request("udp", 40000, b"ask", IH1)))).sport
    with pytest.raises(PolicyDrop):
        client.receive(peer.send(reply("udp", IH1, gport, b"answer")), post_compensate=False)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("suite_key", AH_SUITES)
def test_control_in_ah_verified_over_the_arrived_private_destination_fails_claims_14_26_40(suite_key, mode):
    """Negative twin of IN-AH: verifying over the destination the NAT wrote in fails; over the global one passes."""
    client, peer = pair(suite_key, mode)
    gport = l4(peer.receive(client.send(request("tcp", 40000, b"ask", far_end(mode))))).sport
    arrived = nat_in(peer.send(reply("tcp", far_end(mode), gport, b"answer")))
    with pytest.raises(BadICV):
        ah.decapsulate(arrived, client.inbound)
    verified = ah.decapsulate(arrived, client.inbound, icv_dst=GLOBAL)  # the same packet, as the seed says (820)
    assert l4(verified).dport == gport and bytes(l4(verified).payload) == b"answer"


# ---------------------------------------------------------------- UDP without a checksum


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("suite_key", list(SUITES))
def test_udp_checksum_zero_stays_zero_through_the_whole_chain_rfc_768_step_812_826(suite_key, mode):
    client, peer = pair(suite_key, mode)
    with_none = bytearray(request("udp", 5000, b"no checksum", far_end(mode)))
    with_none[26:28] = b"\x00\x00"
    delivered = peer.receive(client.send(bytes(with_none)))
    assert l4(delivered).chksum == 0 and in_block(l4(delivered).sport)
    answer = bytearray(reply("udp", far_end(mode), l4(delivered).sport, b"none either"))
    answer[26:28] = b"\x00\x00"
    back = client.receive(peer.send(bytes(answer)))
    assert l4(back).chksum == 0 and l4(back).dport == 5000
    # twin: on the same connection, a datagram with a checksum gets it compensated, not left alone
    with_sum = request("udp", 5000, b"checksum", far_end(mode))
    delivered = peer.receive(client.send(with_sum))
    assert l4(delivered).chksum not in (0, l4(with_sum).chksum) and checksum_verifies(delivered)


# ---------------------------------------------------------------- the port block (steps 803-805, 810, 824)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 65535), min_size=1, max_size=40))
def test_port_block_same_private_port_same_global_port_distinct_ports_distinct_step_810(private_ports_used):
    block = PortBlock(PRIVATE, GLOBAL, *BLOCK)
    distinct = list(dict.fromkeys(private_ports_used))
    size = BLOCK[1] - BLOCK[0] + 1
    given_out: dict[int, int] = {}
    for now, port in enumerate(private_ports_used):
        if port not in given_out and len(given_out) == size:
            with pytest.raises(NoGlobalPort):  # twin: a 17th connection while all 16 are fresh
                block.bind(port, float(now))
            continue
        binding = block.bind(port, float(now))
        assert binding.private_port == port and binding.private_ip == PRIVATE and binding.global_ip == GLOBAL
        assert given_out.setdefault(port, binding.global_port) == binding.global_port  # same port, same global port
        assert block.lookup(binding.global_port, float(now)) == binding
    assert len(set(given_out.values())) == len(given_out) == min(len(distinct), size)  # distinct -> distinct
    assert all(in_block(g) for g in given_out.values())


def test_port_block_exhausted_raises_while_fresh_and_reclaims_the_least_recently_used_once_idle_steps_803_805():
    block = PortBlock(PRIVATE, GLOBAL, 20000, 20003, idle_timeout=300.0)
    for now, port in enumerate((40000, 40001, 40002, 40003)):
        block.bind(port, float(now))
    block.bind(40000, 4.0)  # 40000 used again: 40001 (last used at 1) is now the least recently used
    with pytest.raises(NoGlobalPort) as caught:
        block.bind(50000, 300.9)  # 40001 idle for 299.9 s: still fresh
    assert caught.value.reason is DropReason.NO_GLOBAL_PORT and block.reclaimed == 0
    reused = block.bind(50000, 301.0)  # idle for 300 s: reclaimed
    assert reused.global_port == 20001 and block.reclaimed == 1
    assert block.lookup(20001, 301.0) == reused  # replies to 20001 now reach the new connection
    assert block.bind(40000, 301.0).global_port == 20000  # the others keep their ports
    assert {b.private_port for b in block.bindings()} == {40000, 40002, 40003, 50000}


def test_traversal_reclaims_by_the_injected_clock_and_incoming_traffic_keeps_a_binding_alive_steps_805_824():
    now = [0.0]
    t = Traversal(PRIVATE, GLOBAL, {IPPROTO_UDP: (20000, 20001)}, clock=lambda: now[0], idle_timeout=10.0)
    state = SAState(suite(SUITES["esp-gcm"]).sa(0x1001))
    first = t.before_protect(request("udp", 40000, b"a", SRV1), state)
    now[0] = 1.0
    t.before_protect(request("udp", 40001, b"b", SRV1), state)
    now[0] = 9.0
    incoming = bytes(IP(src=SRV1, dst=PRIVATE) / UDP(sport=80, dport=l4(first).sport) / b"reply")
    assert l4(t.after_unprotect(incoming, state)).dport == 40000  # 40000's binding used at 9
    now[0] = 10.9  # 40001 (last used at 1) idle for 9.9 s, 40000 (used at 9) for 1.9 s: both fresh
    with pytest.raises(NoGlobalPort):
        t.before_protect(request("udp", 40002, b"c", SRV1), state)
    now[0] = 11.0
    third = t.before_protect(request("udp", 40002, b"c", SRV1), state)
    assert l4(third).sport == 20001 and t.status()["blocks"]["udp"]["bindings"] == {40000: 20000, 40002: 20001}
    assert t.status()["blocks"]["udp"]["reclaimed"] == 1


@pytest.mark.parametrize("suite_key", ["esp-gcm", "ah-sha256"])
def test_an_incoming_packet_for_an_unbound_global_port_is_dropped_no_binding_step_824(suite_key):
    client, peer = pair(suite_key, Mode.TRANSPORT)
    gport = l4(peer.receive(client.send(request("tcp", 40000, b"ask", SRV1)))).sport
    with pytest.raises(NoBinding) as caught:
        client.receive(peer.send(reply("tcp", SRV1, gport + 1, b"to nobody")))
    assert caught.value.reason is DropReason.NO_BINDING
    assert l4(client.receive(peer.send(reply("tcp", SRV1, gport, b"to 40000")))).dport == 40000  # twin


def test_a_fragment_is_uncompensable_and_the_whole_datagram_is_not_step_812():
    client, _ = pair("esp-gcm", Mode.TRANSPORT)
    state = client.spd.policies[0].outbound
    whole = IP(src=PRIVATE, dst=SRV1, id=7) / UDP(sport=40000, dport=80) / (b"x" * 64)
    first = bytes(IP(src=PRIVATE, dst=SRV1, id=7, flags="MF") / UDP(sport=40000, dport=80) / (b"x" * 64))
    with pytest.raises(Uncompensable, match="fragment") as caught:
        client.traversal.before_protect(first, state)
    assert caught.value.reason is DropReason.NOT_COMPENSABLE
    with pytest.raises(Uncompensable):
        processing.outbound(first, client.spd, icv_src=client.traversal.icv_src, before=client.traversal.before_protect)
    assert in_block(l4(client.traversal.before_protect(bytes(whole), state)).sport)  # twin: unfragmented passes


def test_a_refused_non_initial_fragment_does_not_consume_a_global_port_step_810():
    client, _ = pair("esp-gcm", Mode.TRANSPORT)
    state = client.spd.policies[0].outbound
    for offset_words in range(1, 4):  # non-initial fragments: no ports, just data
        fragment = bytes(IP(src=PRIVATE, dst=SRV1, id=7, frag=offset_words * 8, proto=17) / (bytes([offset_words]) * 16))
        with pytest.raises(Uncompensable):
            client.traversal.before_protect(fragment, state)
    assert client.traversal.blocks[IPPROTO_UDP].bindings() == []


# ---------------------------------------------------------------- CL-UNIQ: two clients, one global IP, one peer


@pytest.mark.parametrize("suite_key", ["esp-gcm", "ah-sha1"])
@settings(max_examples=8, deadline=None)
@given(a_ports=st.lists(st.integers(40000, 40005), min_size=1, max_size=6),
       b_ports=st.lists(st.integers(40000, 40005), min_size=1, max_size=6))
def test_cl_uniq_two_clients_with_disjoint_blocks_never_meet_on_one_global_ip_and_port_steps_801_805(
        suite_key, a_ports, b_ports):
    a, peer = pair(suite_key, Mode.TRANSPORT, private=PRIVATE, block=BLOCK, spis=(0x1001, 0x1002))
    b, _ = pair(suite_key, Mode.TRANSPORT, private=PRIVATE2, block=BLOCK2, spis=(0x2001, 0x2002), peer=peer)
    seen: dict[str, dict[tuple[str, int], int]] = {"a": {}, "b": {}}
    for name, client, ports in (("a", a, a_ports), ("b", b, b_ports)):
        for port in ports:
            delivered = peer.receive(client.send(request("udp", port, b"hi", SRV1, src=client.private)))
            seen[name][(IP(delivered).src, l4(delivered).sport)] = port  # the peer picked the SA by port range
    assert not set(seen["a"]) & set(seen["b"])  # CL-UNIQ
    assert len(seen["a"]) == len(set(a_ports)) and len(seen["b"]) == len(set(b_ports))
    by_spi = {0x1002: a, 0x2002: b}  # the NAT demultiplexes ESP/AH by the leased SPI
    for name, client in (("a", a), ("b", b)):
        for (_, gport), private_port in seen[name].items():
            wire = peer.send(reply("udp", SRV1, gport, b"back"))
            spi_at = 20 if wire[9] == 50 else 24
            assert by_spi[int.from_bytes(wire[spi_at:spi_at + 4], "big")] is client
            back = client.receive(wire)
            assert IP(back).dst == client.private and l4(back).dport == private_port and checksum_verifies(back)


def test_cl_uniq_twin_overlapping_blocks_collide_and_the_peer_cannot_tell_the_clients_apart_steps_801_805():
    a, peer = pair("esp-gcm", Mode.TRANSPORT, private=PRIVATE, block=BLOCK, spis=(0x1001, 0x1002))
    b, _ = pair("esp-gcm", Mode.TRANSPORT, private=PRIVATE2, block=BLOCK, spis=(0x2001, 0x2002), peer=peer)
    seen_a = peer.receive(a.send(request("udp", 40000, b"hi", SRV1)))
    wire_b = b.send(request("udp", 40000, b"hi", SRV1, src=PRIVATE2))
    assert wire_b[12:16] == socket.inet_aton(GLOBAL)
    with pytest.raises(PolicyDrop):  # b's packet, from the same (global IP, port) as a's, selects a's policy
        peer.receive(wire_b)
    assert l4(seen_a).sport == b.traversal.blocks[IPPROTO_UDP].bindings()[0].global_port


def test_out_tunaddr_icmp_in_a_tunnel_gets_the_global_source_and_binds_no_port_step_811():
    t = Traversal(PRIVATE, GLOBAL, {IPPROTO_UDP: BLOCK})
    assert not t.algs and isinstance(t.algs, AlgRegistry)
    state = SAState(suite(SUITES["esp-gcm"]).sa(0x1001, Mode.TUNNEL, src=PRIVATE, dst=SGW1))
    ping = bytes(IP(src=PRIVATE, dst=IH1) / ICMP(id=7) / b"ping")
    out = t.before_protect(ping, state)
    assert IP(out).src == GLOBAL and header_verifies(out) and out[20:] == ping[20:]
    assert t.blocks[IPPROTO_UDP].bindings() == []  # no port was bound for ICMP
