"""The datapath loop without root: socket pairs stand in for the TUN devices and the wire.

Two datapaths, h1's and srv1's, are joined back to back: what h1's "kernel"
writes into its fake TUN comes out of srv1's fake TUN unchanged, and only
ESP/AH crosses the fake wire between them. Every kind of drop is counted by
its reason and logged at most once per second.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from client_agent.agent_config import databases, examples, load
from client_agent.datapath import BATCH, SEND_ERROR, Datapath, DropLog
from client_agent.ipsec.errors import DropReason
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP

EXAMPLES = examples()
MARKER = b"natlab-secret-payload"


class Endpoint:
    """One end of a datagram socket pair: a non-blocking packet source with ``fileno``/``read``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> bytes | None:
        try:
            return self.sock.recv(65535)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        self.sock.send(packet)


def pair() -> tuple[Endpoint, Endpoint]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    return Endpoint(a), Endpoint(b)


@dataclass
class Host:
    """A datapath and the far ends of its fake TUN ("kernel") and of its fake wire."""

    datapath: Datapath
    kernel: Endpoint
    wire: Endpoint


def host(config: str, wire: tuple[Endpoint, Endpoint]) -> Host:
    sad, spd = databases(load(EXAMPLES / config))
    kernel, tun = pair()
    near, far = wire
    return Host(Datapath(tun, tun.write, [near], near.write, sad, spd, drop_log=lambda *a: None), kernel, far)


@pytest.fixture(params=["esp-transport", "ah-transport"])
def peers(request) -> Iterator[tuple[Host, Host]]:
    h1_wire, srv1_wire = pair(), pair()
    yield host(f"{request.param}-h1.toml", h1_wire), host(f"{request.param}-srv1.toml", srv1_wire)


def relay(source: Endpoint, destination: Endpoint) -> list[bytes]:
    """Carry what is waiting on one fake wire to the other; return it."""
    packets = []
    while (packet := source.read()) is not None:
        packets.append(packet)
        destination.write(packet)
    return packets


def test_packets_cross_protected_both_ways_and_come_out_unchanged(peers: tuple[Host, Host]) -> None:
    h1, srv1 = peers
    request = bytes(IP(src="10.0.0.1", dst="203.0.113.100") / TCP(sport=40000, dport=80, flags="PA") / MARKER)
    reply = bytes(IP(src="203.0.113.100", dst="10.0.0.1") / UDP(sport=53, dport=40000) / MARKER)

    h1.kernel.write(request)
    assert h1.datapath.pump_outbound() == 1
    (wire,) = relay(h1.wire, srv1.wire)
    assert srv1.datapath.pump_inbound(srv1.datapath.receivers[0]) == 1
    assert srv1.kernel.read() == request

    srv1.kernel.write(reply)
    srv1.datapath.pump_outbound()
    relay(srv1.wire, h1.wire)
    h1.datapath.pump_inbound(h1.datapath.receivers[0])
    assert h1.kernel.read() == reply

    assert wire[9] in (IPPROTO_ESP, IPPROTO_AH) and wire[12:20] == request[12:20]
    esp = wire[9] == 50
    assert (MARKER in wire) is not esp, "ESP must hide the payload; AH leaves it readable"
    counters = h1.datapath.counters
    assert (counters.protected, counters.delivered, counters.drops) == (1, 1, {})
    assert counters.protected_octets == len(request) and counters.sent_octets == len(wire)


def test_a_batch_is_drained_then_the_others_get_a_turn(peers: tuple[Host, Host]) -> None:
    h1, _ = peers
    packet = bytes(IP(src="10.0.0.1", dst="203.0.113.100") / ICMP() / MARKER)
    for _ in range(BATCH + 3):
        h1.kernel.write(packet)
    assert h1.datapath.pump_outbound() == BATCH
    assert h1.datapath.pump_outbound() == 3
    assert h1.datapath.pump_outbound() == 0
    assert h1.datapath.counters.protected == BATCH + 3


