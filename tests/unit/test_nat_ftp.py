"""The NAT's own FTP ALG (NAT-AUTO) against a fake r1: cleartext active FTP from behind the NAT.

The control connection visits the controller (a punt flow for TCP port 21
from inside, and one for each connection's inbound side); PORT/EPRT leave
naming the global address and a mapped global port; the server's data
connection to it takes r1's flows (no packet-in); ACKs come back in the
client's sequence space. A stranger gets nothing to the controller.
scapy (in the fake switch) judges every checksum.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from nat_app.table import DataPath
from netwire.ftp import FTP_CONTROL_PORT, parse_data_command
from tests.unit.fakeswitch import FakeSwitch, checksums_valid
from tests.unit.test_nat_core import G1, IN, OUT, SRV1, SRV2, from_client, from_server, host_mac

H1, CPORT, LISTEN, ISN, SISN = "10.0.0.1", 40000, 45000, 0xFFFFFFF0, 9000


@pytest.fixture
def switch() -> FakeSwitch:
    sw = FakeSwitch(NatCore(NatConfig(globals=global_pool(2)), rng=random.Random(7)))
    for server in (SRV1, SRV2):
        sw.receive(OUT, bytes(Ether(src=host_mac(server), dst="ff:ff:ff:ff:ff:ff") /
                              ARP(op=1, hwsrc=host_mac(server), psrc=server, pdst=G1)))
    sw.take(OUT)
    return sw


def client_seg(seq: int, payload: bytes = b"", flags: str = "PA", ack: int = SISN + 1, sport: int = CPORT):
    return from_client(H1, TCP(sport=sport, dport=FTP_CONTROL_PORT, seq=seq % 2**32, ack=ack, flags=flags) / payload)


def server_seg(gport: int, ack: int, payload: bytes = b"", flags: str = "PA", sport: int = FTP_CONTROL_PORT,
               seq: int = SISN + 1, src: str = SRV1):
    return from_server(src, G1, TCP(sport=sport, dport=gport, seq=seq, ack=ack % 2**32, flags=flags) / payload)


def connect(switch) -> int:
    switch.receive(IN, client_seg(ISN, flags="S", ack=0))
    (syn,) = switch.take(OUT)
    gport = Ether(syn)[TCP].sport
    switch.receive(OUT, server_seg(gport, ISN + 1, flags="SA", seq=SISN))
    (synack,) = switch.take(IN)
    assert Ether(synack)[TCP].dport == CPORT and checksums_valid(synack)
    return gport


@pytest.mark.parametrize("command", [b"PORT 10,0,0,1,175,200\r\n", b"EPRT |1|10.0.0.1|45000|\r\n"])
def test_nat_auto_active_ftp_port_and_eprt_leave_global_and_the_data_connection_takes_the_fast_path(
        switch, command):
    gport = connect(switch)
    control = switch.core.table.lookup_out(6, H1, CPORT, SRV1)
    assert control.path is DataPath.SLOW and not [f for f in switch.flows_with_cookie(control.id)
                                                  if f.match.get("in_port") == IN]
    switch.receive(IN, client_seg(ISN + 1, command))
    (out,) = switch.take(OUT)
    pkt = Ether(out)
    seen = parse_data_command(bytes(pkt[TCP].payload))
    assert seen.ip == G1 and checksums_valid(out) and pkt[IP].src == G1 and pkt[TCP].sport == gport
    assert switch.core.counters[f"ftp:{command[:4].decode()}"] == 1
    # the server's ACK counts the rewritten bytes; the client sees its own
    r_end = ISN + 1 + len(pkt[TCP].payload)
    switch.receive(OUT, server_seg(gport, r_end, b"200 Active data connection established.\r\n"))
    (back,) = switch.take(IN)
    assert Ether(back)[TCP].ack == (ISN + 1 + len(command)) % 2**32 and checksums_valid(back)
    # the data connection: r1's flows; its SYN and SYN-ACK reach the controller only as the TCP-state
    # punts every connection's have (RFC 5382 REQ-5, nat_app/tcpstate.py), its data never
    switch.receive(OUT, server_seg(seen.port, 0, flags="S", sport=20, seq=5))
    (data_syn,) = switch.take(IN)
    assert (Ether(data_syn)[IP].dst, Ether(data_syn)[TCP].dport) == (H1, LISTEN) and checksums_valid(data_syn)
    switch.receive(IN, from_client(H1, TCP(sport=LISTEN, dport=20, flags="SA", seq=1, ack=6)))
    assert Ether(switch.take(OUT)[0])[TCP].sport == seen.port
    before = switch.packet_ins
    switch.receive(OUT, server_seg(seen.port, 2, b"data", sport=20, seq=6))
    assert Ether(switch.take(IN)[0])[TCP].dport == LISTEN
    switch.receive(IN, from_client(H1, TCP(sport=LISTEN, dport=20, flags="A", seq=2, ack=10)))
    assert Ether(switch.take(OUT)[0])[TCP].sport == seen.port and switch.packet_ins == before
    # the next command is shifted
    switch.receive(IN, client_seg(ISN + 1 + len(command), b"LIST\r\n"))
    assert Ether(switch.take(OUT)[0])[TCP].seq == r_end % 2**32


def test_a_control_connection_from_the_port_of_an_earlier_data_connection_is_rewritten_too(switch):
    """The client's kernel reuses the port it listened on for an active transfer as the source of its next
    control connection: the data mapping is adopted as a control connection, not left to plain NAPT."""
    gport = connect(switch)
    switch.receive(IN, client_seg(ISN + 1, b"PORT 10,0,0,1,175,200\r\n"))
    data_port = parse_data_command(bytes(Ether(switch.take(OUT)[0])[TCP].payload)).port
    switch.receive(IN, client_seg(5000, flags="S", ack=0, sport=LISTEN))
    assert Ether(switch.take(OUT)[0])[TCP].sport == data_port
    switch.receive(OUT, server_seg(data_port, 5001, flags="SA", seq=SISN))
    assert Ether(switch.take(IN)[0])[TCP].dport == LISTEN
    switch.receive(IN, client_seg(5001, b"EPRT |1|10.0.0.1|46000|\r\n", sport=LISTEN))
    assert parse_data_command(bytes(Ether(switch.take(OUT)[0])[TCP].payload)).ip == G1
    assert switch.core.counters["ftp:adopted-mapping"] == 1 and gport != data_port


def test_nat_auto_passive_ftp_needs_no_rewrite_and_its_data_connection_is_plain_napt(switch):
    gport = connect(switch)
    switch.receive(IN, client_seg(ISN + 1, b"PASV\r\n"))
    assert bytes(Ether(switch.take(OUT)[0])[TCP].payload) == b"PASV\r\n"
    reply = b"227 Entering Passive Mode (203,0,113,100,195,80).\r\n"
    switch.receive(OUT, server_seg(gport, ISN + 7, reply))
    assert bytes(Ether(switch.take(IN)[0])[TCP].payload) == reply
    switch.receive(IN, from_client(H1, TCP(sport=46000, dport=50000, flags="S")))
    assert Ether(switch.take(OUT)[0])[TCP].dport == 50000
    assert switch.core.table.lookup_out(6, H1, 46000, SRV1).path is DataPath.FAST


def test_a_stranger_from_port_21_reaches_no_client_and_no_ftp_alg(switch):
    """Outside misses reach the controller through r1's meter (the wide drop flow lost first answers);
    there they are dropped and counted, never handed to the FTP ALG."""
    gport = connect(switch)
    rewritten = switch.core.counters["ftp:PORT"]
    before = switch.core.counters["drop:no-entry"]
    switch.receive(OUT, server_seg(gport, 1, b"227 (10,0,0,1,1,1)\r\n", src=SRV2))  # another host, same ports
    switch.receive(OUT, server_seg(gport + 1, 1, b"hello\r\n"))  # the server, another global port
    assert switch.take(IN) == [] and switch.core.counters["drop:no-entry"] == before + 2
    assert switch.core.counters["ftp:PORT"] == rewritten


def test_a_control_entry_that_expires_takes_its_inbound_punt_flow_with_it(switch):
    gport = connect(switch)
    control = switch.core.table.lookup_out(6, H1, CPORT, SRV1)
    assert switch.flows_with_cookie(control.id)
    switch.apply(switch.core.tick(switch.core.config.tcp_timeout + 10), switch.core.config.tcp_timeout + 10)
    assert not switch.flows_with_cookie(control.id) and switch.core.table.lookup_in(6, G1, gport, SRV1) is None
    assert control.id not in switch.core.ftp.controls


@settings(max_examples=30, deadline=None)
@given(payloads=st.lists(st.one_of(st.binary(max_size=60),
                                   st.sampled_from([b"PORT 10,0,0,1,", b"1,1\r\n", b"EPRT |1|10.0.0.1|7|\r\n",
                                                    b"PORT 10,0,0,9,1,1\r\n", b"PORT 999\r\n"])),
                         max_size=8),
       seqs=st.lists(st.integers(0, 2**32 - 1), max_size=8))
def test_hostile_control_traffic_from_either_side_never_crashes_the_nat_or_its_table(payloads, seqs):
    sw = FakeSwitch(NatCore(NatConfig(globals=global_pool(2)), rng=random.Random(7)))
    sw.receive(OUT, bytes(Ether(src=host_mac(SRV1), dst="ff:ff:ff:ff:ff:ff") /
                          ARP(op=1, hwsrc=host_mac(SRV1), psrc=SRV1, pdst=G1)))
    sw.take(OUT)
    gport = connect(sw)
    offset = 1
    for i, payload in enumerate(payloads):
        seq = seqs[i] if i < len(seqs) and i % 2 else ISN + offset
        sw.receive(IN, client_seg(seq, payload))
        sw.receive(OUT, server_seg(gport, seqs[i] if i < len(seqs) else 0, payload))
        offset += len(payload)
    for frame in sw.take(OUT) + sw.take(IN):
        assert checksums_valid(frame)
    assert not [k for k in sw.core.counters.values if k.startswith("shell_exception")]
