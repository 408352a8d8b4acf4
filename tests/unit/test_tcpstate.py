"""TCP phases and their idle timers (RFC 5382 REQ-2, REQ-4, REQ-5; RFC 7857 2.2), in the tracker and
through the fake r1: SYN, FIN and RST visit the controller, data stays in r1, and the outbound
flow's idle timeout follows the phase."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from nat_app.messages import PRIO_TRANSLATE
from nat_app.tcpstate import Phase, TcpTracker
from netwire.ipv4 import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from tests.unit import test_nat_core
from tests.unit.test_nat_core import G1, IN, OUT, SRV1, SRV2, from_client, from_server

H1 = "10.0.0.1"


@pytest.fixture
def switch():
    return test_nat_core.switch.__wrapped__()
ESTABLISHED, TRANSITORY = 7440, 240


def test_tracker_follows_handshake_close_and_reset():
    t = TcpTracker()
    assert t.opened(1, TCP_SYN) is Phase.TRANSITORY
    assert t.seen(1, TCP_SYN | TCP_ACK, outbound=False) is Phase.ESTABLISHED
    assert t.seen(1, TCP_FIN | TCP_ACK, outbound=True) is None  # half-closed stays established
    assert t.seen(1, TCP_FIN | TCP_ACK, outbound=False) is Phase.TRANSITORY
    assert t.seen(1, TCP_SYN, outbound=True) is None and t.phase(1) is Phase.TRANSITORY  # reused: new handshake
    assert t.seen(1, TCP_SYN | TCP_ACK, outbound=False) is Phase.ESTABLISHED
    assert t.seen(1, TCP_RST, outbound=False) is Phase.TRANSITORY


def test_tracker_counts_simultaneous_open_and_unseen_opens_as_established():
    t = TcpTracker()
    t.opened(1, TCP_SYN)
    assert t.seen(1, TCP_SYN, outbound=False) is Phase.ESTABLISHED  # RFC 5382 REQ-2 a: SYNs crossed
    assert t.opened(2, TCP_ACK) is Phase.ESTABLISHED  # not seen opening: never cut after 4 min


def out_flow(sw, sport: int = 40000):
    (flow,) = [f.msg for f in sw.flows if f.msg.priority == PRIO_TRANSLATE and f.msg.match.get("tcp_src") == sport]
    return flow


def test_flow_idle_timeout_follows_the_phase_while_data_stays_in_r1(switch):
    switch.receive(IN, from_client(H1, TCP(sport=40000, dport=80, flags="S")))
    assert out_flow(switch).idle_timeout == TRANSITORY  # a handshake in progress: at least 4 min
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="SA")))
    assert out_flow(switch).idle_timeout == ESTABLISHED  # at least 2 h 4 min
    before = switch.packet_ins
    for _ in range(3):
        switch.receive(IN, from_client(H1, TCP(sport=40000, dport=80, flags="PA") / b"x"))
        switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="A")))
    assert switch.packet_ins == before
    switch.receive(IN, from_client(H1, TCP(sport=40000, dport=80, flags="FA")))
    assert out_flow(switch).idle_timeout == ESTABLISHED
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="FA")))
    assert out_flow(switch).idle_timeout == TRANSITORY
    (entry,) = switch.core.table
    assert entry.idle_timeout == TRANSITORY and switch.core.snapshot(0)["entries"][0]["tcp_phase"] == "transitory"
    assert len(switch.take(OUT)) == 5 and len(switch.take(IN)) == 5  # every segment delivered


def test_a_reset_leaves_the_mapping_for_the_transitory_timeout_not_at_once(switch):
    """RFC 7857 2.2: an RST may be lost or forged; the mapping stays 4 min."""
    switch.receive(IN, from_client(H1, TCP(sport=40000, dport=80, flags="S")))
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="SA")))
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="R")))
    assert len(switch.core.table) == 1 and out_flow(switch).idle_timeout == TRANSITORY


def test_a_reset_from_another_host_changes_nothing(switch):
    switch.receive(IN, from_client(H1, TCP(sport=40000, dport=80, flags="S")))
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="SA")))
    switch.take(IN)
    switch.receive(OUT, from_server(SRV2, G1, TCP(sport=80, dport=40000, flags="R")))
    assert switch.take(IN) == [] and out_flow(switch).idle_timeout == ESTABLISHED


def test_unsolicited_syn_is_dropped_silently_and_counted(switch):
    """RFC 5382 REQ-4 a: no answer (no RST, no ICMP) to an unsolicited SYN, by the NAT's security policy."""
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="S")))
    assert switch.take(IN) == [] and switch.take(OUT) == []
    assert switch.core.counters["drop:unsolicited-syn"] == 1 and len(switch.core.table) == 0


def test_simultaneous_open_passes_both_syns(switch):
    """RFC 5382 REQ-2 a: SYN out, then the peer's own SYN (no ACK) in, then SYN-ACKs both ways."""
    switch.receive(IN, from_client(H1, TCP(sport=40000, dport=5000, flags="S", seq=100)))
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=5000, dport=40000, flags="S", seq=900)))
    (syn,) = switch.take(IN)
    assert Ether(syn)[TCP].flags == "S" and Ether(syn)[IP].dst == H1
    switch.receive(IN, from_client(H1, TCP(sport=40000, dport=5000, flags="SA", seq=100, ack=901)))
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=5000, dport=40000, flags="SA", seq=900, ack=101)))
    assert len(switch.take(IN)) == 1 and len(switch.take(OUT)) == 2
    assert out_flow(switch, 40000).idle_timeout == ESTABLISHED
    assert not any(ICMP in Ether(f) for f in switch.take(OUT))