def test_every_refused_packet_is_counted_by_its_reason(peers: tuple[Host, Host]) -> None:
    h1, srv1 = peers
    good = bytes(IP(src="10.0.0.1", dst="203.0.113.100") / UDP(sport=1, dport=2) / MARKER)
    h1.kernel.write(good)
    h1.datapath.pump_outbound()
    wire = h1.wire.read()
    tampered = wire[:-1] + bytes([wire[-1] ^ 1])
    unknown_spi = bytearray(wire)
    spi_at = 20 if wire[9] == 50 else 24
    unknown_spi[spi_at : spi_at + 4] = (0xDEAD).to_bytes(4, "big")
    for packet in (tampered, wire, wire, bytes(unknown_spi), wire[:22]):
        srv1.wire.write(packet)
    srv1.datapath.pump_inbound(srv1.datapath.receivers[0])

    h1.kernel.write(bytes(IP(src="10.0.0.1", dst="198.51.100.7") / UDP() / MARKER))  # no policy: default discard
    h1.kernel.write(b"\x60" + bytes(39))  # IPv6: not for this stack
    h1.datapath.pump_outbound()

    assert srv1.datapath.counters.drops == {
        DropReason.BAD_ICV: 1, DropReason.REPLAY: 1, DropReason.NO_SA: 1, DropReason.MALFORMED: 1,
    }
    assert srv1.datapath.counters.delivered == 1 and srv1.datapath.counters.received == 5
    assert h1.datapath.counters.drops == {DropReason.POLICY: 1, DropReason.MALFORMED: 1}


def test_a_send_the_kernel_refuses_is_counted(peers: tuple[Host, Host]) -> None:
    h1, _ = peers

    def refuse(packet: bytes) -> None:
        raise OSError(90, "Message too long")

    h1.datapath.send = refuse
    h1.kernel.write(bytes(IP(src="10.0.0.1", dst="203.0.113.100") / UDP() / MARKER))
    h1.datapath.pump_outbound()
    assert h1.datapath.counters.drops == {SEND_ERROR: 1} and h1.datapath.counters.protected == 0


def test_the_tunnel_gateway_hands_inner_packets_on_and_wraps_replies() -> None:
    h1, sgw1 = host("esp-tunnel-h1.toml", pair()), host("esp-tunnel-sgw1.toml", pair())
    inner = bytes(IP(src="10.0.0.1", dst="172.16.0.10") / ICMP(id=7) / MARKER)
    h1.kernel.write(inner)
    h1.datapath.pump_outbound()
    (wire,) = relay(h1.wire, sgw1.wire)
    assert (wire[12:16], wire[16:20]) == (socket.inet_aton("10.0.0.1"), socket.inet_aton("203.0.113.200"))
    sgw1.datapath.pump_inbound(sgw1.datapath.receivers[0])
    assert sgw1.kernel.read() == inner

    reply = bytes(IP(src="172.16.0.10", dst="10.0.0.1") / ICMP(type=0, id=7) / MARKER)
    sgw1.kernel.write(reply)
    sgw1.datapath.pump_outbound()
    (back,) = relay(sgw1.wire, h1.wire)
    assert back[12:16] == socket.inet_aton("203.0.113.200") and MARKER not in back
    h1.datapath.pump_inbound(h1.datapath.receivers[0])
    assert h1.kernel.read() == reply


def test_run_pumps_until_told_to_stop_and_ticks(peers: tuple[Host, Host]) -> None:
    h1, _ = peers
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    stop, ticks = threading.Event(), []
    thread = threading.Thread(target=h1.datapath.run, args=(stop.is_set,),
                              kwargs={"wakeup_fd": wake_read.fileno(), "on_tick": lambda: ticks.append(1),
                                      "tick": 0.05})
    thread.start()
    try:
        h1.kernel.write(bytes(IP(src="10.0.0.1", dst="203.0.113.100") / UDP() / MARKER))
        h1.wire.sock.setblocking(True)
        h1.wire.sock.settimeout(5)
        assert h1.wire.sock.recv(65535)[9] in (IPPROTO_ESP, IPPROTO_AH)
        deadline = time.monotonic() + 5
        while not ticks and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        wake_write.send(b"\0")  # what a signal does through signal.set_wakeup_fd
        thread.join(timeout=5)
    assert not thread.is_alive() and ticks
    wake_read.close()
    wake_write.close()


def test_drops_are_logged_once_per_second_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    drop_log = DropLog(interval=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="natlab.agent"):
        for _ in range(5):
            drop_log("bad_icv", "inbound", "ICV mismatch")
        drop_log("replay", "inbound", "sequence number 3 already received")
        now[0] += 1.5
        drop_log("bad_icv", "inbound", "ICV mismatch")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "drop inbound bad_icv: ICV mismatch",
        "drop inbound replay: sequence number 3 already received",
        "drop inbound bad_icv: ICV mismatch (and 4 more since the last report)",
    ]


@pytest.mark.parametrize("size", [1501, 3000, 9037])
def test_a_packet_larger_than_the_link_leaves_in_fragments_that_reassemble(size: int) -> None:
    """RFC 4303 section 3.3.4: fragments after ESP; the receiver's kernel reassembles them (scapy does here)."""
    from scapy.layers.inet import defragment
    from scapy.packet import Raw

    from client_agent.ipsec.ipheader import fragment

    packet = bytes(IP(src="10.0.0.1", dst="203.0.113.100", proto=50, flags="DF", id=0) / Raw(bytes(size - 20)))
    pieces = fragment(packet, 1500, ident=0x4242)
    assert all(len(p) <= 1500 for p in pieces) and len(pieces) == -(-(size - 20) // 1480)
    parsed = [IP(p) for p in pieces]
    assert all(p.id == 0x4242 and p.chksum == IP(bytes(p)).chksum for p in parsed)
    assert [p.flags.MF for p in parsed] == [True] * (len(pieces) - 1) + [False]
    whole = defragment(parsed)[0]
    assert bytes(whole)[20:] == packet[20:]
    fits = bytes(IP(src="10.0.0.1", dst="203.0.113.100", proto=50) / Raw(bytes(1480)))
    assert fragment(fits, 1500, 1) == [fits]


def test_fragments_get_this_hosts_own_ids_except_under_ah() -> None:
    """RFC 6864 4.1: two ESP datagrams that carry the same inner ID get distinct fragment IDs; AH keeps its
    ID, which its ICV covers (RFC 4302 3.3.3.1.1.1)."""
    import itertools

    from client_agent.raw import fragment_ident
    from netwire.ipv4 import build_ipv4_header

    counter = itertools.count(0xFFFF)
    esp = build_ipv4_header(src="10.0.0.1", dst="203.0.113.100", protocol=50, payload_len=8, ident=0x1234)
    ah = build_ipv4_header(src="10.0.0.1", dst="203.0.113.100", protocol=51, payload_len=8, ident=0x1234)
    first, second = fragment_ident(esp, counter), fragment_ident(esp, counter)
    assert first != second and 0 not in (first, second)  # 0xFFFF, then 0x10000 & 0xFFFF == 0 is skipped
    assert fragment_ident(ah, counter) == 0x1234


def test_inbound_tcp_burst_reaches_the_tun_as_one_super_segment_with_coalescing():
    """``coalesce``: srv1's datapath writes a burst of h1's TCP segments as one frame whose checksum verifies."""
    from client_agent.coalesce import GSO_TCPV4, VNET_HDR_LEN

    h1_wire, srv1_wire = pair(), pair()
    h1, srv1 = host("esp-transport-h1.toml", h1_wire), host("esp-transport-srv1.toml", srv1_wire)
    written: list[bytes] = []
    srv1.datapath.deliver_frame = written.append
    payload, seq = bytes(range(200)) * 7, 1000
    burst = [bytes(IP(src="10.0.0.1", dst="203.0.113.100", flags="DF") / TCP(sport=40000, dport=5201, flags="A",
                                                                          seq=seq + i * 1400) / payload)
             for i in range(5)]
    for packet in burst:
        h1.kernel.write(packet)
    h1.datapath.pump_outbound()
    relay(h1.wire, srv1.wire)
    srv1.datapath.pump_inbound(srv1.datapath.receivers[0])
    [frame] = written
    inner = IP(frame[VNET_HDR_LEN:])
    assert frame[1] == GSO_TCPV4 and inner[TCP].load == payload * 5 and inner[TCP].seq == seq
    probe = inner.copy()
    del probe[TCP].chksum
    assert IP(bytes(probe))[TCP].chksum == inner[TCP].chksum
    counters = srv1.datapath.counters
    assert counters.delivered == 5 and counters.delivered_octets == sum(len(p) for p in burst)
    assert counters.tun_writes == 1
